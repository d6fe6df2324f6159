"""Write a class-embedding file for your own vocabulary with the CLIP text tower of the open_clip
file.

    python tools/make_class_embeddings.py --classes "cat,dog,traffic light" --out my_classes.pth \
        --clip-pth open_clip_pytorch_model.bin --tokenizer bpe_simple_vocab_16e6.txt.gz
    # regenerate the released COCO file and compare it (cosine per class):
    python tools/make_class_embeddings.py --classes coco --out coco.pth --clip-pth ... \
        --tokenizer ... --check convnext_large_d_320_CocoPanopticOVDataset.pth

--classes: a vocabulary file (one class per line, synonyms separated by commas, "stuff:" before
stuff classes), "coco" (the 133 COCO-panoptic classes of the released file), or inline classes
separated by commas with "/" between synonyms ("sky/clouds"). The output is what OMG-Seg's
tools/gen_cls.py writes: a bare float32 tensor (classes, max synonyms, 768), usable as
--class-embed-pth; a <out>.txt vocabulary file is written next to it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

PASS_COSINE = 0.9999


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--classes', required=True,
                        help='vocabulary file, "coco", or "cat,dog,traffic light"')
    parser.add_argument('--out', required=True,
                        help='output .pth (bare tensor, the released format)')
    parser.add_argument('--clip-pth', required=True,
                        help='open_clip ConvNeXt-L file (open_clip_pytorch_model.bin / '
                             '.safetensors); its text half')
    parser.add_argument('--tokenizer', required=True,
                        help='CLIP tokenizer: folder with vocab.json + merges.txt, or '
                             'bpe_simple_vocab_16e6.txt.gz')
    parser.add_argument('--check', metavar='RELEASED.pth',
                        help='compare with a released file: cosine per class')
    parser.add_argument('--num-heads', type=int,
                        help='text attention heads (default: width // 64, 12)')
    parser.add_argument('--device', default='cpu',
                        help='torch device (the reference embeds on the CPU in float32)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='full unpickler (only for files you trust)')
    args = parser.parse_args(argv)

    import torch

    from omg_llava.segmentation.embedding_cache import build_text_encoder
    from omg_llava.segmentation.vocabulary import (COCO_PANOPTIC_VOCABULARY, TEMPLATES,
                                                   compare_class_embeddings,
                                                   embed_vocabulary, parse_vocabulary)
    from omg_llava.models.weights import read_class_embeddings

    try:
        vocabulary = parse_vocabulary(COCO_PANOPTIC_VOCABULARY if args.classes == 'coco'
                                      else args.classes)
        start = time.perf_counter()
        encoder = build_text_encoder(args.clip_pth, args.tokenizer, num_heads=args.num_heads,
                                     device=args.device, weights_only=not args.trust_checkpoint)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    n_synonyms = sum(len(s) for s in vocabulary.synonyms)
    print(f'{len(vocabulary)} classes ({vocabulary.num_things} things, {vocabulary.num_stuff} '
          f'stuff), {n_synonyms} synonyms x {len(TEMPLATES)} templates = '
          f'{n_synonyms * len(TEMPLATES)} prompts')
    embeddings = embed_vocabulary(encoder, vocabulary)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(embeddings, args.out)
    with open(os.path.splitext(args.out)[0] + '.txt', 'w', encoding='utf-8') as handle:
        handle.write(vocabulary.text())
    print(f'wrote {args.out}: {embeddings.dtype} {list(embeddings.shape)} in '
          f'{time.perf_counter() - start:.1f}s')
    if not args.check:
        return 0
    try:
        cosine = compare_class_embeddings(embeddings, read_class_embeddings(args.check))
    except (ValueError, RuntimeError) as exc:
        print(f'error: --check {args.check}: {exc}', file=sys.stderr)
        return 2
    names = vocabulary.names
    for label in cosine.argsort()[:10].tolist():
        print(f'  {label:4d} {names[label]:<24} min cosine over synonyms {cosine[label]:.6f}')
    failed = int((cosine <= PASS_COSINE).sum())
    print(f'--check {args.check}: min cosine {cosine.min():.6f}, mean {cosine.mean():.6f}; '
          f'{failed} of {len(cosine)} classes at or below {PASS_COSINE}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
