"""``--resume`` of an mmengine checkpoint under torch's safe loader (no
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD): exactly the types mmengine checkpoints hold are allowed
(omg_llava.engine.checkpoint_types), nothing else."""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from omg_llava.engine.checkpoint_types import mmengine_checkpoint_types

HERE = Path(__file__).parent

#: the toy regression of test_atomic_checkpoint, checkpoint every 2 iterations, AdamW + two LR
#: schedulers
SCRIPT = '''
import sys
if sys.argv[3] == 'plugin':
    import omg_llava.engine  # what a training config's `from omg_llava.engine import ...` does
from mmengine.runner import Runner
from toy_regression import ToyRegression, ToyRegressionDataset

runner = Runner(
    model=dict(type=ToyRegression), work_dir=sys.argv[1], experiment_name='toy',
    train_dataloader=dict(dataset=dict(type=ToyRegressionDataset), batch_size=4, num_workers=0,
                          sampler=dict(type='DefaultSampler', shuffle=False),
                          collate_fn=dict(type='default_collate')),
    train_cfg=dict(by_epoch=False, max_iters=int(sys.argv[2])),
    optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=0.1)),
    param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
                     dict(type='CosineAnnealingLR', by_epoch=False, begin=2, end=4, eta_min=0.0)],
    default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
    resume=sys.argv[4] == 'resume', randomness=dict(seed=0), visualizer=dict(type='Visualizer'))
runner.train()
print('finished at iteration', runner.iter)
'''


def train(tmp_path: Path, max_iters: int, plugin: bool,
          resume: bool) -> subprocess.CompletedProcess:
    script = tmp_path / 'train_toy.py'
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'}
    env.update(PYTHONPATH=os.pathsep.join([str(HERE), env.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    command = [sys.executable, str(script), str(tmp_path / 'work'), str(max_iters),
               'plugin' if plugin else 'plain', 'resume' if resume else 'fresh']
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp('toy')
    done = train(tmp, 2, plugin=False, resume=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / 'work' / 'iter_2.pth'


@pytest.fixture
def no_safe_globals():
    """torch's allow-list emptied for the test (importing omg_llava.engine filled it for this
    process)."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def test_the_checkpoint_needs_exactly_these_types(checkpoint, no_safe_globals):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint))
    assert ('mmengine.logging.history_buffer.HistoryBuffer' in unsafe
            and 'builtins.getattr' in unsafe)
    with pytest.raises(pickle.UnpicklingError):  # what --resume met before
        torch.load(checkpoint, map_location='cpu', weights_only=True)
    with torch.serialization.safe_globals(mmengine_checkpoint_types()):
        state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    trusted = torch.load(checkpoint, map_location='cpu', weights_only=False)
    loss = state['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert loss.mean() == trusted['message_hub']['log_scalars']['train/loss'].mean()
    assert loss._statistics_methods['mean'] is HistoryBuffer.mean
    assert state['meta']['iter'] == 2 and torch.equal(state['state_dict']['linear.weight'],
                                                       trusted['state_dict']['linear.weight'])


@pytest.mark.parametrize('owner, name', [(HistoryBuffer, 'update'), (np.ndarray, 'tofile'),
                                         (HistoryBuffer, '__init__')])
def test_any_other_getattr_is_refused(owner, name, no_safe_globals):
    class Smuggler:
        def __reduce__(self):
            return getattr, (owner, name)

    buffer = io.BytesIO()
    torch.save({'meta': Smuggler()}, buffer)
    buffer.seek(0)
    with (
        torch.serialization.safe_globals(mmengine_checkpoint_types()),
        pytest.raises(pickle.UnpicklingError) as info,
    ):
        torch.load(buffer, weights_only=True)
    assert f'refusing getattr({owner.__name__}, {name!r})' in str(info.value)


def test_resume_without_the_environment_variable(checkpoint, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'iter_2.pth').write_bytes(checkpoint.read_bytes())
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    # mmengine alone: torch's safe loader refuses it
    plain = train(tmp_path, 4, plugin=False, resume=True)
    assert plain.returncode != 0 and 'Weights only load failed' in plain.stderr
    done = train(tmp_path, 4, plugin=True, resume=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'resumed from' in done.stderr.lower() or 'resumed from' in done.stdout.lower()
    assert 'finished at iteration 4' in done.stdout
    resumed = torch.load(work / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert resumed['meta']['iter'] == 4
