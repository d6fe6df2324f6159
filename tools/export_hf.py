"""Merge the LoRA of an OMG-LLaVA checkpoint into the LLM and export a self-contained folder (spec
§7.4).

    python tools/export_hf.py configs/omg_llava_7b_finetune_8gpus.py \\
        --pth omg_llava_7b_finetune_8gpus.pth --out exports/omg_llava_7b --dtype bf16

The folder holds ``llm/`` (a plain InternLM2 that ``AutoModelForCausalLM.from_pretrained`` reads
after ``import omg_llava.models``), ``omg_llava_modules.safetensors`` (projectors and visual
encoder) and ``omg_llava_export.json``; ``omg_llava.export.load_exported_model(DIR)`` rebuilds the
model from it alone. The visual-encoder files named by the config must exist (a missing one is an
error); a config that names none (the tiny ones) exports its seeded random encoder.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from omg_llava.cli_errors import (OneLineParser, UsageError, check_device, check_file,
                                  check_new_out_dir, check_weight_file, one_line_errors)
from omg_llava.config_paths import config_argument


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=config_argument,
                        help='the OMG-LLaVA config the checkpoint was trained with (a path or a '
                             'built-in name)')
    parser.add_argument('--pth', required=True,
                        help='released-format checkpoint (pretrain, finetune or task finetune)')
    parser.add_argument('--out', required=True,
                        help='export folder to create (written in a temporary sibling folder, '
                             'renamed at the end)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace --out when it already holds files')
    parser.add_argument('--dtype', choices=('fp32', 'fp16', 'bf16'), default='bf16',
                        help='dtype of the LLM (built directly in it), its merged LoRA and the '
                             'projectors (default bf16, the released LLM\'s own dtype; the merge '
                             'arithmetic runs in float32)')
    parser.add_argument('--device', default='cpu',
                        help='torch device for the merge, e.g. cpu or cuda')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random encoder when the config names no files')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load weight files with the full unpickler (only for files you trust)')
    args = parser.parse_args(argv)

    check_file(args.config, 'config')
    check_weight_file(args.pth, '--pth')
    check_device(args.device)
    check_new_out_dir(args.out, '--out', args.overwrite)
    for flag, given in (('--pth', args.pth), ('config', args.config)):
        if os.path.realpath(given).startswith(os.path.realpath(args.out) + os.sep):
            raise UsageError(f'--out {args.out} holds the input {flag} {given}: --overwrite would '
                             'delete it; write the export to another folder')

    from omg_llava.export import export_merged_model
    from omg_llava.inference.model_builder import build_model

    start = time.perf_counter()  # bad input below: one error line, exit 2
    # the visual encoder keeps the reference's fp32 in the files: the loading side picks its dtype
    model, _, notes = build_model(args.config, pth=args.pth, device=args.device, seed=args.seed,
                                  dtype=args.dtype, weights_only=not args.trust_checkpoint,
                                  encoder_dtype='fp32')
    for note in notes:
        print(f'  {note}')
    from omg_llava.utils.atomic import atomic_folder
    # no half-written export at --out
    with atomic_folder(args.out, overwrite=args.overwrite) as temporary:
        export_merged_model(model, temporary, config_path=args.config, dtype=args.dtype)
    out = args.out
    merged = 'LoRA merged' if any('merged' in note for note in notes) else 'no LoRA to merge'
    print(f'exported {args.config} + {args.pth} to {out} ({merged}, {args.dtype}, '
          f'{time.perf_counter() - start:.1f}s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
