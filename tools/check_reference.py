"""Compare this implementation with a reference fixture, stage by stage.

    python tools/check_reference.py tests/data/fixtures/omg_llava_reference_tiny.pt

Prints ``name  max_abs_diff  tolerance  PASS|FAIL|SKIP`` per recorded output; exits 1 if any FAILs.
The fixture format is described in tests/data/fixtures/README.md (X.pt + X.json sidecar).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('fixture',
                        help='path to the fixture .pt (its .json sidecar must sit next to it)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    args = parser.parse_args(argv)
    import torch  # after the arguments: --help stays fast
    if args.threads:
        torch.set_num_threads(args.threads)
    from omg_llava.verification.reference_fixture import run_fixture
    results = run_fixture(args.fixture)
    for result in results:
        print(result.line())
    counts = {s: sum(r.status == s for r in results) for s in ('PASS', 'FAIL', 'SKIP')}
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped (not "
          "implemented yet)")
    return 1 if counts['FAIL'] else 0


if __name__ == '__main__':
    sys.exit(main())
