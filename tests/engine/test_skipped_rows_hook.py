"""SkippedRowsHook: a run with unusable rows trains to the end and reports one total over DataLoader
workers and ranks; a dataset whose rows mostly fail stops the run with the fix named."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch.distributed as torch_dist
import torch.multiprocessing as torch_mp
from mmengine.runner import Runner

from omg_llava.datasets import CombinedDataset
from omg_llava.engine.hooks import SkippedRowsHook
from omg_llava.engine.hooks.skipped_rows_hook import run_totals, skipping_datasets

from flaky_regression import FlakyRegressionDataset
from toy_regression import ToyRegression


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return '\n'.join(self.lines)


def train(tmp_path: Path, name: str, dataset, hook: SkippedRowsHook, num_workers: int,
          max_iters: int):
    runner = Runner(
        model=ToyRegression(), work_dir=str(tmp_path / name),
        experiment_name=f'{name}_{tmp_path.name}',
        train_dataloader=dict(dataset=dataset, batch_size=4, num_workers=num_workers,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=None), custom_hooks=[hook], randomness=dict(seed=0))
    lines = Lines()
    runner.logger.addHandler(lines)
    return runner, lines


def test_a_run_with_bad_rows_finishes_and_reports_the_total_of_its_workers(tmp_path):
    runner, lines = train(tmp_path, 'flaky', FlakyRegressionDataset(bad=(1, 6, 11)),
                          SkippedRowsHook(interval=2), num_workers=2, max_iters=4)
    runner.train()
    assert runner.iter == 4
    # the runner's (deep) copy of the dataset, in this process
    counter = runner.train_dataloader.dataset.skipped
    # counted in the 2 workers
    assert counter == {'bad sample': 2, 'TypeError': 1} and counter.served == 16
    assert (
        'skipped training rows, run total over all workers and ranks (end of training):\n'
        in lines.text
    )
    assert 'FlakyRegressionDataset (toy.json): 16 rows served, 3 skipped' in lines.text


def test_mostly_bad_data_stops_the_run_with_the_fix_named(tmp_path):
    dataset = FlakyRegressionDataset(bad=[i for i in range(16) if i % 4 != 3])
    hook = SkippedRowsHook(interval=1, max_skipped_fraction=0.5, min_drawn=8)
    runner, _ = train(tmp_path, 'broken', dataset, hook, num_workers=0, max_iters=4)
    # the first batch: rows 0-2 walk to row 3, so 6 rows skipped for 4 served
    with pytest.raises(RuntimeError,
                       match=r'FlakyRegressionDataset \(toy.json\): 6 of the 10 rows drawn so far '
                                           r'could not be used .* more than '
                                           r'max_skipped_fraction=0.5: the data or the paths in '
                                           r'the config are wrong'):
        runner.train()
    assert runner.iter == 0  # stopped by the report that follows the first iteration


def test_the_parts_of_a_mixture_are_found():
    parts = [FlakyRegressionDataset(), FlakyRegressionDataset(bad=())]

    class Mixture(CombinedDataset):
        def __init__(self) -> None:  # the index map is not needed here
            self.datasets = parts

    assert skipping_datasets(Mixture()) == parts


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    torch_dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank,
                                  world_size=2)
    dataset = FlakyRegressionDataset(bad=(1, 6, 11))
    for index in range(rank, 16, 2):  # what DefaultSampler gives each rank
        dataset[index]
    totals = run_totals([dataset])
    Path(out_dir, f'{rank}.json').write_text(json.dumps(dict(local=dict(dataset.skipped),
                                                             totals=totals)))
    torch_dist.destroy_process_group()


def test_ranks_are_summed_at_log_time(tmp_path):
    torch_mp.start_processes(_rank, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2,
                             start_method='fork')
    zero, one = (json.loads((tmp_path / f'{rank}.json').read_text()) for rank in (0, 1))
    assert zero['local'] == {'TypeError': 1}  # rank 0 drew 0, 2, ..., 14 and met row 6
    assert one['local'] == {'bad sample': 2}  # rank 1 drew 1, 3, ..., 15 and met rows 1 and 11
    assert zero['totals'] == one['totals'] == [dict(counts={'TypeError': 1, 'bad sample': 2},
                                                    served=16)]
