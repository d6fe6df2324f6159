"""The built-in default model of the user-facing tools (``tools/chat.py``, ``tools/app.py``, ``make demo``): the
tiny OMG-LLaVA trained on the synthetic shapes (``projects/tiny_omg_llava/train_tiny.py``), whose weights ship in
``omg_llava/assets/tiny_synthetic/``. It knows coloured shapes only; its demo image is a held-out synthetic one."""
from __future__ import annotations

import os

from omg_llava.assets import TINY_SYNTHETIC_DEMO_IMAGE, TINY_SYNTHETIC_PTH

DEFAULT_CONFIG = 'configs/tiny/omg_llava_tiny_synthetic_finetune.py'
DEFAULT_IMAGE = TINY_SYNTHETIC_DEMO_IMAGE
DEFAULT_PROMPT = 'Please segment the largest shape in this image.'


def is_default_config(config: str) -> bool:
    return os.path.abspath(config) == os.path.abspath(DEFAULT_CONFIG)


def checkpoint_for(config: str, pth: str | None) -> str | None:
    """``pth`` if given; the committed tiny checkpoint for the default config; else ``None`` (random weights)."""
    if pth or not is_default_config(config):
        return pth
    return TINY_SYNTHETIC_PTH

#: DEFAULT_IMAGE is val image k of ``synthetic_shapes.py`` (seed 0): ``sample_scene(default_rng([0, 1, k]))``.
DEMO_VAL_INDEX = 40
