"""Convert a training checkpoint into a released-format OMG-LLaVA ``.pth`` (spec §7.2).

    python tools/convert_to_pth.py CONFIG work_dirs/run/iter_5000.pth \
        --save-path omg_llava_finetune.pth --trust-checkpoint \
        [--cfg-options model.llm.pretrained_model_name_or_path=work_dirs/run/llm]

CHECKPOINT is a DeepSpeed ZeRO folder (the ``iter_N.pth/`` directory of an xtuner ``--deepspeed``
run), an mmengine checkpoint file or a flat state dict. DeepSpeed folders and mmengine checkpoints
hold pickled Python objects and are read only with ``--trust-checkpoint`` (use it for checkpoints
your own training wrote). The output holds exactly the tensors the released checkpoints hold; load
it with ``tools/chat`` or ``omg_llava.models.released_weights.load_released_checkpoint``.
"""
from __future__ import annotations

import argparse
import sys

from mmengine.config import DictAction

from omg_llava.cli_errors import (OneLineParser, check_file, check_output_spares_inputs,
                                  check_weight_file, one_line_errors)
from omg_llava.config_paths import config_argument


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=config_argument,
                        help='the config the checkpoint was trained with (a path or a built-in '
                             'name)')
    parser.add_argument('checkpoint',
                        help='DeepSpeed ZeRO folder, mmengine checkpoint or flat state dict')
    parser.add_argument('--save-path', required=True,
                        help='output .pth (written atomically; never one of the inputs)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow pickled Python objects (needed for DeepSpeed folders and '
                        'mmengine checkpoints; only for files you trust)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the built model (frozen tensors absent from the checkpoint '
                             'keep its values)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='the --cfg-options the training ran with (key=value), e.g. another '
                             'LLM folder')
    args = parser.parse_args(argv)

    check_file(args.config, 'config')
    # a DeepSpeed folder is one
    check_weight_file(args.checkpoint, 'checkpoint', allow_directory=True)
    check_output_spares_inputs(args.save_path, [args.checkpoint, args.config], '--save-path')

    from omg_llava.engine.convert import convert_checkpoint

    summary = convert_checkpoint(args.config, args.checkpoint, args.save_path,
                                 trust_checkpoint=args.trust_checkpoint, seed=args.seed,
                                 cfg_options=args.cfg_options)  # bad input: one error line, exit 2
    print(summary.format())
    return 0


if __name__ == '__main__':
    sys.exit(main())
