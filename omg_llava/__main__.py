"""``python -m omg_llava COMMAND [ARGS]``: the tools from anywhere (:mod:`omg_llava.cli`)."""
import sys

from omg_llava.cli import main

sys.exit(main())
