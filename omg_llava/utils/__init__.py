"""Shared constants (cheap to import). Prompt templates live in :mod:`omg_llava.utils.templates`, whose
import registers them in xtuner (that import loads xtuner, which takes a few seconds)."""
from .constants import (CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_TOKEN, DEFAULT_PAD_TOKEN_ID, IGNORE_INDEX,
                        IMAGE_TOKEN_INDEX, MARK_TOKEN, PHRASE_END, PHRASE_START, REGION_TOKEN, SEG_TOKEN)

__all__ = [
    'CLIP_MEAN', 'CLIP_STD', 'DEFAULT_IMAGE_TOKEN', 'DEFAULT_PAD_TOKEN_ID', 'IGNORE_INDEX',
    'IMAGE_TOKEN_INDEX', 'MARK_TOKEN', 'PHRASE_END', 'PHRASE_START', 'REGION_TOKEN', 'SEG_TOKEN',
]
