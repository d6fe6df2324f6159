"""Extra training terms a config adds to :class:`~omg_llava.models.OMGLLaVA` (``auxiliary_losses``).

The released recipe has none; the tiny synthetic recipe adds :class:`ObjectTokenHintLoss` and
:class:`TextOnlyLMLoss` (configs/tiny/omg_llava_tiny_synthetic_finetune.py, docs/tiny_model.md).
"""
from .base import AuxiliaryLoss
from .object_token_hint import ObjectTokenHintLoss
from .text_only_lm import TextOnlyLMLoss

__all__ = ['AuxiliaryLoss', 'ObjectTokenHintLoss', 'TextOnlyLMLoss']
