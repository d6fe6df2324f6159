"""Base class of every OMG-LLaVA training dataset: lazy records, shared encoding, skipping of bad
rows.

A subclass reads its annotation files into a list of light records (:meth:`load_records`) and turns
one record into a :class:`~omg_llava.datasets.sample.GroundedConversation`
(:meth:`build_conversation`). A row that cannot be used, for whatever reason (a
:class:`MalformedSample` the dataset raises, or any other error: a number where a string belongs, a
missing key, a text the tokenizer rejects, an image PIL refuses), is skipped: the next row is served
instead, the skip is counted per reason in a run-wide :class:`~.skip_counter.SkipCounter` (all
DataLoader workers add to one total) and logged with the file and row, and a run never stops on one
bad annotation. The length estimate used for length grouping
(:attr:`OMGDatasetBase.modality_length`) is guarded the same way.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Any

from mmengine.logging import MMLogger, print_log
from torch.utils.data import Dataset

from .encoding import encode_sample
from .sample import GroundedConversation, MalformedSample
from .skip_counter import SkipCounter, skip_reason

MAX_CONSECUTIVE_SKIPS = 100  # rows one draw may walk past before the dataset is declared unusable
# every skip is logged up to this run total, then every LOG_EVERY-th and each new reason's first
LOGGED_SKIPS = 10
LOG_EVERY = 100
DEFAULT_LENGTH = 100  # length estimate of a row whose own estimate fails
CHARS_PER_TOKEN = 4  # rough text-length estimate for length grouping
# fields that name a row in messages
_LABEL_KEYS = ('id', 'image_id', 'file_name', 'img_file_name', 'image')


def read_json_list(path: str) -> list:
    """A JSON file holding a list (one entry per sample), with a clear error for anything else."""
    import json
    with open(path, encoding='utf-8') as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f'{path}: expected a JSON list of entries, got {type(records).__name__}')
    return records


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One line about a row's failure: a :class:`MalformedSample`'s message, else ``Type:
    message``."""
    text = str(exc) if isinstance(exc, MalformedSample) else f'{type(exc).__name__}: {exc}'
    text = ' '.join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


class SkippingDataset(Dataset):
    """Serves ``load_record(i)``; a row raising any ``Exception`` is counted per reason (run-wide,
    in ``skipped``), logged with its file and row, and the next row is served instead. A draw that
    walks past :data:`MAX_CONSECUTIVE_SKIPS` unusable rows in a row (or every row of a smaller
    dataset) stops the run: the data, not single rows, is broken then.

    Subclasses call ``super().__init__()`` (it creates the shared counter, before any DataLoader
    worker starts), set ``records`` and may name their annotation file in :attr:`source`.
    """

    records: list
    skipped: SkipCounter

    def __init__(self) -> None:
        self.skipped = SkipCounter()

    @property
    def source(self) -> str:
        """The annotation file the records come from (for messages); empty when there is no single
        one."""
        return ''

    def load_record(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        attempts = min(MAX_CONSECUTIVE_SKIPS, len(self.records))
        last_error: Exception | None = None
        for attempt in range(attempts):
            i = (index + attempt) % len(self.records)
            try:
                item = self.load_record(i)
            except Exception as exc:  # any per-row failure: a bad row never stops a run
                self._count_skip(i, exc)
                last_error = exc
                continue
            self.skipped.add_served()
            return item
        rows = f'all {attempts} rows' if attempts == len(self.records) else \
            f'{attempts} consecutive rows from {self.describe_row(index)}'
        where = f' ({self.source})' if self.source else ''
        raise RuntimeError(
            f'{type(self).__name__}: {rows} could not be used (run total: {self.skipped.total} '
            f'skipped, {self.skipped.served} served; {dict(self.skipped)}; last: '
            f'{describe_error(last_error)}); the data or the paths in the config{where} are wrong: '
            'check them') from last_error

    def describe_row(self, index: int) -> str:
        """``row 12 (id '000000033471') of /data/llava.json``: the index, a field naming the record,
        the file."""
        record = self.records[index] if 0 <= index < len(self.records) else None
        if isinstance(record, tuple) and record:  # (entry, its annotations), e.g. COCO instances
            record = record[0]
        label = ''
        if isinstance(record, dict):
            key = next((k for k in _LABEL_KEYS if k in record), None)
            label = f' ({key} {str(record[key])[:80]!r})' if key else ''
        elif isinstance(record, (str, int)):
            label = f' ({str(record)[:80]!r})'
        return f'row {index}{label}' + (f' of {self.source}' if self.source else '')

    def _count_skip(self, index: int, exc: Exception) -> None:
        reason = skip_reason(exc)
        count, total = self.skipped.add(reason)
        # the first of each reason is always logged
        if count > 1 and total > LOGGED_SKIPS and total % LOG_EVERY:
            return
        message = (f'{type(self).__name__}: skipped {self.describe_row(index)}: '
                   f'{describe_error(exc)}; run total {total} skipped: {dict(self.skipped)}')
        # first of its kind: show where
        unexpected = not isinstance(exc, MalformedSample) and count == 1
        MMLogger.get_current_instance().warning(message, exc_info=exc if unexpected else None)


class OMGDatasetBase(SkippingDataset):
    """Args:
        tokenizer: the LLM tokenizer (module or config dict); the special tokens are added to it.
        image_size: network input side (1024 for the released models).
        max_length: token budget of the text (1692 finetune, 1792 pretrain).
        seed: seed of the per-row random choices (templates, sampled regions); fixed for the run as
            in the reference, so a row always yields the same conversation.
    """

    def __init__(self, tokenizer: Any, image_size: int = 1024, max_length: int = 1692,
                 seed: int = 0) -> None:
        from omg_llava.models.special_tokens import add_special_tokens
        from omg_llava.registry import build_component
        self.tokenizer = build_component(tokenizer)
        add_special_tokens(self.tokenizer)
        self.image_size = image_size
        self.max_length = max_length
        self.seed = seed
        super().__init__()
        self.records = self.load_records()
        self.length_errors: Counter[str] = Counter()
        self._modality_length: list[int] | None = None

    # ------------------------------------------------------------------ subclass API
    def load_records(self) -> list[Any]:
        """Read the annotation files into one light record per sample."""
        raise NotImplementedError

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        """One record → a conversation (raise :class:`MalformedSample` for unusable rows)."""
        raise NotImplementedError

    def record_length(self, record: Any) -> int:
        """Approximate token count of a record, for length grouping (override when cheap to
        estimate)."""
        return 100

    def record_has_image(self, record: Any) -> bool:
        return True

    # ------------------------------------------------------------------ Dataset API
    @property
    def modality_length(self) -> list[int]:
        """Per index: approximate length, negative for text-only samples (xtuner's length-grouping
        convention).

        Computed once. A record whose estimate raises gets :data:`DEFAULT_LENGTH` (with an image),
        is counted per exception type in ``length_errors`` and logged with its file and row; it is
        skipped when drawn if it is unusable.
        """
        if self._modality_length is None:
            self._modality_length = [self._signed_length(i, record)
                                     for i, record in enumerate(self.records)]
        return self._modality_length

    def _signed_length(self, index: int, record: Any) -> int:
        try:
            length = int(self.record_length(record))
            return length if self.record_has_image(record) else -length
        except Exception as exc:  # a malformed row must not stop the run before it starts
            reason = type(exc).__name__
            self.length_errors[reason] += 1
            total = sum(self.length_errors.values())
            if total <= LOGGED_SKIPS or total % LOG_EVERY == 0:
                print_log(f'{type(self).__name__}: no length estimate for '
                          f'{self.describe_row(index)} ({describe_error(exc)}); grouped as '
                          f'{DEFAULT_LENGTH} tokens. {total} such rows so far: '
                          f'{dict(self.length_errors)}', logger='current', level=30)
            return DEFAULT_LENGTH

    def load_record(self, index: int) -> dict:
        conversation = self.build_conversation(self.records[index],
                                               random.Random(self.seed * 1_000_003 + index))
        return encode_sample(conversation, self.tokenizer, self.image_size, self.max_length)
