"""Numerical parity with the reference implementation (tools/check_reference.py on the fixtures)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from omg_llava.verification.reference_fixture import PENDING_PREFIXES, run_fixture

from conftest import fixture_paths, load_tool

def _status(line: str) -> str:
    return re.search(r'\s(PASS|FAIL|SKIP)(\s|$)', line).group(1)


@pytest.mark.parametrize('lean_attention', [False, True], ids=['modules', 'lean_attention'])
@pytest.mark.parametrize('fixture', fixture_paths(), ids=lambda p: p.stem)
def test_every_output_passes_end_to_end(fixture, lean_attention):
    """Every recorded stage (visual encoder, projector, prompts, splicing, LLM with and without
    LoRA, [SEG] masks) is computed from this project's own upstream results and matches, with the
    OMG-Seg head's own attention modules and with the lean ones inference builds switch to."""
    results = run_fixture(fixture, lean_attention=lean_attention)
    failed = [r.line() for r in results if r.status != 'PASS']
    assert not failed, '\n'.join(failed)
    names = {r.name for r in results}
    assert {'out/llm/logits', 'out/llm/logits_without_lora', 'out/seg/mask_logits3',
            'out/llm/inputs_embeds',
            'out/prompt/box/llm_embedding', 'out/projector/visual_tokens1'} <= names
    assert not PENDING_PREFIXES


def test_save_filter_keeps_exactly_the_reference_checkpoint_keys(reference_fixture_path):
    from omg_llava.verification.reference_fixture import build_model
    meta = json.loads(reference_fixture_path.with_suffix('.json').read_text())
    model = build_model(meta['config'])
    saved = list(model.state_dict())
    assert sorted(saved) == sorted(meta['saved_checkpoint_filter_keys']) and len(saved) == 39


def test_cli_prints_one_line_per_output_and_exits_zero(capsys, reference_fixture_path):
    rc = load_tool('check_reference').main([str(reference_fixture_path)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('out/')]
    n_outputs = sum(1 for k in torch.load(reference_fixture_path, weights_only=True)
                    if k.startswith('out/'))
    assert rc == 0 and len(lines) == n_outputs
    assert all(_status(ln) in ('PASS', 'SKIP') for ln in lines)
    assert sum(_status(ln) == 'PASS' for ln in lines) >= 70


def test_cli_fails_on_a_perturbed_fixture(tmp_path, capsys, reference_fixture_path):
    """A fixture whose recorded output disagrees must FAIL with a non-zero exit (the check can
    fail)."""
    tensors = torch.load(reference_fixture_path, weights_only=True)
    tensors['out/decoder/layer2/mask_logits'] = tensors['out/decoder/layer2/mask_logits'] + 1e-2
    tensors['out/visual_encoder/attn_mask'] = ~tensors['out/visual_encoder/attn_mask']
    target = tmp_path / 'perturbed.pt'
    torch.save(tensors, target)
    shutil.copy(reference_fixture_path.with_suffix('.json'), target.with_suffix('.json'))
    rc = load_tool('check_reference').main([str(target)])
    out = capsys.readouterr().out
    assert rc == 1
    failing = {ln.split()[0] for ln in out.splitlines() if ln.startswith('out/')
               and _status(ln) == 'FAIL'}
    assert failing == {'out/decoder/layer2/mask_logits', 'out/visual_encoder/attn_mask'}


def test_builder_follows_the_fixture_config(tmp_path, reference_fixture_path):
    """Sizes come from the JSON config, not from constants: a changed config no longer fits the
    weights."""
    meta = json.loads(reference_fixture_path.with_suffix('.json').read_text())
    meta['config']['head']['num_queries'] += 1
    target = tmp_path / 'other.pt'
    shutil.copy(reference_fixture_path, target)
    target.with_suffix('.json').write_text(json.dumps(meta))
    from omg_llava.checkpoint import CheckpointMismatchError
    with pytest.raises(CheckpointMismatchError, match='query_embed.weight'):
        run_fixture(target)
