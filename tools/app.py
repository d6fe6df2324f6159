"""Gradio demo of OMG-LLaVA (spec §9.2): ask about an image with point and box prompts; see docs/app.md.

    python tools/app.py                  # built-in default: the trained tiny synthetic-shapes model, CPU
    python tools/app.py configs/omg_llava_7b_finetune_8gpus.py --pth omg_llava_7b_finetune_8gpus.pth \\
        --device cuda --dtype fp16

Then open http://127.0.0.1:7860. Click on the image to add a point (write <mark> in the question) or, in box
mode, click two opposite corners to add a box (write <region>).
"""
from __future__ import annotations

import argparse
import sys

from omg_llava.inference.defaults import (DEFAULT_CONFIG, DEFAULT_IMAGE, DEFAULT_PROMPT, checkpoint_for,
                                         is_default_config)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG, help=f'model config (default {DEFAULT_CONFIG})')
    parser.add_argument('--pth', help='released-format OMG-LLaVA checkpoint; default: the committed one for the '
                        'default config, none (random projectors) for any other')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default='bf16',
                        help='dtype of the LLM and projectors (the visual encoder stays fp32)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights the files do not cover')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    parser.add_argument('--max-new-tokens', type=int, default=256, help='answer length limit')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (0.0.0.0: every interface)')
    parser.add_argument('--port', type=int, default=7860, help='port to serve on')
    parser.add_argument('--share', action='store_true', help='also open a public gradio.live link (needs internet)')
    args = parser.parse_args(argv)
    args.pth = checkpoint_for(args.config, args.pth)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from omg_llava.inference.app_ui import build_demo, launch_demo
    from omg_llava.inference.chat import OMGLLaVAChat

    chat, notes = OMGLLaVAChat.from_config(args.config, pth=args.pth, device=args.device, dtype=args.dtype,
                                           seed=args.seed, weights_only=not args.trust_checkpoint)
    print(f'config: {args.config}')
    for note in notes:
        print(f'  {note}')
    examples = [(DEFAULT_IMAGE, DEFAULT_PROMPT)] if is_default_config(args.config) else None
    demo = build_demo(chat, max_new_tokens=args.max_new_tokens, examples=examples)
    launch_demo(demo, host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == '__main__':
    sys.exit(main())
