"""The OMG-LLaVA special tokens and their ids (spec §5.2).

The reference adds ``[SEG]``, ``<p>``, ``</p>``, ``<region>`` to the InternLM2 tokenizer, resizes
the LLM embeddings to that length (92548 rows at full size), then adds ``<mark>``: its id (92548)
has no embedding row and is always replaced by a visual-prompt embedding before the lookup.
"""
from __future__ import annotations

from dataclasses import dataclass

from omg_llava.utils.constants import (IMAGE_TOKEN_INDEX, MARK_TOKEN, PHRASE_END, PHRASE_START,
                                       REGION_TOKEN, SEG_TOKEN)

#: Added before the embedding resize, in this order (consecutive ids after the base vocabulary).
EMBEDDED_SPECIAL_TOKENS = (SEG_TOKEN, PHRASE_START, PHRASE_END, REGION_TOKEN)
#: Added after the resize: an id without an embedding row.
UNEMBEDDED_SPECIAL_TOKENS = (MARK_TOKEN, )


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the five added tokens. ``num_embeddings`` is the LLM vocabulary size after the
    resize."""

    seg: int
    phrase_start: int
    phrase_end: int
    region: int
    mark: int

    @property
    def num_embeddings(self) -> int:
        return self.region + 1

    @classmethod
    def after_vocabulary(cls, base_vocab_size: int) -> 'SpecialTokenIds':
        """The ids the reference tokenizer assigns when its base vocabulary has ``base_vocab_size``
        entries (92544 for InternLM2 → [SEG] = 92544 … <mark> = 92548)."""
        return cls(*range(base_vocab_size, base_vocab_size + 5))

    @property
    def placeholder_ids(self) -> tuple[int, int, int]:
        """``<image>`` (the sentinel), ``<region>`` and ``<mark>``: the text positions visual inputs
        fill, dropped when a conversation is read as text alone."""
        return IMAGE_TOKEN_INDEX, self.region, self.mark

    def as_dict(self) -> dict[str, int]:
        return {SEG_TOKEN: self.seg, PHRASE_START: self.phrase_start, PHRASE_END: self.phrase_end,
                REGION_TOKEN: self.region, MARK_TOKEN: self.mark}


def add_special_tokens(tokenizer) -> SpecialTokenIds:
    """Add the five tokens to a HF tokenizer (idempotent) and return their ids.

    Raises:
        ValueError: the tokenizer gives them ids that are not consecutive after its base vocabulary
            in the reference order — the released embeddings would then be read at the wrong rows.
    """
    tokenizer.add_tokens(list(EMBEDDED_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.add_tokens(list(UNEMBEDDED_SPECIAL_TOKENS), special_tokens=True)
    ids = [tokenizer.convert_tokens_to_ids(t)
           for t in EMBEDDED_SPECIAL_TOKENS + UNEMBEDDED_SPECIAL_TOKENS]
    if ids != list(range(ids[0], ids[0] + 5)):
        raise ValueError(f'special tokens got ids {ids}; OMG-LLaVA needs them consecutive in the '
                         f'order {EMBEDDED_SPECIAL_TOKENS + UNEMBEDDED_SPECIAL_TOKENS}. Use a '
                         'fresh InternLM2 tokenizer that does not already contain some of them.')
    return SpecialTokenIds(*ids)


def fit_embeddings(llm, token_ids: SpecialTokenIds) -> None:
    """Resize the LLM's vocabulary tensors to ``token_ids.num_embeddings`` rows when they differ
    (new rows drawn from the LLM's own initialiser, not the mean of the old ones, as the reference
    does)."""
    if llm.get_input_embeddings().num_embeddings != token_ids.num_embeddings:
        llm.resize_token_embeddings(token_ids.num_embeddings, mean_resizing=False)

