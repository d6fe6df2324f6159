"""``loss_lm_text``: the LM loss of the batch's conversations with the image and prompts left out.

Not in the reference. An extra pass of the LLM on the text alone (``<image>``, ``<region>`` and
``<mark>`` dropped, as the language stage does). Without it the image offers the tiny synthetic
model's from-scratch LLM a shortcut (name a visible object) that wins over repeating the asked-for
expression: about half of its held-out answers did not repeat it; with weight 3 on the referring
rows, 92% did (docs/tiny_model_history.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from omg_llava.registry import MODELS

from ..multimodal_inputs import drop_tokens
from ..omg_llava import shifted_cross_entropy
from .base import AuxiliaryLoss

if TYPE_CHECKING:
    from ..omg_llava import OMGLLaVA, PromptRows, SegQueries


@MODELS.register_module()
class TextOnlyLMLoss(AuxiliaryLoss):
    """LM cross-entropy of the allowed rows' conversations without their image.

    Which rows are allowed is the data's choice: ``CombinedDataset(text_only_lm=[...])`` flags each
    dataset's samples (collated as ``data['text_only_lm']``, (B,) bool), True where the answer can
    be read from the text (a referring answer repeats the question's expression), False where it
    describes the image (there the pass only teaches guessing without looking). Unflagged batches
    allow every row.

    Args:
        weight: see :class:`~omg_llava.models.auxiliary_losses.AuxiliaryLoss`.
        rows: how many of the allowed rows of each batch get the pass (the first ones; training
            batches are shuffled), ``None`` for all. The pass costs about as much LLM arithmetic as
            the main one; fewer rows buy back time.
    """

    name = 'loss_lm_text'

    def __init__(self, weight: float = 1.0, rows: int | None = None) -> None:
        super().__init__(weight)
        if rows is not None and rows < 1:
            raise ValueError('TextOnlyLMLoss rows must be >= 1 or None (every allowed row), '
                             f'got {rows}')
        self.rows = rows

    def compute(self, model: OMGLLaVA, data: dict, llm_output: Any,
                seg: SegQueries | None, prompts: PromptRows) -> Tensor:
        ids, labels = data['input_ids'], data['labels']  # (B, L)
        mask = data.get('attention_mask')
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        rows = torch.arange(len(ids), device=ids.device)
        allowed = data.get('text_only_lm')  # (B,) bool or None
        if allowed is not None:
            rows = rows[allowed.to(ids.device)]
        rows = rows[:self.rows]  # [:None]: every allowed row
        if len(rows) == 0:
            return model.llm.get_input_embeddings().weight.sum() * 0.0
        ids, labels, mask = drop_tokens(ids[rows], labels[rows], mask[rows],
                                        model.token_ids.placeholder_ids)
        out = model.llm(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=True)
        return shifted_cross_entropy(out.logits, labels)
