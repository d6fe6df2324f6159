"""Base class of every OMG-LLaVA training dataset: lazy records, shared encoding, skipping of bad rows.

A subclass reads its annotation files into a list of light records (:meth:`load_records`) and turns one
record into a :class:`~omg_llava.datasets.sample.GroundedConversation` (:meth:`build_conversation`). Rows
that cannot be used raise :class:`MalformedSample` there (or in the shared encoding) and are skipped: the
next row is served instead, the skip is counted per reason and logged, and a run never crashes on one
bad annotation.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from mmengine.logging import print_log
from torch.utils.data import Dataset

from .encoding import encode_sample
from .sample import GroundedConversation, MalformedSample

MAX_CONSECUTIVE_SKIPS = 100
CHARS_PER_TOKEN = 4  # rough text-length estimate for length grouping


def read_json_list(path: str) -> list:
    """A JSON file holding a list (one entry per sample), with a clear error for anything else."""
    import json
    with open(path, encoding='utf-8') as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f'{path}: expected a JSON list of entries, got {type(records).__name__}')
    return records


class SkippingDataset(Dataset):
    """Serves ``load_record(i)``; a row raising :class:`MalformedSample` is counted per reason, logged, and the
    next row is served instead. Subclasses set ``records`` and ``skipped`` (a ``Counter``)."""

    records: list
    skipped: Counter

    def load_record(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            i = (index + attempt) % len(self.records)
            try:
                return self.load_record(i)
            except MalformedSample as exc:
                self._count_skip(i, exc)
        raise RuntimeError(f'{type(self).__name__}: {MAX_CONSECUTIVE_SKIPS} consecutive rows from index {index} '
                           f'are malformed ({dict(self.skipped)}); check the annotation files')

    def _count_skip(self, index: int, exc: Exception) -> None:
        reason = str(exc).split(':')[0][:80]
        self.skipped[reason] += 1
        total = sum(self.skipped.values())
        if total <= 10 or total % 100 == 0:
            print_log(f'{type(self).__name__}: skipped malformed row {index} ({exc}); {total} skipped so far: '
                      f'{dict(self.skipped)}', logger='current', level=30)


class OMGDatasetBase(SkippingDataset):
    """Args:
        tokenizer: the LLM tokenizer (module or config dict); the special tokens are added to it.
        image_size: network input side (1024 for the released models).
        max_length: token budget of the text (1692 finetune, 1792 pretrain).
        seed: seed of the per-row random choices (templates, sampled regions); fixed for the run as in the
            reference, so a row always yields the same conversation.
    """

    def __init__(self, tokenizer: Any, image_size: int = 1024, max_length: int = 1692, seed: int = 0) -> None:
        from omg_llava.models.special_tokens import add_special_tokens
        from omg_llava.registry import build_component
        self.tokenizer = build_component(tokenizer)
        add_special_tokens(self.tokenizer)
        self.image_size = image_size
        self.max_length = max_length
        self.seed = seed
        self.records = self.load_records()
        self.skipped: Counter[str] = Counter()

    # ------------------------------------------------------------------ subclass API
    def load_records(self) -> list[Any]:
        """Read the annotation files into one light record per sample."""
        raise NotImplementedError

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        """One record → a conversation (raise :class:`MalformedSample` for unusable rows)."""
        raise NotImplementedError

    def record_length(self, record: Any) -> int:
        """Approximate token count of a record, for length grouping (override when cheap to estimate)."""
        return 100

    def record_has_image(self, record: Any) -> bool:
        return True

    # ------------------------------------------------------------------ Dataset API
    @property
    def modality_length(self) -> list[int]:
        """Per index: approximate length, negative for text-only samples (xtuner's length-grouping convention)."""
        return [self.record_length(r) if self.record_has_image(r) else -self.record_length(r) for r in self.records]

    def load_record(self, index: int) -> dict:
        conversation = self.build_conversation(self.records[index], random.Random(self.seed * 1_000_003 + index))
        return encode_sample(conversation, self.tokenizer, self.image_size, self.max_length)
