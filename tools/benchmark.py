"""A full-size OMG-LLaVA benchmark that needs no download (docs/performance.md).

    python tools/benchmark.py write-bundle --preset 7b --out bundles/7b  # ~25 GB of random weights
    python tools/benchmark.py run bundles/7b --dtype bf16 --max-new-tokens 8
    python tools/benchmark.py segment bundles/7b --task panoptic  # OMG-Seg alone, one mode

``write-bundle`` writes random weights in the released files' layout, names, shapes and dtypes (the
internlm2-chat-7b folder, omg_seg_convl.pth, the class embeddings, the open_clip trunk, the finetune
.pth) plus a config naming them; ``small`` and ``tiny`` keep the layout with smaller dimensions.
``run`` goes through the user path (``OMGLLaVAChat.from_config``) stage by stage: build + load,
image encode, per turn prefill, decode (tokens/s and its fraction of the machine's memory-bandwidth
limit), [SEG] masks, then a follow-up turn on the kept KV cache; it prints wall time, peak RSS and
RSS after each stage (JSON with --json; omg_llava/benchmark/runner.py). ``segment`` times one
universal-segmentation mode of the bundle's visual encoder at 1024² (build, encode, the task on top;
omg_llava/benchmark/segmentation.py); run it once per mode, so each peak RSS is the mode's own.
"""
from __future__ import annotations

import argparse
import os
import sys


def write_bundle_command(args: argparse.Namespace) -> int:
    from omg_llava.benchmark import write_bundle
    write_bundle(args.preset, args.out, seed=args.seed)
    return 0


def _missing_bundle(bundle: str) -> bool:
    from omg_llava.benchmark.bundle import BundlePaths
    config = BundlePaths.under(bundle).config
    if os.path.isfile(config):
        return False
    print(f'error: {bundle} is not a bundle ({config} is missing); write one with '
          '`tools/benchmark.py write-bundle`', file=sys.stderr)
    return True


def segment_command(args: argparse.Namespace) -> int:
    if _missing_bundle(args.bundle):
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from omg_llava.benchmark.runner import write_record
    from omg_llava.benchmark.segmentation import run_segmentation_benchmark
    record = run_segmentation_benchmark(args.bundle, args.task, side=args.side, frames=args.frames,
                                        device=args.device, seed=args.seed)
    if args.json:
        write_record(record, args.json)
    return 0


def run_command(args: argparse.Namespace) -> int:
    from omg_llava.benchmark.bundle import BundlePaths
    from omg_llava.benchmark.runner import format_report, run_benchmark, write_record
    paths = BundlePaths.under(args.bundle)
    if not os.path.isfile(paths.config):
        print(f'error: {args.bundle} is not a bundle ({paths.config} is missing); write one with '
              '`tools/benchmark.py write-bundle`', file=sys.stderr)
        return 2
    if args.quantize == 'int8' and (args.device != 'cpu' or args.keep_lora):
        print('error: --quantize int8 is for CPU inference with the LoRA merged; drop --keep-lora, '
              'and on CUDA use bitsandbytes (tools/chat.py --load-in-8bit)', file=sys.stderr)
        return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    record = run_benchmark(args.bundle, device=args.device, dtype=args.dtype,
                           merge_lora=not args.keep_lora, attn=args.attn, quantize=args.quantize,
                           max_new_tokens=args.max_new_tokens, encoder_dtype=args.encoder_dtype,
                           turns=args.turns, seed=args.seed, bandwidth_gb=args.bandwidth_gb,
                           masks_out=args.masks)
    print(format_report(record))
    if args.json:
        write_record(record, args.json)
    return 0


def compare_command(args: argparse.Namespace) -> int:
    import json

    from omg_llava.benchmark.runner import compare_runs
    records = []
    for path in args.runs:
        with open(path) as file:
            records.append(json.load(file))
    print(json.dumps(compare_runs(*records, *(args.masks or ())), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    write = commands.add_parser('write-bundle',
                                help='write a random-weight bundle in the released layout')
    write.add_argument('--preset', choices=('7b', 'small', 'tiny'), required=True)
    write.add_argument('--out', required=True, help='the bundle folder to create')
    write.add_argument('--seed', type=int, default=0)
    write.set_defaults(func=write_bundle_command)
    run = commands.add_parser('run', help='build, encode and chat on a bundle, stage by stage')
    run.add_argument('bundle', help='a folder written by write-bundle')
    run.add_argument('--device', default='cpu')
    run.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default='bf16')
    run.add_argument('--keep-lora', action='store_true', help='keep the LoRA adapters unmerged')
    run.add_argument('--attn', choices=('sdpa', 'eager'), default='sdpa',
                     help='LLM attention implementation')
    run.add_argument('--encoder-dtype', choices=('auto', 'fp32', 'fp16', 'bf16'), default='auto',
                     help='visual encoder dtype (default auto: bf16 for a bf16 model on a CPU, '
                          'else fp32 as the reference)')
    run.add_argument('--quantize', choices=('none', 'int8'), default='none',
                     help='int8: weight-only int8 LLM on CPU (omg_llava/inference/quantize.py)')
    run.add_argument('--max-new-tokens', type=int, default=16,
                     help='tokens per answer (stop ids are suppressed and the last token is [SEG])')
    run.add_argument('--turns', type=int, choices=(1, 2), default=2)
    run.add_argument('--threads', type=int, help='torch threads (default: torch\'s choice)')
    run.add_argument('--bandwidth-gb', type=float, default=2.0,
                     help='size of the bandwidth probe array')
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--json', help='also write the stages to this JSON file')
    run.add_argument('--masks', help='also save the answers\' masks to this .npz (for compare)')
    run.set_defaults(func=run_command)
    segment = commands.add_parser('segment',
                                  help='time one universal-segmentation mode of the visual encoder')
    segment.add_argument('bundle', help='a folder written by write-bundle')
    segment.add_argument('--task',
                         choices=('panoptic', 'semantic', 'instance', 'interactive', 'video'),
                         default='panoptic')
    segment.add_argument('--side', type=int, default=1024,
                         help='image side in pixels (default 1024)')
    segment.add_argument('--frames', type=int, default=3,
                         help='video: frames (one clip of 3 by default)')
    segment.add_argument('--device', default='cpu')
    segment.add_argument('--threads', type=int, help='torch threads (default: torch\'s choice)')
    segment.add_argument('--seed', type=int, default=0)
    segment.add_argument('--json', help='also write the stages to this JSON file')
    segment.set_defaults(func=segment_command)
    compare = commands.add_parser('compare',
                                  help='token agreement and mask IoU of two runs (e.g. bf16, int8)')
    compare.add_argument('runs', nargs=2, help='the two --json files')
    compare.add_argument('--masks', nargs=2, help='the two --masks files')
    compare.set_defaults(func=compare_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from omg_llava.utils.imports import skip_deepspeed_import
    skip_deepspeed_import()  # before mmengine: what the chat, test and app tools do too
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
