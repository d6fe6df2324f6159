"""A full-size OMG-LLaVA benchmark that needs no download (docs/performance.md).

    python tools/benchmark.py write-bundle --preset 7b --out bundles/7b      # ~25 GB of random weights
    python tools/benchmark.py run bundles/7b --dtype bf16 --max-new-tokens 8

``write-bundle`` writes random weights in the released files' layout, names, shapes and dtypes (the
internlm2-chat-7b folder, omg_seg_convl.pth, the class embeddings, the open_clip trunk, the finetune .pth) plus a
config naming them; ``small`` and ``tiny`` keep the layout with smaller dimensions. ``run`` goes through the user
path (``OMGLLaVAChat.from_config``) stage by stage: build + load, image encode, a first question, a follow-up, and
prints wall time, peak RSS and RSS after each stage (JSON with --json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

PROMPTS = ('Please segment the cat in this image.', 'What is it doing?')


def _peak_rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


def _rss_gb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 1e9


def write_bundle_command(args: argparse.Namespace) -> int:
    from omg_llava.benchmark import write_bundle
    write_bundle(args.preset, args.out, seed=args.seed)
    return 0


def run_command(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from omg_llava.benchmark.bundle import BundlePaths
    from omg_llava.inference.chat import OMGLLaVAChat
    paths = BundlePaths.under(args.bundle)
    if not os.path.isfile(paths.config):
        print(f'error: {args.bundle} is not a bundle ({paths.config} is missing); write one with '
              '`tools/benchmark.py write-bundle`', file=sys.stderr)
        return 2
    stages = []

    def stage(name: str, work, **extra):
        start = time.perf_counter()
        result = work()
        stages.append(dict(stage=name, seconds=round(time.perf_counter() - start, 2),
                           peak_rss_gb=round(_peak_rss_gb(), 2), rss_gb=round(_rss_gb(), 2), **extra))
        row = stages[-1]
        print(f'{name:<10} {row["seconds"]:>8.1f}s  peak RSS {row["peak_rss_gb"]:6.2f} GB  '
              f'RSS {row["rss_gb"]:6.2f} GB', flush=True)
        return result

    chat, _ = stage('build', lambda: OMGLLaVAChat.from_config(
        paths.config, pth=paths.finetune, device=args.device, dtype=args.dtype, merge_lora=not args.keep_lora))
    image = (np.random.default_rng(args.seed).random((480, 640, 3)) * 255).astype(np.uint8)
    stage('encode', lambda: chat.set_image(image))
    for turn, prompt in enumerate(PROMPTS[:args.turns], start=1):
        torch.manual_seed(args.seed)
        answer = stage(f'turn {turn}', lambda: chat.ask(prompt, max_new_tokens=args.max_new_tokens))
        stages[-1].update(new_tokens=len(answer.token_ids), masks=len(answer.masks))
    record = dict(bundle=os.path.abspath(args.bundle), device=args.device, dtype=args.dtype,
                  merged_lora=not args.keep_lora, threads=torch.get_num_threads(), stages=stages)
    if args.json:
        with open(args.json, 'w') as file:
            json.dump(record, file, indent=2)
            file.write('\n')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    write = commands.add_parser('write-bundle', help='write a random-weight bundle in the released layout')
    write.add_argument('--preset', choices=('7b', 'small', 'tiny'), required=True)
    write.add_argument('--out', required=True, help='the bundle folder to create')
    write.add_argument('--seed', type=int, default=0)
    write.set_defaults(func=write_bundle_command)
    run = commands.add_parser('run', help='build, encode and chat on a bundle, stage by stage')
    run.add_argument('bundle', help='a folder written by write-bundle')
    run.add_argument('--device', default='cpu')
    run.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default='bf16')
    run.add_argument('--keep-lora', action='store_true', help='keep the LoRA adapters unmerged')
    run.add_argument('--max-new-tokens', type=int, default=8)
    run.add_argument('--turns', type=int, choices=(1, 2), default=2)
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--json', help='also write the stages to this JSON file')
    run.set_defaults(func=run_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
