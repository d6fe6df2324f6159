"""Panoptic segmentation of one image with the OMG-Seg visual encoder; writes an overlay PNG.

    python tools/segment_image.py                       # built-in default, see below
    python tools/segment_image.py --config configs/omg_llava_7b_finetune_8gpus.py --image photo.jpg

Built-in default: the tiny configuration (configs/tiny/omg_llava_tiny_finetune.py) with seeded random
weights on skimage's "chelsea" photo. Random weights segment nothing meaningful; the run shows the whole
path works. With the full config and the released files (docs/model_zoo.md) it segments the COCO classes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

DEFAULT_CONFIG = 'configs/tiny/omg_llava_tiny_finetune.py'


def _default_image(out_dir: str) -> str:
    from PIL import Image
    from skimage import data
    path = os.path.join(out_dir, 'chelsea.png')
    Image.fromarray(data.chelsea()).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG, help=f'config with a visual encoder (default {DEFAULT_CONFIG})')
    parser.add_argument('--image', help='input image (default: skimage.data.chelsea)')
    parser.add_argument('--omg-seg-pth', help='omg_seg_convl.pth (overrides the config)')
    parser.add_argument('--clip-pth', help='open_clip ConvNeXt-L weights .bin/.safetensors (overrides the config)')
    parser.add_argument('--class-embed-pth', help='convnext_large_d_320_CocoPanopticOVDataset.pth (overrides the config)')
    parser.add_argument('--out-dir', default='outputs/segment_image', help='where the PNGs go')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--mode', choices=('panoptic', 'instance'), default='panoptic', help='what to segment')
    parser.add_argument('--score-thr', type=float, default=None,
                        help='minimum score (default: 0.8 panoptic as in the reference, 0.3 instance)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights when none are given')
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from omg_llava.inference.encoder_builder import build_visual_encoder, visual_encoder_config
    from omg_llava.inference.image_io import load_image, preprocess_image
    from omg_llava.inference.segmentation import (coco_panoptic_class_names, instance_segments, overlay,
                                                  panoptic_segments)

    os.makedirs(args.out_dir, exist_ok=True)
    image_path = args.image or _default_image(args.out_dir)
    image = load_image(image_path)
    _, cfg = visual_encoder_config(args.config)
    start = time.perf_counter()
    encoder, notes = build_visual_encoder(args.config, omg_seg=args.omg_seg_pth, clip=args.clip_pth,
                                          class_embed=args.class_embed_pth, device=args.device, seed=args.seed,
                                          weights_only=not args.trust_checkpoint)
    print(f'config: {args.config}')
    for note in notes:
        print(f'  {note}')
    pixel_values, geometry = preprocess_image(image, cfg.get('image_size', 1024))
    with torch.no_grad():
        output = encoder(pixel_values[None].to(args.device))
    if args.mode == 'panoptic':
        args.score_thr = 0.8 if args.score_thr is None else args.score_thr
        segments = panoptic_segments(encoder, output, geometry, coco_panoptic_class_names(), score_thr=args.score_thr)
    else:
        args.score_thr = 0.3 if args.score_thr is None else args.score_thr
        segments = instance_segments(encoder, output, geometry, coco_panoptic_class_names(), score_thr=args.score_thr)
    print(f'image: {image_path} ({image.width}x{image.height}), network input {pixel_values.shape[-1]}px, '
          f'{time.perf_counter() - start:.1f}s')
    n_tokens = int((~output.query_blocked[0]).any(-1).sum())
    print(f'visual tokens: {output.pixel_tokens.shape[1]} pixel tokens x {output.pixel_tokens.shape[2]} ch, '
          f'{n_tokens} object queries valid of {output.query_tokens.shape[1]}')
    print(f'found {len(segments)} segments (score >= {args.score_thr}):')
    for seg in segments:
        kind = 'thing' if seg.is_thing else 'stuff'
        print(f'  {seg.name:<24} {kind}  score {seg.score:.2f}  area {100 * seg.area / seg.mask.size:5.1f}%')
    if not segments:
        names = coco_panoptic_class_names()
        probs = output.class_logits[0].softmax(-1)[:, :-1]
        score, label = probs.max(-1)
        print('no segment survived the score and overlap filters; strongest object queries:')
        for q in score.topk(min(5, len(score))).indices.tolist():
            area = (output.mask_logits[0, q] > 0).float().mean().item()
            print(f'  query {q:3d}: {names[label[q]]:<24} p={score[q]:.2f}  mask {100 * area:5.1f}% of the image')
    out_path = os.path.join(args.out_dir, f'{args.mode}_overlay.png')
    Image.fromarray(overlay(np.asarray(image), segments)).save(out_path)
    print(f'overlay written to {out_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
