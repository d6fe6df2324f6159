"""Gradio demo of OMG-LLaVA (spec §9.2): ask about an image with point and box prompts, or segment
what you click; see docs/app.md.

    python tools/app.py  # built-in default: the trained tiny synthetic-shapes model, CPU
    python tools/app.py configs/omg_llava_7b_finetune_8gpus.py \\
        --pth omg_llava_7b_finetune_8gpus.pth --device cuda --dtype fp16

Then open http://127.0.0.1:7860. Click on the image to add a point (write <mark> in the question),
drag a rectangle to add a box (write <region>), or choose "Segment" to see the mask of what you
click at once. The files, the port and the device are checked before the model is built.
"""
from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from omg_llava.cli_errors import (OneLineParser, UsageError, add_precision_options,
                                  check_quantization_device, check_weight_file, quantization_of)
from omg_llava.config_paths import config_argument
from omg_llava.inference.defaults import (DEFAULT_CONFIG, DEFAULT_IMAGE, DEFAULT_PROMPT,
                                          checkpoint_for, is_default_config)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG, type=config_argument,
                        help=f'model config: a path or a built-in name (default {DEFAULT_CONFIG})')
    parser.add_argument('--pth',
                        help='released-format OMG-LLaVA checkpoint; default: the committed one for '
                        'the default config, none (random projectors) for any other')
    parser.add_argument('--device', default='cpu', help='torch device, e.g. cpu or cuda')
    parser.add_argument('--attn', choices=('sdpa', 'eager'), default='sdpa',
                        help='LLM attention: sdpa (default, fused) or eager (the reference '
                             'numerics)')
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default='bf16',
                        help='dtype of the LLM and projectors')
    add_precision_options(parser)
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the weights the files do not cover')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    parser.add_argument('--max-new-tokens', type=int, default=256, help='answer length limit')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to serve on (0.0.0.0: every interface)')
    parser.add_argument('--port', type=int, default=7860, help='port to serve on')
    parser.add_argument('--share', action='store_true',
                        help='also open a public gradio.live link (needs internet)')
    return parser


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`UsageError` when ``host:port`` cannot be bound (busy, or not an address of this
    machine)."""
    if not 0 < port < 65536:
        raise UsageError(f'--port must be in 1..65535, got {port}')
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as probe:
        # as the server does: TIME_WAIT is not busy
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f'port {port} on {host} is already in use (address already in '
                                 f'use): pass another --port, e.g. --port {port + 1}, or stop the '
                                 'server using it') from exc
            raise UsageError(f'cannot serve on {host}:{port} ({exc.strerror}): use --host '
                             '127.0.0.1 or 0.0.0.0') from exc


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be wrong with the command line, checked before the (slow) model build."""
    for flag, path in (('config', args.config), ('--pth', args.pth)):
        if path and not os.path.isfile(path):
            raise UsageError(f'{flag} file not found: {path}'
                             + (' (pass the released-format .pth file; see docs/model_zoo.md)'
                                if flag == '--pth' else ''))
    if args.pth:
        check_weight_file(args.pth, '--pth')
    if args.max_new_tokens < 1:
        raise UsageError(f'--max-new-tokens must be at least 1, got {args.max_new_tokens}')
    check_port_free(args.host, args.port)
    import torch
    try:
        torch.device(args.device)
    except RuntimeError as exc:
        raise UsageError(f'--device {args.device!r} is not a torch device; use cpu, cuda or '
                         'cuda:N') from exc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.pth = checkpoint_for(args.config, args.pth)
    try:
        return _run(args)
    except UsageError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    check_args(args)
    check_quantization_device(quantization_of(args), args.device)
    from omg_llava.checkpoint import CheckpointError
    from omg_llava.utils.imports import skip_deepspeed_import
    skip_deepspeed_import()  # before mmengine: inference never uses it
    from omg_llava.inference.app_ui import build_demo, launch_demo
    from omg_llava.inference.chat import OMGLLaVAChat

    print(f'building {args.config} on {args.device} ({args.dtype}); OMG-LLaVA weights: '
          f'{args.pth or "none"} ...', flush=True)
    try:
        chat, notes = OMGLLaVAChat.from_config(args.config, pth=args.pth, device=args.device,
                                               dtype=args.dtype, seed=args.seed,
                                               weights_only=not args.trust_checkpoint,
                                               quantization=quantization_of(args),
                                               attn_implementation=args.attn,
                                               encoder_dtype=args.encoder_dtype)
    except (FileNotFoundError, ValueError, KeyError, ImportError, CheckpointError) as exc:
        raise UsageError(str(exc).strip('"')) from exc
    for note in notes:
        print(f'  {note}')
    examples = [(DEFAULT_IMAGE, DEFAULT_PROMPT)] if is_default_config(args.config) else None
    demo = build_demo(chat, max_new_tokens=args.max_new_tokens, examples=examples)
    try:
        launch_demo(demo, host=args.host, port=args.port, share=args.share)
    except OSError as exc:  # the port was taken while the model loaded
        raise UsageError(f'cannot serve on {args.host}:{args.port}: {exc}; pass another '
                         '--port') from exc
    return 0


if __name__ == '__main__':
    sys.exit(main())
