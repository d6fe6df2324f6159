"""Extra training terms a config adds to :class:`~omg_llava.models.OMGLLaVA` (``auxiliary_losses``).

The released recipe has none; the tiny synthetic recipe adds :class:`ObjectTokenHintLoss` and
:class:`TextOnlyLMLoss` (configs/tiny/omg_llava_tiny_synthetic_finetune.py, docs/tiny_model.md);
:class:`PromptOnlyLMLoss` was measured on it (docs/tiny_model.md, "Visual prompts").
"""
from .base import AuxiliaryLoss
from .object_token_hint import ObjectTokenHintLoss
from .prompt_only_lm import PromptOnlyLMLoss
from .text_only_lm import TextOnlyLMLoss

__all__ = ['AuxiliaryLoss', 'ObjectTokenHintLoss', 'PromptOnlyLMLoss', 'TextOnlyLMLoss']
