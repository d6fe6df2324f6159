"""Decode-step linears as matrix-vector products on the CPU (SingleRowLinear): equal to F.linear,
taken only for one bf16 / fp32 row, and switched on by inference builds with the same answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.single_row_linear import SingleRowLinear, use_matrix_vector_decode_

from conftest import TINY_CONFIG


@pytest.fixture
def mv_calls(monkeypatch):
    calls = []
    mv, addmv = torch.mv, torch.addmv
    monkeypatch.setattr(torch, 'mv', lambda *a: calls.append('mv') or mv(*a))
    monkeypatch.setattr(torch, 'addmv', lambda *a: calls.append('addmv') or addmv(*a))
    return calls


def _pair(dtype: torch.dtype, bias: bool) -> tuple[nn.Linear, SingleRowLinear]:
    torch.manual_seed(0)
    plain = nn.Linear(96, 40, bias=bias).to(dtype)
    turned = SingleRowLinear(96, 40, bias=bias).to(dtype)
    turned.load_state_dict(plain.state_dict())
    return plain, turned


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('shape', [(1, 96), (1, 1, 96), (96, )])
def test_one_row_goes_through_mv_and_equals_linear(dtype, bias, shape, mv_calls):
    plain, turned = _pair(dtype, bias)
    x = torch.randn(shape).to(dtype)
    with torch.inference_mode():
        expected, got = plain(x), turned(x)
    assert mv_calls == ['addmv' if bias else 'mv']
    assert got.shape == expected.shape == (*shape[:-1], 40) and got.dtype == dtype
    exact = (x.double() @ plain.weight.double().T
             + (plain.bias.double() if bias else 0))
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.double(), exact, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize('dtype, shape', [(torch.bfloat16, (1, 3, 96)), (torch.float32, (2, 96)),
                                          (torch.float16, (1, 1, 96))])
def test_other_inputs_go_to_linear_unchanged(dtype, shape, mv_calls):
    plain, turned = _pair(dtype, True)
    x = torch.randn(shape).to(dtype)
    with torch.inference_mode():
        assert torch.equal(turned(x), plain(x))
    assert mv_calls == []
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast keeps linear's casting rules
        assert torch.equal(turned(x[..., :1, :].float()), plain(x[..., :1, :].float()))
    assert mv_calls == []


def test_swap_turns_plain_linears_only_and_keeps_the_weights():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)), Custom(2, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    assert use_matrix_vector_decode_(model) == 2
    assert type(model[0]) is SingleRowLinear and type(model[2][0]) is SingleRowLinear
    assert type(model[3]) is Custom
    assert model[0].weight is weight  # no copy
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert use_matrix_vector_decode_(model) == 0


def test_inference_build_decodes_through_mv_with_the_same_answer(mv_calls):
    chat, _ = OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0, dtype='bf16')
    linears = [m for m in chat.model.llm.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is SingleRowLinear for m in linears)
    image = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)

    def answer():
        chat.set_image(image)
        seg = chat.model.token_ids.seg
        return chat.ask('Please segment the cat.', max_new_tokens=6,
                        sequence_bias={(seg, ): 5.0})

    turned = answer()
    assert len(mv_calls) >= 6 * len(linears) // 2  # the decode steps used the matrix-vector path
    for layer in linears:
        layer.__class__ = nn.Linear
    plain = answer()
    assert turned.token_ids == plain.token_ids
    assert len(turned.masks) == len(plain.masks)
    for a, b in zip(turned.masks, plain.masks):
        assert (a == b).mean() > 0.99
