"""Language stage of a from-scratch LLM: next-token training on the text of the OMG-LLaVA
conversations.

OMG-LLaVA starts from a pretrained chat LLM (InternLM2-chat-7B) that already reads and repeats the
user's words. A tiny, randomly initialised LLM does not, and learning it inside the multimodal
finetune is slow: the image offers a shortcut (name an object that is visible) that competes with
copying the expression from the question, so the answers name the wrong object (measured on the tiny
synthetic model, LM loss only: after 300 finetune iterations 0 of 300 held-out answers repeated
their referring expression; with a 400-step text stage first, 181). :class:`LanguageModelTrainer`
gives the tiny LLM that start: it trains on the same conversations as the finetune with the image
and the visual prompts left out, and :meth:`LanguageModelTrainer.export` writes it as a Hugging Face
folder, the role ``internlm2-chat-7b`` plays for the released model.
"""
from __future__ import annotations

import os
from typing import Any

from mmengine.model import BaseModel
from torch import nn

from omg_llava.registry import MODELS, build_component

from .multimodal_inputs import drop_tokens
from .omg_llava import shifted_cross_entropy
from .special_tokens import add_special_tokens, fit_embeddings

#: where :meth:`LanguageModelTrainer.export` writes the LLM under its output folder
LANGUAGE_MODEL_FOLDER = 'llm'


@MODELS.register_module()
class LanguageModelTrainer(BaseModel):
    """Trains an LLM on the text of OMG-LLaVA batches (the batches of ``omg_llava_collate_fn``).

    The tokenizer gets the OMG-LLaVA special tokens and the LLM the matching vocabulary size,
    exactly as :class:`~omg_llava.models.OMGLLaVA` will build them, so the exported folder loads
    there unchanged. The ``<image>`` sentinel and the ``<region>`` / ``<mark>`` placeholders are
    dropped from the text; images, masks and prompts in the batch are ignored.

    Args:
        llm: the causal LM or its config (e.g. ``InternLM2ForCausalLM`` with a small
            ``InternLM2Config``).
        tokenizer: the tokenizer or its config.
        data_preprocessor: mmengine data preprocessor config (default: moves tensors to the device).
    """

    def __init__(self, llm: nn.Module | dict, tokenizer: Any,
                 data_preprocessor: dict | nn.Module | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.tokenizer = build_component(tokenizer)
        self.token_ids = add_special_tokens(self.tokenizer)
        self.llm = build_component(llm)
        fit_embeddings(self.llm, self.token_ids)

    def forward(self, data: dict, data_samples: None = None, mode: str = 'loss'):
        """``data``: ``input_ids``, ``labels``, ``attention_mask`` (B, L). ``'loss'`` →
        ``{'loss_lm'}``; ``'tensor'`` → the LLM output on the text-only batch."""
        ids, labels, mask = drop_tokens(data['input_ids'], data['labels'], data['attention_mask'],
                                      self.token_ids.placeholder_ids)
        out = self.llm(input_ids=ids, attention_mask=mask, use_cache=False, return_dict=True)
        if mode == 'loss':
            return {'loss_lm': shifted_cross_entropy(out.logits, labels)}
        if mode == 'tensor':
            return out
        raise ValueError(f'unknown mode {mode!r}; use "loss" or "tensor"')

    def export(self, out_dir: str | os.PathLike) -> list[str]:
        """Write ``out_dir/llm/``: the LLM (``config.json`` + safetensors) and the tokenizer with
        the special tokens, loadable with ``InternLM2ForCausalLM.from_pretrained``. Returns the
        folder."""
        folder = os.path.join(os.fspath(out_dir), LANGUAGE_MODEL_FOLDER)
        self.llm.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        return [folder]

