"""Run-wide counts of the rows a dataset could not use, shared by all DataLoader workers of a
process.

A dataset is copied into each DataLoader worker (forked, or pickled into a spawned one), so a plain
``Counter`` on the dataset counts each worker alone and the process that logs sees none of it.
:class:`SkipCounter` keeps the counts in shared memory created with the dataset: every worker adds
to the same numbers, and any of them (or the main process) reads the run total of its process tree.
Ranks of a distributed run are separate trees; the :class:`~omg_llava.engine.hooks.SkippedRowsHook`
sums them at log time.

Counts are keyed by reason: the stable category of a
:class:`~omg_llava.datasets.sample.MalformedSample` (``'image not found'``) or, for any other
exception, its type name (``'TypeError'``), never by a path or coordinates, so counts of one reason
add up.
"""
from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Iterator, Mapping
from multiprocessing.context import get_spawning_popen

from .sample import MalformedSample

NAME_BYTES = 64  # longest reason kept (UTF-8 bytes); longer ones are cut
MAX_REASONS = 64  # distinct reasons counted; further ones are counted under OTHER_REASONS
OTHER_REASONS = 'other reasons'


def skip_reason(exc: BaseException) -> str:
    """The key a failure is counted under: a :class:`MalformedSample`'s category (its message up to
    the first colon), else the exception's type name."""
    if isinstance(exc, MalformedSample):
        return str(exc).split(':')[0].strip()[:NAME_BYTES] or type(exc).__name__
    return type(exc).__name__


class SkipCounter(Mapping):
    """``{reason: count}`` of skipped rows, plus the number of rows served, in memory shared with
    the DataLoader workers (created in the process that builds the dataset, before the workers
    start).

    It reads like a dict (``counter['image not found']``, ``dict(counter)``, ``counter == {...}``,
    ``not counter`` when nothing was skipped). Pickled outside a process start (``copy.deepcopy``, a
    cache), it becomes an independent counter holding the same numbers.

    Args:
        max_reasons: distinct reasons kept apart; once full, new reasons are counted under ``'other
            reasons'``.
    """

    def __init__(self, max_reasons: int = MAX_REASONS) -> None:
        # a lock of the spawn context also works in forked workers (inherited); a fork-context one
        # cannot be handed to spawned or forkserver workers
        context = multiprocessing.get_context('spawn')
        self._lock = context.Lock()
        self._names = context.RawArray(ctypes.c_char, max_reasons * NAME_BYTES)
        self._counts = context.RawArray(ctypes.c_int64, max_reasons)
        self._served = context.RawValue(ctypes.c_int64, 0)
        self._max_reasons = max_reasons

    # ------------------------------------------------------------------ counting
    def add(self, reason: str) -> tuple[int, int]:
        """Count one skipped row under ``reason``; returns (count of that reason, total skipped),
        both run-wide."""
        name = reason.encode('utf-8', 'replace')[:NAME_BYTES].decode('utf-8', 'ignore') or '?'
        with self._lock:
            slot = self._slot(name)
            self._counts[slot] += 1
            return self._counts[slot], sum(self._counts)

    def add_served(self) -> None:
        """Count one row served."""
        with self._lock:
            self._served.value += 1

    @property
    def served(self) -> int:
        """Rows served so far (run-wide)."""
        return self._served.value

    @property
    def total(self) -> int:
        """Rows skipped so far (run-wide)."""
        return sum(self._counts)

    def _slot(self, name: str) -> int:
        """The slot of ``name``, allocated when new; the last slot collects the reasons that find no
        free one (the lock is held)."""
        for slot in range(self._max_reasons - 1):
            stored = self._name(slot)
            if stored == name:
                return slot
            if not stored:
                self._set_name(slot, name)
                return slot
        last = self._max_reasons - 1
        self._set_name(last, OTHER_REASONS)
        return last

    def _set_name(self, slot: int, name: str) -> None:
        self._names[slot * NAME_BYTES : (slot + 1) * NAME_BYTES] = name.encode('utf-8').ljust(
            NAME_BYTES, b'\0'
        )

    def _name(self, slot: int) -> str:
        return (
            bytes(self._names[slot * NAME_BYTES : (slot + 1) * NAME_BYTES])
            .rstrip(b'\0')
            .decode('utf-8', 'ignore')
        )

    # ------------------------------------------------------------------ Mapping
    def __getitem__(self, reason: str) -> int:
        for slot in range(self._max_reasons):
            if self._name(slot) == reason and self._counts[slot]:
                return self._counts[slot]
        raise KeyError(reason)

    def __iter__(self) -> Iterator[str]:
        return (self._name(slot) for slot in range(self._max_reasons) if self._counts[slot])

    def __len__(self) -> int:
        return sum(1 for slot in range(self._max_reasons) if self._counts[slot])

    def __repr__(self) -> str:
        return f'SkipCounter({dict(self)}, served={self.served})'

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        # starting a worker: hand over the shared memory itself
        if get_spawning_popen() is not None:
            return dict(shared=(self._lock, self._names, self._counts, self._served,
                                self._max_reasons))
        return dict(counts=dict(self), served=self.served, max_reasons=self._max_reasons)

    def __setstate__(self, state: dict) -> None:
        if 'shared' in state:
            self._lock, self._names, self._counts, self._served, self._max_reasons = state['shared']
            return
        self.__init__(state['max_reasons'])
        for reason, count in state['counts'].items():
            slot = self._slot(reason)
            self._counts[slot] += count
        self._served.value = state['served']


__all__ = ['SkipCounter', 'skip_reason', 'OTHER_REASONS']
