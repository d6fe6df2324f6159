"""Training checkpoint → released-format .pth: mmengine files, a real DeepSpeed ZeRO-2 folder, flat
dicts."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from torch import nn

from omg_llava.checkpoint import CheckpointError, CheckpointMismatchError
from omg_llava.engine.convert import (DEEPSPEED_FOLDER, MMENGINE_FILE, checkpoint_stage,
                                      convert_checkpoint, released_state_dict)
from omg_llava.models.released_weights import load_released_checkpoint
from omg_llava.registry import build_component

from conftest import REPO_ROOT, TINY_CONFIG, free_port, load_tool

ZERO_CHECKPOINT_SCRIPT = Path(__file__).with_name('make_zero_checkpoint.py')


@pytest.fixture(scope='module')
def tiny_cfg() -> Config:
    return Config.fromfile(str(TINY_CONFIG))


def build_tiny(tiny_cfg: Config, seed: int, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_component({**tiny_cfg.model, **overrides})


@pytest.fixture(scope='module')
def trained_state(tiny_cfg) -> dict[str, torch.Tensor]:
    """Every tensor of a tiny model (what mmengine's checkpoint holds), trainable ones changed at
    random."""
    model = build_tiny(tiny_cfg, seed=3)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    generator = torch.Generator().manual_seed(1)
    return {k: v + torch.randn(v.shape, generator=generator) if k in trainable else v.clone()
            for k, v in nn.Module.state_dict(model).items()}


@pytest.fixture(scope='module')
def released_keys(tiny_cfg) -> list[str]:
    return list(build_tiny(tiny_cfg, seed=0).state_dict())


def test_mmengine_checkpoint_converts_without_trust_other_pickles_need_it(tiny_cfg, trained_state,
                                                                          released_keys,
                                                                         tmp_path, capsys):
    """An mmengine checkpoint (HistoryBuffer in its message hub) loads with the safe unpickler and
    the types omg_llava.engine allows; a file holding any other Python object still needs
    --trust-checkpoint."""
    import argparse
    out = tmp_path / 'released.pth'
    convert = load_tool('convert_to_pth').main
    foreign = tmp_path / 'foreign.pth'
    torch.save({'state_dict': trained_state, 'meta': {'args': argparse.Namespace(lr=1.0)}}, foreign)
    assert convert([str(TINY_CONFIG), str(foreign), '--save-path', str(out)]) == 2
    error = capsys.readouterr().err
    assert 'untrusted input' in error and '--trust-checkpoint' in error and not out.exists()

    path = tmp_path / 'iter_100.pth'
    history = HistoryBuffer()
    history.update(1.5)
    torch.save({'state_dict': trained_state, 'meta': {'iter': 100, 'seed': 0},
                'message_hub': {'log_scalars': {'train/loss': history}}}, path)
    assert convert([str(TINY_CONFIG), str(path), '--save-path', str(out)]) == 0
    summary = capsys.readouterr().out
    assert f'({MMENGINE_FILE})' in summary and '39 tensors, finetune (LoRA) checkpoint' in summary
    assert (f'{len(trained_state) - 39} checkpoint tensors outside the released key set were '
            'dropped') in summary

    saved = torch.load(out, weights_only=True)
    assert list(saved) == released_keys and len(saved) == 39
    fresh = build_tiny(tiny_cfg, seed=5)
    report = load_released_checkpoint(fresh, out)
    assert report.ok and sorted(report.loaded) == sorted(released_keys)
    own = nn.Module.state_dict(fresh)
    for key in released_keys:
        assert torch.equal(own[key], trained_state[key]), key


def test_deepspeed_zero2_folder(tmp_path):
    """A real ZeRO-2 checkpoint written by DeepSpeed (CPU, gloo, one process) in a subprocess."""
    env = dict(os.environ, DS_ACCELERATOR='cpu', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()), RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
               LOCAL_SIZE='1', CUDA_VISIBLE_DEVICES='')
    expected_path = tmp_path / 'expected.pt'
    work_dir = tmp_path / 'work_dir'
    run = subprocess.run([sys.executable, str(ZERO_CHECKPOINT_SCRIPT), str(TINY_CONFIG),
                          str(work_dir),
                          str(expected_path)], env=env, cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    folder = work_dir / 'iter_1.pth'
    assert (folder / 'mp_rank_00_model_states.pt').is_file()
    assert len(list(folder.glob('*_optim_states.pt'))) == 1

    with pytest.raises(CheckpointError, match='DeepSpeed checkpoint folder.*--trust-checkpoint'):
        convert_checkpoint(str(TINY_CONFIG), folder, tmp_path / 'out.pth')
    with pytest.raises(CheckpointError, match='not a DeepSpeed checkpoint'):
        convert_checkpoint(str(TINY_CONFIG), work_dir, tmp_path / 'out.pth', trust_checkpoint=True)

    summary = convert_checkpoint(str(TINY_CONFIG), folder, tmp_path / 'out.pth',
                                 trust_checkpoint=True)
    assert summary.container == DEEPSPEED_FOLDER and summary.stage == 'finetune (LoRA)'
    assert summary.kept_from_model == [] and summary.dropped == 0
    saved, expected = torch.load(tmp_path / 'out.pth', weights_only=True), torch.load(expected_path)
    assert list(saved) == list(expected) and len(saved) == 39
    for key in saved:
        assert torch.equal(saved[key], expected[key]), key

    # DeepSpeed's own layout: a `latest` file names the tag
    (work_dir / 'latest').write_text('iter_1.pth')
    convert_checkpoint(str(TINY_CONFIG), work_dir, tmp_path / 'out2.pth', trust_checkpoint=True)
    assert all(torch.equal(v, expected[k]) for k, v in torch.load(tmp_path / 'out2.pth').items())


def test_missing_released_key_is_an_error_naming_it(trained_state, released_keys, tmp_path, capsys):
    flat = {k: trained_state[k] for k in released_keys if k != 'projector.model.query_proj.weight'}
    path = tmp_path / 'flat.pth'
    torch.save(flat, path)
    with pytest.raises(CheckpointMismatchError,
                       match=r'missing from the file \(1\):\n\s+projector\.model\.query_proj'):
        convert_checkpoint(str(TINY_CONFIG), path, tmp_path / 'out.pth')
    assert load_tool('convert_to_pth').main([str(TINY_CONFIG), str(path), '--save-path',
                                             str(tmp_path / 'o.pth')]) == 2
    assert 'projector.model.query_proj.weight' in capsys.readouterr().err

    pretrain_like = {k: v for k, v in flat.items() if k.startswith('projector')}
    pretrain_like['llm.model.tok_embeddings.weight'] = torch.zeros(1005, 64)
    torch.save(pretrain_like, path)
    with pytest.raises(CheckpointMismatchError,
                       match='looks like a pretrain checkpoint.*builds a finetune'):
        convert_checkpoint(str(TINY_CONFIG), path, tmp_path / 'out.pth')


def test_shape_mismatch_is_an_error(trained_state, released_keys, tmp_path):
    flat = {k: trained_state[k] for k in released_keys}
    flat['projector_text2vision.model.0.bias'] = torch.zeros(3)
    torch.save(flat, tmp_path / 'flat.pth')
    with pytest.raises(CheckpointMismatchError,
                       match=r'projector_text2vision\.model\.0\.bias: \[3\] vs'):
        convert_checkpoint(str(TINY_CONFIG), tmp_path / 'flat.pth', tmp_path / 'out.pth')


def test_frozen_released_tensors_absent_from_a_zero_checkpoint_keep_the_built_values(tiny_cfg):
    """Pretrain: the vocabulary tensors are saved but frozen, so a ZeRO checkpoint saved with
    exclude_frozen_parameters lacks them; they keep the freshly built values as in the reference."""
    model = build_tiny(tiny_cfg, seed=0, llm_lora=None, stage='pretrain')
    released = model.state_dict()
    assert checkpoint_stage(released) == 'pretrain' and len(released) == 17
    built = {k: v.clone() for k, v in released.items()}
    trained = {k: v + 1 for k, v in built.items() if k.startswith('projector')}
    output, kept = released_state_dict(model, trained)
    assert kept == ['llm.model.tok_embeddings.weight', 'llm.output.weight']
    assert list(output) == list(built)
    for key, value in output.items():
        assert torch.equal(value, trained[key] if key in trained else built[key]), key


def test_cfg_options_rebuild_the_model_the_training_overrode(tiny_cfg, tmp_path, capsys):
    """A run trained with --cfg-options (here a narrower LLM) converts only when the same options
    are given."""
    override = {'model.llm.config.hidden_size': 32}
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.merge_from_dict(override)
    narrow = build_tiny(cfg, seed=2)
    flat = tmp_path / 'flat.pth'
    torch.save(nn.Module.state_dict(narrow), flat)
    convert = load_tool('convert_to_pth').main
    assert convert([str(TINY_CONFIG), str(flat), '--save-path', str(tmp_path / 'a.pth')]) == 2
    assert 'vs' in capsys.readouterr().err  # mis-shaped tensors named
    out = tmp_path / 'b.pth'
    assert convert([str(TINY_CONFIG), str(flat), '--save-path', str(out), '--cfg-options',
                    'model.llm.config.hidden_size=32']) == 0
    saved = torch.load(out, weights_only=True)
    assert saved['projector_text2vision.model.0.weight'].shape[1] == 32
    assert torch.equal(saved['projector_text2vision.model.0.weight'],
                       nn.Module.state_dict(narrow)['projector_text2vision.model.0.weight'])


def test_save_path_that_is_an_input_is_refused_and_kept(trained_state, tmp_path, capsys):
    path = tmp_path / 'iter_100.pth'
    torch.save({'state_dict': trained_state, 'meta': {'iter': 100}}, path)
    os.symlink(path, tmp_path / 'link.pth')
    before = path.read_bytes()
    convert = load_tool('convert_to_pth').main
    for save_path in (path, tmp_path / 'link.pth',
                      tmp_path / '..' / tmp_path.name / 'iter_100.pth'):
        assert convert([str(TINY_CONFIG), str(path), '--save-path', str(save_path),
                        '--trust-checkpoint']) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'would overwrite the input' in err and '--save-path' in err
    assert path.read_bytes() == before


def test_converted_file_is_written_atomically(trained_state, tmp_path, monkeypatch):
    path = tmp_path / 'flat.pth'
    torch.save(dict(trained_state), path)
    out = tmp_path / 'released.pth'
    out.write_bytes(b'the previous release')
    def killed_mid_write(obj, f):
        f.write(b'half')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(str(TINY_CONFIG), path, out)
    assert (out.read_bytes() == b'the previous release'
            and os.listdir(tmp_path) == sorted(['flat.pth', 'released.pth']))
