"""``tools/benchmark.py run`` on the tiny bundle: every stage reported, the follow-up prefilled on
the kept cache, decode related to the measured bandwidth; int8 weight-only quantization agrees with
the float model."""
from __future__ import annotations

import json

import pytest
import torch

from omg_llava.benchmark import write_bundle
from omg_llava.benchmark.runner import (compare_runs, decode_bytes_per_token,
                                        measure_read_bandwidth, run_benchmark)
from omg_llava.inference.quantize import Int8WeightOnlyLinear

from conftest import load_tool


@pytest.fixture(scope='module')
def tiny_bundle(tmp_path_factory):
    return write_bundle('tiny', tmp_path_factory.mktemp('bundle'), log=lambda line: None)


def test_run_reports_every_stage_and_writes_json(tiny_bundle, tmp_path, capsys):
    out = tmp_path / 'run.json'
    assert load_tool('benchmark').main(['run', tiny_bundle.root, '--max-new-tokens', '4', '--json',
                                        str(out), '--bandwidth-gb', '0.05', '--dtype', 'fp32']) == 0
    record = json.loads(out.read_text())
    stages = {s['stage']: s for s in record['stages']}
    assert list(stages) == ['build', 'encode'] + [f'turn {t}{part}' for t in (1, 2)
                                                  for part in (' prefill', ' decode', ' masks', '')]
    assert all(s['peak_rss_gb'] >= s['rss_gb'] > 0 and s['seconds'] >= 0 for s in stages.values())
    for t in (1, 2):
        assert stages[f'turn {t}']['new_tokens'] == 4 and stages[f'turn {t} masks']['masks'] == 1
        assert stages[f'turn {t} decode']['tokens'] == 3  # the first token comes with the prefill
        decode = stages[f'turn {t} decode']
        limit = record['read_bandwidth_gb_s'] * 1e9 / record['llm_bytes_per_token']
        assert decode['of_bandwidth_limit'] == pytest.approx(decode['tokens_per_s'] / limit,
                                                             abs=2e-3)
    # the follow-up prefills only the ids after turn 1, fewer than the first prompt (which it
    # contains)
    assert stages['turn 2 prefill']['positions'] < stages['turn 1 prefill']['positions']
    assert record['answers'][0][-1] == record['answers'][1][-1]  # the steered [SEG]
    assert 'limit' in capsys.readouterr().out


def test_bandwidth_and_bytes_per_token(tiny_bundle):
    assert measure_read_bandwidth(gigabytes=0.02, repeats=2) > 0.1  # GB/s
    from omg_llava.inference.chat import OMGLLaVAChat
    chat, _ = OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='bf16')
    llm = chat.model.llm
    expected = sum(p.numel() * 2 for n, p in llm.named_parameters() if 'tok_embeddings' not in n)
    assert decode_bytes_per_token(llm) == expected


def test_int8_layer_matches_its_float_weight_and_uses_the_fused_kernel_for_few_rows(monkeypatch):
    from omg_llava.inference import quantize
    monkeypatch.setattr(quantize, 'DEQUANTIZE_BLOCK_ROWS', 20)  # 48 output rows: 3 uneven blocks
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    q = Int8WeightOnlyLinear.from_linear(linear)
    assert q.weight_int8.dtype == torch.int8 and q.scales.shape == (48, )
    step = (linear.weight.float().abs().amax(1) / 127)[:, None]
    # half a step
    assert ((q.dequantized().float() - linear.weight.float()).abs() <= step * 0.51 + 1e-2).all()
    # fused kernel up to FUSED_MAX_ROWS, then block-dequantized matmul
    for rows in (1, quantize.FUSED_MAX_ROWS, quantize.FUSED_MAX_ROWS + 1, 40):
        x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
        expected = x.float() @ q.dequantized().float().T + linear.bias.float()
        torch.testing.assert_close(q(x).float(), expected, atol=0.1, rtol=0.02)


def test_int8_run_agrees_with_bf16(tiny_bundle, tmp_path):
    records = {quantize: run_benchmark(tiny_bundle.root, dtype='bf16', quantize=quantize,
                                       max_new_tokens=4,
                                       turns=1, bandwidth_gb=0.02,
                                       masks_out=str(tmp_path / f'{quantize}.npz'),
                                       log=lambda line: None)
               for quantize in ('none', 'int8')}
    bf16, int8 = records['none'], records['int8']
    # int8 weights + bf16 scales and norms
    assert int8['llm_bytes_per_token'] < 0.6 * bf16['llm_bytes_per_token']
    assert len(int8['answers'][0]) == len(bf16['answers'][0]) == 4
    same = compare_runs(bf16, bf16, str(tmp_path / 'none.npz'), str(tmp_path / 'none.npz'))
    assert same == dict(tokens=4, token_agreement=1.0, mask_iou=[1.0])
    versus = compare_runs(bf16, int8, str(tmp_path / 'none.npz'), str(tmp_path / 'int8.npz'))
    assert (versus['tokens'] == 4 and 0 <= versus['token_agreement'] <= 1
            and len(versus['mask_iou']) == 1)
    # int8 stays close to bf16
    assert versus['token_agreement'] >= 0.5 and versus['mask_iou'][0] > 0.5
