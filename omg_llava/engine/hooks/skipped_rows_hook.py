"""Report the training rows that could not be used, as one run total, and stop a run whose data is
mostly bad.

A bad row never stops a run (:class:`~omg_llava.datasets.base.SkippingDataset` skips it, counts it
per reason and logs its file and row). Each dataset's
:class:`~omg_llava.datasets.skip_counter.SkipCounter` already sums its DataLoader workers; this hook
adds up the ranks (every rank calls it at the same iterations) and logs the totals per dataset. When
more than ``max_skipped_fraction`` of the rows a dataset has drawn were skipped, the data or a path
in the config is wrong rather than a few rows, and every rank stops with the same message.
"""
from __future__ import annotations

from typing import Any

from mmengine.dist import all_gather_object, get_world_size
from mmengine.hooks import Hook

from omg_llava.datasets.base import SkippingDataset
from omg_llava.registry import HOOKS


def skipping_datasets(dataset: Any) -> list[SkippingDataset]:
    """The :class:`SkippingDataset` parts of a training dataset (itself, the parts of a mixture, a
    wrapped one)."""
    found, queue, seen = [], [dataset], set()
    while queue:
        part = queue.pop(0)
        if part is None or id(part) in seen:
            continue
        seen.add(id(part))
        if isinstance(part, SkippingDataset):
            found.append(part)
        queue += list(getattr(part, 'datasets', None) or ()) + [getattr(part, 'dataset', None)]
    return found


def run_totals(datasets: list[SkippingDataset]) -> list[dict]:
    """Per dataset: ``counts`` (reason → skipped rows) and ``served`` rows, summed over the
    DataLoader workers (shared counters) and the ranks (gathered: every rank must call this at the
    same point)."""
    local = [dict(counts=dict(d.skipped), served=d.skipped.served) for d in datasets]
    if get_world_size() == 1:
        return local
    totals = [dict(counts={}, served=0) for _ in datasets]
    for rank_totals in all_gather_object(local):
        for total, part in zip(totals, rank_totals):
            total['served'] += part['served']
            for reason, count in part['counts'].items():
                total['counts'][reason] = total['counts'].get(reason, 0) + count
    return totals


@HOOKS.register_module()
class SkippedRowsHook(Hook):
    """Every ``interval`` training iterations and at the end, log the skipped rows of each training
    dataset (run totals over workers and ranks, per reason) when they changed, and stop the run when
    a dataset skips too much.

    Args:
        interval: iterations between reports (all ranks gather the counts then).
        max_skipped_fraction: stop when more than this share of the rows a dataset drew could not be
            used...
        min_drawn: ...once it has drawn at least this many rows (a few bad rows early on are no
            verdict).
    """

    priority = 'BELOW_NORMAL'

    def __init__(self, interval: int = 50, max_skipped_fraction: float = 0.5,
                 min_drawn: int = 1000) -> None:
        if interval < 1 or not 0 < max_skipped_fraction <= 1 or min_drawn < 1:
            raise ValueError('SkippedRowsHook needs interval ≥ 1, 0 < max_skipped_fraction ≤ 1 '
                             f'and min_drawn ≥ 1; got {interval}, {max_skipped_fraction}, '
                             f'{min_drawn}')
        self.interval = interval
        self.max_skipped_fraction = max_skipped_fraction
        self.min_drawn = min_drawn
        self.datasets: list[SkippingDataset] = []
        self._last: list[dict] | None = None

    def before_train(self, runner) -> None:
        self.datasets = skipping_datasets(runner.train_dataloader.dataset)
        for dataset in self.datasets:
            errors = getattr(dataset, 'length_errors', None)
            if errors:
                runner.logger.warning(f'{self._name(dataset)}: {sum(errors.values())} rows have no '
                                      f'length estimate ({dict(errors)}); they are grouped with a '
                                      'default length')

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self.report(runner)

    def after_train(self, runner) -> None:
        self.report(runner, final=True)

    def report(self, runner, final: bool = False) -> list[dict]:
        """Log the run totals (when they changed, or at the end) and apply the limit; returns the
        totals."""
        totals = run_totals(self.datasets)
        if final or totals != self._last:
            lines = [f'{self._name(d)}: {t["served"]} rows served, {sum(t["counts"].values())} '
                     f'skipped {t["counts"]}' for d, t in zip(self.datasets, totals) if t['counts']
                     or final]
            if lines:
                runner.logger.info(
                    f'skipped training rows, run total over all workers and ranks'
                    f'{" (end of training)" if final else ""}:\n  ' + '\n  '.join(lines)
                )
        self._last = totals
        for dataset, total in zip(self.datasets, totals):
            self._check(dataset, total)
        return totals

    def _check(self, dataset: SkippingDataset, total: dict) -> None:
        skipped = sum(total['counts'].values())
        drawn = skipped + total['served']
        if drawn >= self.min_drawn and skipped > self.max_skipped_fraction * drawn:
            raise RuntimeError(
                f'{self._name(dataset)}: {skipped} of the {drawn} rows drawn so far could not be '
                f'used ({total["counts"]}), more than '
                f'max_skipped_fraction={self.max_skipped_fraction:g}: the data or the '
                'paths in the config are wrong (the warnings above name files and rows). Fix them, '
                'or raise SkippedRowsHook(max_skipped_fraction=...) in custom_hooks to go on with '
                'the usable rows')

    @staticmethod
    def _name(dataset: SkippingDataset) -> str:
        return (f'{type(dataset).__name__} ({dataset.source})' if dataset.source
                else type(dataset).__name__)


__all__ = ['SkippedRowsHook', 'skipping_datasets', 'run_totals']
