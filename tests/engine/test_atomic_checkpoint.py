"""AtomicCheckpointHook and omg_llava.utils.atomic: a kill or an error at any moment of a save
leaves a complete checkpoint named in ``last_checkpoint``, and ``--resume`` continues from it;
mmengine's own hook, killed while writing with ``max_keep_ckpts=1``, leaves nothing to resume (the
loss this hook fixes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.runner import Runner

import omg_llava.engine.hooks.atomic_checkpoint_hook as hook_module
from omg_llava.engine.hooks import AtomicCheckpointHook
from omg_llava.utils.atomic import (atomic_path, atomic_save, atomic_write_text, publish,
                                    remove_stale_temporaries, temporary_path)

from conftest import REPO_ROOT

HERE = Path(__file__).parent

#: A run of the toy regression that saves every 2 iterations keeping 1 checkpoint, and dies
#: (os._exit, as a SIGKILL: no cleanup, no exception handler) halfway through writing the checkpoint
#: of iteration KILL_AT.
SCRIPT = '''
import os, sys
from mmengine.fileio import LocalBackend
from mmengine.runner import Runner
from toy_regression import ToyRegression, ToyRegressionDataset
from omg_llava.engine import allow_mmengine_checkpoint_types
from omg_llava.engine.hooks import AtomicCheckpointHook

allow_mmengine_checkpoint_types()  # resume loads weights_only, with mmengine's own types allowed
hook, work_dir = sys.argv[1], sys.argv[2]
kill_at, max_iters, resume = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == 'resume'
put = LocalBackend.put

def dying_put(self, data, filepath):
    if f'iter_{kill_at}.' in os.path.basename(str(filepath)):
        with open(filepath, 'wb') as f:
            f.write(data[:len(data) // 2])
        os._exit(137)
    put(self, data, filepath)

LocalBackend.put = dying_put
runner = Runner(
    model=dict(type=ToyRegression), work_dir=work_dir, experiment_name=f'run_{os.getpid()}',
    train_dataloader=dict(dataset=dict(type=ToyRegressionDataset), batch_size=4, num_workers=0,
                          sampler=dict(type='DefaultSampler', shuffle=False),
                          collate_fn=dict(type='default_collate')),
    train_cfg=dict(by_epoch=False, max_iters=max_iters),
    optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
    default_hooks=dict(checkpoint=dict(
        type=AtomicCheckpointHook if hook == 'atomic' else 'CheckpointHook',
        interval=2, by_epoch=False, max_keep_ckpts=1)),
    resume=resume, randomness=dict(seed=0), visualizer=dict(type='Visualizer'))
runner.train()
print('finished at iteration', runner.iter)
'''


def run(tmp_path: Path, hook: str, kill_at: int, max_iters: int,
        resume: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / 'train_toy.py'
    script.write_text(SCRIPT)
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    command = [sys.executable, str(script), hook, str(tmp_path / 'work'), str(kill_at),
               str(max_iters), 'resume' if resume else 'fresh']
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=300)


def last_checkpoint(work: Path) -> Path:
    return Path((work / 'last_checkpoint').read_text().strip())


def load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


def test_mmengine_hook_killed_mid_save_leaves_nothing_to_resume(tmp_path):
    """The failure this hook exists for (issue 25 item 1), reproduced with mmengine's
    CheckpointHook."""
    killed = run(tmp_path, 'mmengine', kill_at=6, max_iters=8)
    assert killed.returncode == 137, killed.stderr[-2000:]
    work = tmp_path / 'work'
    # names iter_4.pth, deleted before iter_6.pth was written
    assert not last_checkpoint(work).exists()
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_6.pth']
    with pytest.raises(Exception):  # the half-written file is all that is left
        load(work / 'iter_6.pth')


def test_atomic_hook_killed_mid_save_keeps_the_last_checkpoint_and_resumes(tmp_path):
    killed = run(tmp_path, 'atomic', kill_at=6, max_iters=8)
    assert killed.returncode == 137, killed.stderr[-2000:]
    work = tmp_path / 'work'
    named = last_checkpoint(work)
    assert named == work / 'iter_4.pth'
    assert load(named)['meta']['iter'] == 4  # complete and loadable
    # iter_6 never took the name
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_4.pth']
    assert len(list(work.glob('.iter_6.pth.*.tmp'))) == 1  # the unfinished temporary

    resumed = run(tmp_path, 'atomic', kill_at=0, max_iters=8, resume=True)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    assert 'resumed epoch: 0, iter: 4' in log and 'finished at iteration 8' in log
    assert 'the unfinished save of an interrupted run' in log
    assert not list(work.glob('.*.tmp'))
    assert last_checkpoint(work) == work / 'iter_8.pth'
    # max_keep_ckpts=1 still holds
    assert sorted(p.name for p in work.glob('*.pth')) == ['iter_8.pth']
    assert load(work / 'iter_8.pth')['message_hub']['runtime_info']['keep_ckpt_ids'] == [8]


class Interrupted(Exception):
    pass


@pytest.mark.parametrize('stage', ['write', 'publish', 'last_checkpoint', 'delete'])
def test_an_error_at_any_step_of_a_save_leaves_a_loadable_last_checkpoint(tmp_path, monkeypatch,
                                                                          stage):
    """Each step of the save raises in turn (the third save, at iteration 6): what last_checkpoint
    names exists and loads, and it is the newest checkpoint whose save got past the rename."""
    from toy_regression import ToyRegression, ToyRegressionDataset
    targets = dict(write=(Runner, 'save_checkpoint'), publish=(hook_module, 'publish'),
                   last_checkpoint=(hook_module, 'atomic_write_text'),
                   delete=(AtomicCheckpointHook, '_remove'))
    owner, name = targets[stage]
    original = getattr(owner, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted(stage)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, staticmethod(failing) if stage == 'delete' else failing)
    work = tmp_path / 'work'
    runner = Runner(
        model=ToyRegression(), work_dir=str(work), experiment_name=f'{stage}_{tmp_path.name}',
        train_dataloader=dict(dataset=ToyRegressionDataset(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=8),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(type=AtomicCheckpointHook, interval=2, by_epoch=False,
                                           max_keep_ckpts=1), logger=None),
        randomness=dict(seed=0))
    with pytest.raises(Interrupted):
        runner.train()
    # the third deletion comes in iteration 8's save, after its rename and last_checkpoint; the
    # other steps fail in iteration 6's save
    expected = {'write': 4, 'publish': 4, 'last_checkpoint': 4, 'delete': 8}[stage]
    named = last_checkpoint(work)
    assert named == work / f'iter_{expected}.pth'
    assert load(named)['meta']['iter'] == expected
    assert not list(work.glob('.*.tmp'))  # an error (unlike a kill) cleans its temporary up


def test_atomic_helpers_publish_whole_files_only(tmp_path):
    target = tmp_path / 'weights.pth'
    atomic_save({'w': torch.arange(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)['w'], torch.arange(3))

    with pytest.raises(Interrupted), atomic_path(target) as temporary:
        Path(temporary).write_bytes(b'half a file')
        raise Interrupted
    # old content kept
    assert torch.equal(torch.load(target, weights_only=True)['w'], torch.arange(3))
    assert os.listdir(tmp_path) == ['weights.pth']  # temporary gone

    atomic_write_text(tmp_path / 'note.txt', 'iter_8.pth')
    assert (tmp_path / 'note.txt').read_text() == 'iter_8.pth'
    # same folder: the rename stays on one file system
    assert Path(temporary_path(target)).parent == tmp_path


def test_stale_temporaries_of_dead_writers_only_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True)
    stale = tmp_path / f'.iter_6.pth.{int(dead.stdout)}.tmp'
    stale.write_bytes(b'x')
    # this process's own temporary: still being written
    live = Path(temporary_path(tmp_path / 'iter_8.pth'))
    live.write_bytes(b'y')
    keep = tmp_path / 'iter_4.pth'
    keep.write_bytes(b'z')
    assert remove_stale_temporaries(tmp_path) == [str(stale)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, keep.name])


CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


@pytest.mark.parametrize('config', CONFIGS)
def test_every_config_saves_atomically_and_reports_skipped_rows(config):
    from mmengine.config import Config

    from omg_llava.engine.hooks import SkippedRowsHook
    cfg = Config.fromfile(REPO_ROOT / config)
    assert cfg.default_hooks.checkpoint['type'] is AtomicCheckpointHook
    assert any(hook['type'] is SkippedRowsHook for hook in cfg.custom_hooks)


def test_a_checkpoint_folder_is_published_whole(tmp_path):
    """DeepSpeed saves a folder per checkpoint (written by every rank under the main process's
    temporary name)."""
    target = tmp_path / 'iter_6.pth'
    for content in ('first', 'second'):  # the second publish replaces a folder already there
        temporary = Path(temporary_path(target, pid=12345))
        (temporary / 'checkpoint').mkdir(parents=True)
        (temporary / 'checkpoint' / 'mp_rank_00_model_states.pt').write_text(content)
        publish(temporary, target)
        assert (target / 'checkpoint' / 'mp_rank_00_model_states.pt').read_text() == content
    assert os.listdir(tmp_path) == ['iter_6.pth']
