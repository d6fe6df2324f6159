"""``loss_lm_prompt``: the LM loss of the batch's prompt conversations with the image left out but
their visual prompts kept.

Not in the reference. An extra pass of the LLM on each row that holds a ``<region>`` or ``<mark>``:
``<image>`` dropped (no pixel or object tokens), the main pass's prompt embeddings spliced in again
(not decoded a second time). The answers about a prompted object ("It is blue.") can then only come
from its prompt embedding. In the main pass the image offers the tiny synthetic model's
from-scratch LLM a way around reading its prompts (name a colour or shape of the image), which it
took: its answers did not change with the prompted object (issue 26, docs/tiny_model_history.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from omg_llava.registry import MODELS
from omg_llava.utils.constants import IMAGE_TOKEN_INDEX

from ..multimodal_inputs import count_placeholders, drop_tokens, splice_multimodal_inputs
from ..omg_llava import shifted_cross_entropy
from .base import AuxiliaryLoss

if TYPE_CHECKING:
    from ..omg_llava import OMGLLaVA, PromptRows, SegQueries


@MODELS.register_module()
class PromptOnlyLMLoss(AuxiliaryLoss):
    """LM cross-entropy of the rows with visual prompts, without their image (module docstring).

    A batch whose prompt count differs from its placeholders (its LM loss is zeroed, spec §6.4)
    or without prompts gives 0 (in the graph).

    Args:
        weight: see :class:`~omg_llava.models.auxiliary_losses.AuxiliaryLoss`.
    """

    name = 'loss_lm_prompt'

    def compute(self, model: OMGLLaVA, data: dict, llm_output: Any,
                seg: SegQueries | None, prompts: PromptRows) -> Tensor:
        ids, labels, mask = data['input_ids'], data['labels'], data.get('attention_mask')
        zero = llm_output.logits.sum() * 0.0
        token_ids = model.token_ids
        counts = (count_placeholders(ids, mask, token_ids.region)
                  + count_placeholders(ids, mask, token_ids.mark))  # (B,)
        rows = counts > 0
        if not bool(rows.any()) or not prompts.matched:
            return zero
        # every placeholder lies in a kept row, so the main pass's batch-order rows are theirs
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        ids, labels, mask = drop_tokens(ids[rows], labels[rows], mask[rows], [IMAGE_TOKEN_INDEX])
        spliced = splice_multimodal_inputs(ids, model.llm.get_input_embeddings(), token_ids,
                                           attention_mask=mask, labels=labels,
                                           region_embeds=prompts.region, mark_embeds=prompts.mark)
        out = model.llm(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask,
                        position_ids=spliced.position_ids, use_cache=False, return_dict=True)
        return shifted_cross_entropy(out.logits, spliced.labels)
