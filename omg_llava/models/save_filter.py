"""Which tensors an OMG-LLaVA checkpoint holds (spec §5.3): the reference ``state_dict`` filter.

Pretrain: ``llm.model.tok_embeddings.weight``, ``llm.output.weight`` and both projectors (17
tensors). Finetune (LoRA): ``llm.base_model.model.model.tok_embeddings.weight``,
``llm.base_model.model.output.base_layer.weight``, every LoRA A/B and both projectors (339 tensors).
Task finetunes add the ``_llm`` decoder copies of the OMG head (170 tensors).
A model whose LLM trains in full (``freeze_llm=False``, e.g. the tiny synthetic model) saves every
``llm.`` tensor: the rule is "what trains is saved".
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Mapping

from torch import Tensor

PROJECTOR_PREFIXES = ('projector.', 'projector_text2vision.')
_LM_HEAD = re.compile(r'(^|\.)output\.(weight|base_layer\.weight)$')
_LLM_DECODER_COPIES = ('visual_encoder.panoptic_head.transformer_decoder_llm.',
                       'visual_encoder.panoptic_head.mask_embed_llm.')


def is_saved_key(key: str, with_llm_decoder_copy: bool = False,
                 with_full_llm: bool = False) -> bool:
    """Whether ``key`` (an ``OMGLLaVA`` module path) belongs in a released-format checkpoint."""
    if key.startswith('llm.'):
        return (with_full_llm or '.tok_embeddings.' in key or '.lora_' in key
                or bool(_LM_HEAD.search(key)))
    if key.startswith(PROJECTOR_PREFIXES):
        return True
    return with_llm_decoder_copy and key.startswith(_LLM_DECODER_COPIES)


def filter_saved_keys(state_dict: Mapping[str, Tensor], prefix: str = '',
                      with_llm_decoder_copy: bool = False,
                      with_full_llm: bool = False) -> 'OrderedDict[str, Tensor]':
    """The entries of ``state_dict`` that :func:`is_saved_key` keeps (``prefix`` is stripped for the
    test)."""
    return OrderedDict((k, v) for k, v in state_dict.items()
                       if k.startswith(prefix)
                       and is_saved_key(k[len(prefix):], with_llm_decoder_copy, with_full_llm))
