"""Shared constants and prompt templates.

Importing this package registers the plugin's prompt templates in xtuner (when installed).
"""
from .constants import (CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_TOKEN, DEFAULT_PAD_TOKEN_ID,
                        IGNORE_INDEX, IMAGE_TOKEN_INDEX, MARK_TOKEN, PHRASE_END, PHRASE_START,
                        REGION_TOKEN, SEG_TOKEN)
from .templates import INTERNLM2_CHAT, PROMPT_TEMPLATE, register_prompt_templates

register_prompt_templates()

__all__ = [
    'CLIP_MEAN', 'CLIP_STD', 'DEFAULT_IMAGE_TOKEN', 'DEFAULT_PAD_TOKEN_ID', 'IGNORE_INDEX',
    'IMAGE_TOKEN_INDEX', 'MARK_TOKEN', 'PHRASE_END', 'PHRASE_START', 'REGION_TOKEN', 'SEG_TOKEN',
    'INTERNLM2_CHAT', 'PROMPT_TEMPLATE', 'register_prompt_templates',
]
