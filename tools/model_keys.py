"""Print the parameter names and shapes of a config's full-size model part, built on the meta
device.

    python tools/model_keys.py configs/omg_llava_7b_finetune_8gpus.py --part visual_encoder

Output: ``key<TAB>a,b,c`` per line, sorted. Compare with tests/data/keys/*.tsv to check that the
released checkpoints will load.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from omg_llava.config_paths import config_argument

#: omg_llava.verification.model_keys.PARTS (imported after the arguments are read: --help stays
#: fast)
PARTS = ('visual_encoder', 'pretrain', 'finetune', 'full')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=config_argument,
                        help='a python config, e.g. configs/omg_llava_7b_finetune_8gpus.py (a path '
                             'or a built-in name)')
    parser.add_argument('--part', choices=PARTS, required=True,
                        help='which checkpoint part to list')
    args = parser.parse_args(argv)
    # library import chatter (deepspeed) must not mix with keys
    with contextlib.redirect_stdout(sys.stderr):
        from omg_llava.verification.model_keys import format_key_shapes, part_key_shapes
        shapes = part_key_shapes(args.config, args.part)
    print(format_key_shapes(shapes))
    return 0


if __name__ == '__main__':
    sys.exit(main())
