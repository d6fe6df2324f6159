"""Inference builds: SDPA attention by default (eager on request, same answers) and
``quantization='int8'`` (CPU weight-only; equal to quantizing a bf16 build; close to bf16; refused
on CUDA)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omg_llava.benchmark.bundle import write_bundle
from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.model_builder import build_model, estimate_memory
from omg_llava.inference.quantize import Int8WeightOnlyLinear, quantize_llm_int8

from conftest import TINY_CONFIG, load_tool

IMAGE = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope='module')
def tiny_bundle(tmp_path_factory):
    return write_bundle('tiny', tmp_path_factory.mktemp('bundle'), log=lambda line: None)


def _answer(chat: OMGLLaVAChat):
    chat.set_image(IMAGE)
    seg = chat.model.token_ids.seg
    answer = chat.ask('Please segment the cat.', max_new_tokens=4, sequence_bias={(seg, ): 5.0})
    return answer.token_ids, answer.masks


def test_sdpa_by_default_eager_on_request_same_answers():
    sdpa, _ = OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)
    eager, _ = OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0, attn_implementation='eager')
    assert sdpa.model.llm.config._attn_implementation == 'sdpa'
    assert eager.model.llm.config._attn_implementation == 'eager'
    (ids_s, masks_s), (ids_e, masks_e) = _answer(sdpa), _answer(eager)
    assert ids_s == ids_e and len(masks_s) == len(masks_e)
    for a, b in zip(masks_s, masks_e):
        assert (a == b).mean() > 0.999
    with pytest.raises(ValueError, match='attn_implementation'):
        build_model(str(TINY_CONFIG), attn_implementation='flash')


def test_int8_build_streams_and_equals_quantizing_a_bf16_build(tiny_bundle, monkeypatch):
    from omg_llava.inference import quantize
    skeletons, float_linears, pieces = [], [], []
    make_skeleton, from_rows = (quantize.llm_skeleton,
                                quantize.Int8WeightOnlyLinear.from_rows.__func__)

    def skeleton(*args, **kwargs):
        skeletons.append(make_skeleton(*args, **kwargs))
        return skeletons[-1]

    # at each quantization: no other float linear weight exists, and the weight comes in row pieces
    def quantize_one(cls, read_rows, shape, dtype, bias=None, rows_per_chunk=4096, *args, **kw):
        float_linears.append(sum(m.weight.device.type != 'meta' for m in skeletons[0].modules()
                                 if type(m) is torch.nn.Linear))

        def recorded(rows):
            piece = read_rows(rows)
            pieces.append((piece.shape[0], rows_per_chunk, piece.dtype))
            return piece
        return from_rows(cls, recorded, shape, dtype, bias, 2, *args, **kw)  # 2-row pieces

    monkeypatch.setattr(quantize, 'llm_skeleton', skeleton)
    monkeypatch.setattr(quantize.Int8WeightOnlyLinear, 'from_rows', classmethod(quantize_one))
    int8, _, notes = build_model(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='bf16',
                                 quantization='int8')
    monkeypatch.undo()
    assert any('streamed' in n for n in notes) and len(skeletons) == 1
    assert float_linears and set(float_linears) == {0}
    assert pieces and {(n, d) for n, _, d in pieces} == {(2, torch.bfloat16)}
    from omg_llava.inference.memory import is_file_mapped
    assert is_file_mapped(int8.llm.get_input_embeddings())
    bf16, _, _ = build_model(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='bf16')
    replaced = quantize_llm_int8(bf16)
    layers = {n: m for n, m in int8.llm.named_modules() if isinstance(m, Int8WeightOnlyLinear)}
    assert len(layers) == replaced > 0
    assert not any(type(m) is torch.nn.Linear for m in int8.llm.modules())
    reference = dict(bf16.llm.named_modules())
    for name, layer in layers.items():
        assert torch.equal(layer.weight_int8, reference[name].weight_int8), name
        assert torch.equal(layer.scales, reference[name].scales), name


def test_int8_answers_agree_with_bf16(tiny_bundle):
    """Tolerance: at least 3 of 4 greedy tokens equal and every mask IoU > 0.5 (int8 rounds each
    weight by up to half a step of max|row| / 127)."""
    chats = {q: OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='bf16',
                                         quantization=q)[0] for q in ('none', 'int8')}
    (ids_b, masks_b), (ids_q, masks_q) = _answer(chats['none']), _answer(chats['int8'])
    assert len(ids_b) == len(ids_q) == 4
    assert sum(a == b for a, b in zip(ids_b, ids_q)) >= 3
    for a, b in zip(masks_b, masks_q):
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.5


def test_int8_memory_estimate_counts_one_byte_per_linear_weight(tiny_bundle):
    bf16 = estimate_memory(tiny_bundle.config, 'bf16')
    int8 = estimate_memory(tiny_bundle.config, 'bf16', int8=True)
    assert 0 < int8.llm_linear < int8.llm
    assert int8.llm_bytes == bf16.llm_bytes - int8.llm_linear
    assert int8.weight_bytes < bf16.weight_bytes


@pytest.mark.parametrize('device, keep_lora, message', [('cuda', False, 'CPU inference'),
                                                        ('cpu', True, 'drop --keep-lora')])
def test_int8_refused_on_cuda_and_with_kept_lora(device, keep_lora, message):
    with pytest.raises(ValueError, match=message):
        build_model(str(TINY_CONFIG), device=device, quantization='int8', merge_lora=not keep_lora)


def test_tools_refuse_int8_on_a_gpu_and_with_kept_lora(capsys):
    assert load_tool('chat').main(['--prompt', 'hi', '--quantize', 'int8', '--keep-lora']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'drop --keep-lora' in err and len(err.splitlines()) == 1
    test_tool = load_tool('test')
    with pytest.raises(test_tool.UsageError, match='--quantize int8 is for the CPU'):
        test_tool.check_quantization_device('int8', 'cuda:0')
    with pytest.raises(test_tool.UsageError, match='--load-in-8bit needs a CUDA GPU'):
        test_tool.check_quantization_device('8bit', 'cpu')
    test_tool.check_quantization_device('int8', 'cpu')
    with pytest.raises(SystemExit):  # one option group: int8 and bitsandbytes exclude each other
        load_tool('chat').build_parser().parse_args(['--quantize', 'int8', '--load-in-8bit'])
