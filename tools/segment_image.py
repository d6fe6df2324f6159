"""Segment one image with OMG-Seg alone (no LLM): panoptic, instance, semantic or interactive
(points / boxes).

    python tools/segment_image.py                       # built-in default, see below
    python tools/segment_image.py --config configs/omg_llava_7b_finetune_8gpus.py \
        --image photo.jpg --omg-seg-pth omg_seg_convl.pth --clip-pth open_clip_pytorch_model.bin \
        --class-embed-pth convnext_large_d_320_CocoPanopticOVDataset.pth --task semantic
    # your own classes, embedded once by the CLIP text tower of the same open_clip file (cached):
    python tools/segment_image.py ... --classes "cat,dog,stuff:grass,stuff:sky/clouds" \
        --tokenizer bpe_simple_vocab_16e6.txt.gz
    # interactive: one mask per point / box, in original-image pixels
    python tools/segment_image.py ... --task interactive --point 120,80 --box 10,20,200,180

Outputs in --out-dir: <task>_overlay.png always; panoptic: panoptic.png (COCO-panoptic id PNG) +
panoptic.json (segments_info); semantic: semantic.png (class ids, void 255); instance:
instances.json (COCO RLE); interactive: prompts.json (RLE per prompt).
docs/universal_segmentation.md describes each task.

Built-in default: the trained tiny encoder of the built-in model
(configs/tiny/omg_llava_tiny_synthetic_finetune.py, weights in omg_llava/assets/tiny_synthetic/) on
its held-out synthetic image, classifying into the 24 shape classes it was trained on ("red circle"
... "purple star"). It knows coloured shapes only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from omg_llava.cli_errors import (OneLineParser, check_device, check_file, check_out_dir,
                                  check_weight_file, one_line_errors)
from omg_llava.config_paths import config_argument
from omg_llava.inference.defaults import DEFAULT_IMAGE, SEGMENT_CONFIG, is_builtin_config

DEFAULT_CONFIG = SEGMENT_CONFIG
TASKS = ('panoptic', 'instance', 'semantic', 'interactive')


def _numbers(text: str, count: int, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(',')]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f'{what} {text!r}: give {count} comma-separated finite '
                                         'numbers in image pixels')
    return values


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG, type=config_argument,
                        help='config with a visual encoder: a path or a built-in name (default '
                             f'{DEFAULT_CONFIG})')
    parser.add_argument('--image', default=DEFAULT_IMAGE,
                        help='input image (default: the built-in model\'s held-out '
                        'synthetic image)')
    parser.add_argument('--task', choices=TASKS, default='panoptic',
                        help='what to segment (default panoptic)')
    parser.add_argument('--omg-seg-pth', help='omg_seg_convl.pth (overrides the config)')
    parser.add_argument('--clip-pth',
                        help='open_clip ConvNeXt-L weights .bin/.safetensors (overrides the '
                             'config)')
    parser.add_argument('--class-embed-pth',
                        help='class embeddings (default COCO file; with --classes: of those)')
    parser.add_argument('--classes',
                        help='your vocabulary: a file, or "cat,dog,stuff:sky/clouds" (see '
                                          'tools/make_class_embeddings.py)')
    parser.add_argument('--tokenizer',
                        help='CLIP tokenizer for --classes (bpe_simple_vocab_16e6.txt.gz or a '
                                            'folder with vocab.json + merges.txt)')
    parser.add_argument('--text-weights',
                        help='open_clip file whose text tower embeds --classes (default '
                             '--clip-pth)')
    parser.add_argument('--point', action='append', default=[], metavar='X,Y',
                        help='interactive point (repeatable)')
    parser.add_argument('--box', action='append', default=[], metavar='X1,Y1,X2,Y2',
                        help='interactive box (repeatable)')
    parser.add_argument('--out-dir', default='outputs/segment_image', help='where the outputs go')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--input-side', type=int,
                        help='network input side (default: the config\'s image_size)')
    parser.add_argument('--score-thr', type=float, default=None,
                        help='minimum score (panoptic/semantic: class probability, default 0.0 as '
                             'the OMG-Seg configs; instance: class x mask score, default 0.3)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights when none are given')
    args = parser.parse_args(argv)
    try:
        points = [_numbers(p, 2, '--point') for p in args.point]
        boxes = [_numbers(b, 4, '--box') for b in args.box]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.task == 'interactive' and not (points or boxes):
        parser.error('--task interactive needs at least one --point X,Y or --box X1,Y1,X2,Y2 '
                     '(image pixels)')
    if args.task != 'interactive' and (points or boxes):
        parser.error('--point / --box are prompts of --task interactive')

    check_file(args.config, '--config')
    for flag, path in (('--omg-seg-pth', args.omg_seg_pth), ('--clip-pth', args.clip_pth),
                       ('--class-embed-pth', args.class_embed_pth),
                       ('--text-weights', args.text_weights)):
        if path:
            check_weight_file(path, flag)
    check_out_dir(args.out_dir)
    check_device(args.device)

    import numpy as np
    from PIL import Image

    from omg_llava.inference.image_io import load_image
    from omg_llava.segmentation import outputs
    from omg_llava.segmentation.builder import build_segmenter

    os.makedirs(args.out_dir, exist_ok=True)
    image_path = args.image
    image = load_image(image_path)  # before the model: a bad image fails fast
    start = time.perf_counter()
    segmenter, notes = build_segmenter(
        args.config, omg_seg=args.omg_seg_pth, clip=args.clip_pth, class_embed=args.class_embed_pth,
        classes=args.classes, tokenizer=args.tokenizer, text_weights=args.text_weights,
        input_side=args.input_side, device=args.device, seed=args.seed,
        weights_only=not args.trust_checkpoint)
    if is_builtin_config(args.config, SEGMENT_CONFIG) and not (args.classes
                                                               or args.class_embed_pth):
        from omg_llava.inference.defaults import synthetic_vocabulary
        # the classes the built-in encoder was trained on
        vocabulary, embeddings = synthetic_vocabulary()
        segmenter.set_vocabulary(vocabulary, embeddings.to(segmenter.device))
        notes.append(f'classes: the {len(vocabulary)} shape classes the built-in encoder was '
                     'trained on')
    print(f'config: {args.config}')
    for note in notes:
        print(f'  {note}')
    built = time.perf_counter()
    vocabulary = segmenter.vocabulary
    rgb = np.asarray(image)
    encoded = segmenter.encode(image)
    if args.task == 'interactive':
        masks = segmenter.interactive(encoded, points=points or None,
                                      boxes=boxes or None).cpu().numpy()
        prompts = [dict(point=p) for p in points] + [dict(box=b) for b in boxes]
        records = outputs.prompt_masks_json(masks, prompts)
        _write_json(os.path.join(args.out_dir, 'prompts.json'),
                    dict(image=image_path, prompts=records))
        overlay = outputs.overlay_masks(rgb, masks)
        lines = [f'  {json.dumps(p)}: mask {r["area"]} px, box {r["bbox"]}'
                 for p, r in zip(prompts, records)]
    elif args.task == 'instance':
        thr = 0.3 if args.score_thr is None else args.score_thr
        result = segmenter.instance(encoded, score_thr=thr)
        records = outputs.instances_json(result, vocabulary)
        _write_json(os.path.join(args.out_dir, 'instances.json'),
                    dict(image=image_path, instances=records))
        overlay = outputs.overlay_masks(rgb, result.masks.cpu().numpy()[::-1],
                                        [r['id'] for r in records][::-1])
        lines = [f'  {r["name"]:<24} score {r["score"]:.2f}  area '
                 f'{100 * r["area"] / rgb[..., 0].size:5.1f}%'
                 for r in records]
    else:
        thr = 0.0 if args.score_thr is None else args.score_thr
        panoptic = segmenter.panoptic(encoded, score_thr=thr)
        ids, info = outputs.panoptic_ids(panoptic, vocabulary)
        if args.task == 'panoptic':
            Image.fromarray(outputs.ids_to_rgb(ids)).save(os.path.join(args.out_dir,
                                                                       'panoptic.png'))
            _write_json(os.path.join(args.out_dir, 'panoptic.json'),
                        dict(file_name='panoptic.png', image=image_path, segments_info=info,
                             categories=[dict(id=i, name=n, isthing=vocabulary.is_thing(i))
                                         for i, n in enumerate(vocabulary.names)]))
            overlay = outputs.overlay_ids(rgb, ids)
        else:
            labels = panoptic.labels.cpu().numpy()
            Image.fromarray(outputs.semantic_png(labels, len(vocabulary))).save(
                os.path.join(args.out_dir, 'semantic.png'))
            overlay = outputs.overlay_ids(rgb, np.where(labels < len(vocabulary), labels + 1, 0))
        lines = [f'  {s["name"]:<24} {"thing" if s["isthing"] else "stuff"}  score '
                 f'{s["score"]:.2f}  area {100 * s["area"] / ids.size:5.1f}%'
                 for s in sorted(info, key=lambda s: -s['area'])]
    print(f'image: {image_path} ({image.width}x{image.height}), network input '
          f'{segmenter.input_side}px, model {built - start:.1f}s, {args.task} '
          f'{time.perf_counter() - built:.1f}s')
    # the filter the listed ones passed
    kept = '' if args.task == 'interactive' else f' with score > {thr:g}'
    print(f'{args.task}: {len(lines)} {"masks" if args.task == "interactive" else "segments"}{kept}'
          f' ({len(vocabulary)} classes: '
          f'{", ".join(vocabulary.names[:5])}{", ..." if len(vocabulary) > 5 else ""})')
    for line in lines:
        print(line)
    out_path = os.path.join(args.out_dir, f'{args.task}_overlay.png')
    Image.fromarray(overlay).save(out_path)
    print(f'overlay written to {out_path}')
    return 0


def _write_json(path: str, payload: dict) -> None:
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(payload, handle, indent=1)


if __name__ == '__main__':
    sys.exit(main())
