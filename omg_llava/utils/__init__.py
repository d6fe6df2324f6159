"""Shared constants (cheap to import). The chat template lives in :mod:`omg_llava.utils.templates`
and the conversation encoding in :mod:`omg_llava.utils.conversation`; neither imports xtuner."""
from .constants import (CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_TOKEN, DEFAULT_PAD_TOKEN_ID,
                        IGNORE_INDEX,
                        IMAGE_TOKEN_INDEX, MARK_TOKEN, PHRASE_END, PHRASE_START, REGION_TOKEN,
                        SEG_TOKEN)

__all__ = [
    'CLIP_MEAN', 'CLIP_STD', 'DEFAULT_IMAGE_TOKEN', 'DEFAULT_PAD_TOKEN_ID', 'IGNORE_INDEX',
    'IMAGE_TOKEN_INDEX', 'MARK_TOKEN', 'PHRASE_END', 'PHRASE_START', 'REGION_TOKEN', 'SEG_TOKEN',
]
