"""CPUDataParallelRunner: `xtuner train` data-parallel over 2 CPU processes (torchrun + gloo) trains
exactly what one process trains on the same batches; a non-gloo backend is refused with the fix
named."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from omg_llava.engine import CPUDataParallelRunner

from conftest import free_port

HERE = Path(__file__).parent

CONFIG = '''
from omg_llava.engine import CPUDataParallelRunner, TrainLoop
from toy_regression import ToyRegression, ToyRegressionDataset

runner_type = CPUDataParallelRunner
model = dict(type=ToyRegression)
train_dataloader = dict(dataset=dict(type=ToyRegressionDataset), batch_size=8, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=False),
                        collate_fn=dict(type='default_collate'))
train_cfg = dict(type=TrainLoop, max_iters=6)
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=6, by_epoch=False),
                     logger=None, param_scheduler=None)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
visualizer = None
'''


def train(tmp_path: Path, name: str, processes: int, *options: str) -> subprocess.CompletedProcess:
    config = tmp_path / 'toy_config.py'
    config.write_text(CONFIG)
    launcher = [] if processes == 1 else ['-m', 'torch.distributed.run', '--standalone',
                                           f'--nproc_per_node={processes}']
    tail = [] if processes == 1 else ['--launcher', 'pytorch']
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    command = [sys.executable, *launcher, '-m', 'xtuner.tools.train', str(config), *tail,
               '--work-dir', str(tmp_path / name), *options]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)


def trained_weights(work_dir: Path) -> dict:
    state = torch.load(work_dir / 'iter_6.pth', map_location='cpu',
                       weights_only=False)['state_dict']
    return {k.removeprefix('module.'): v for k, v in state.items()}


def test_two_cpu_processes_train_what_one_process_trains(tmp_path):
    single = train(tmp_path, 'single', 1)
    assert single.returncode == 0, single.stderr[-3000:]
    # batch 8 in one process == batch 4 in each of 2 processes (DefaultSampler gives rank r the
    # samples r::2)
    parallel = train(tmp_path, 'parallel', 2, '--cfg-options', 'train_dataloader.batch_size=4')
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert 'Distributed training: True' in parallel.stdout + parallel.stderr
    one, two = trained_weights(tmp_path / 'single'), trained_weights(tmp_path / 'parallel')
    assert one.keys() == two.keys() == {'linear.weight', 'linear.bias'}
    assert one['linear.weight'].abs().sum() > 0.1  # it trained (from zeros)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)


def test_a_gpu_backend_on_cpu_is_refused_with_the_fix(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('the refusal concerns machines without CUDA')
    result = train(tmp_path, 'nccl', 2, '--cfg-options', 'env_cfg.dist_cfg.backend=nccl')
    assert result.returncode != 0
    assert 'env_cfg.dist_cfg.backend="gloo"' in result.stdout + result.stderr


def test_the_runner_closes_the_process_group_it_opened(tmp_path, monkeypatch):
    """A process group left to the interpreter's exit once aborted a finished stage (SIGABRT in
    gloo's teardown); the runner destroys the one it opened when training ends."""
    if torch.cuda.is_available():
        pytest.skip('the runner opens the group itself only without CUDA')
    for key, value in dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), RANK='0',
                           LOCAL_RANK='0', WORLD_SIZE='1').items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(HERE))
    config = tmp_path / 'toy_config.py'
    config.write_text(CONFIG)
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(tmp_path / 'in_process')
    cfg.launcher = 'pytorch'
    runner = CPUDataParallelRunner.from_cfg(cfg)
    try:
        assert runner.owns_process_group and torch.distributed.is_initialized()
        runner.train()
        assert not torch.distributed.is_initialized()
        assert (tmp_path / 'in_process' / 'iter_6.pth').exists()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
