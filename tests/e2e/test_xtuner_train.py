"""`xtuner train` end to end on CPU with the tiny configs and the tiny real data set: the loss
falls, checkpoints are written, `--resume` continues, the checkpoint converts to the released layout
and the chat loads it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TINY_CONFIG, load_project_module, load_tool

TINY_PRETRAIN_CONFIG = REPO_ROOT / 'configs' / 'tiny' / 'omg_llava_tiny_pretrain.py'
XTUNER = Path(sys.executable).parent / 'xtuner'


@pytest.fixture(scope='module')
def workspace(tmp_path_factory) -> Path:
    """A directory holding ./data/tiny_omg_llava, where the tiny configs look for their data."""
    root = tmp_path_factory.mktemp('tiny_train')
    load_project_module('build_tiny_data').build_tiny_data(str(root / 'data' / 'tiny_omg_llava'))
    return root


def train(workspace: Path, config: Path, work_dir: str, *extra: str, env: dict | None = None,
          entry_point: bool = False) -> subprocess.CompletedProcess:
    cmd = [str(XTUNER), 'train'] if entry_point else [sys.executable, '-m', 'xtuner.tools.train']
    return subprocess.run(cmd + [str(config), '--work-dir', work_dir, *extra], cwd=workspace,
                          capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, **(env or {})))


def logged(work_dir: Path, key: str) -> list[float]:
    """Values of ``key`` in the runs' scalars.json, in order."""
    values = []
    for scalars in sorted(work_dir.glob('*/vis_data/scalars.json')):
        values += [json.loads(line)[key] for line in scalars.read_text().splitlines()
                   if key in line]
    return values


def test_finetune_trains_saves_resumes_and_converts(workspace):
    run = train(workspace, TINY_CONFIG, 'work')
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    work = workspace / 'work'
    lm = logged(work, 'loss_lm')
    assert len(lm) == 8 and sum(lm[-3:]) / 3 < lm[0] - 0.5, lm  # 40 iterations, logged every 5
    assert logged(work, 'loss_dice') and logged(work, 'loss_mask')  # [SEG] masks were trained
    assert (work / 'iter_20.pth').is_file() and (work / 'iter_40.pth').is_file()
    assert (work / 'eval_chat' / 'iter_40' / 'answers.json').is_file()  # the evaluate-chat hook ran
    assert 'train dataset: 94 samples' in run.stdout + run.stderr  # the dataset-info hook

    # --resume continues from iteration 20 under torch's safe loader: omg_llava.engine allows
    # exactly the types mmengine's checkpoints hold (docs/training.md), so no
    # TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    resumed = train(workspace, TINY_CONFIG, 'work', '--resume', 'work/iter_20.pth')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed epoch: 0, iter: 20' in resumed.stdout + resumed.stderr
    assert 'Iter(train) [ 5/40]' not in resumed.stdout + resumed.stderr  # did not start over

    # training output → released layout → chat
    out = workspace / 'tiny_finetune.pth'
    assert load_tool('convert_to_pth').main([str(TINY_CONFIG), str(work / 'iter_40.pth'),
                                             '--save-path', str(out), '--trust-checkpoint']) == 0
    from omg_llava.inference.chat import OMGLLaVAChat
    chat, notes = OMGLLaVAChat.from_config(str(TINY_CONFIG), pth=str(out))
    assert any(str(out) in n for n in notes)
    chat.set_image(workspace / 'data' / 'tiny_omg_llava' / 'test.jpg')
    assert chat.ask('Please segment the person in this image.', max_new_tokens=4).token_ids


def test_pretrain_trains_the_alignment(workspace):
    run = train(workspace, TINY_PRETRAIN_CONFIG, 'work_pretrain', '--cfg-options',
                'train_cfg.max_iters=6',
                'default_hooks.logger.interval=2', 'default_hooks.checkpoint.interval=6')
    assert run.returncode == 0, run.stderr[-3000:]
    proj = logged(workspace / 'work_pretrain', 'loss_proj')
    assert len(proj) == 3 and proj[-1] < proj[0], proj
    assert (workspace / 'work_pretrain' / 'iter_6.pth').is_file()


def test_xtuner_entry_point_trains_too(workspace):
    """`xtuner train` (whose exit status is always 0, hence the file checks). The entry point starts
    the `python` found on PATH, so the environment must be activated, as a user's shell would be."""
    activated = {'PATH': f'{XTUNER.parent}{os.pathsep}{os.environ.get("PATH", "")}'}
    train(workspace, TINY_CONFIG, 'work_cli', '--cfg-options', 'train_cfg.max_iters=2',
          'default_hooks.checkpoint.interval=2', env=activated, entry_point=True)
    assert (workspace / 'work_cli' / 'iter_2.pth').is_file()
