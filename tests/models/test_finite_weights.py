"""non_finite_keys: the tensors of a state dict holding NaN or infinities, by name, checked in bounded chunks."""
from __future__ import annotations

import torch

from omg_llava.models import finite_weights
from omg_llava.models.finite_weights import non_finite_keys, non_finite_message


def test_names_every_non_finite_float_tensor_in_order(monkeypatch):
    monkeypatch.setattr(finite_weights, 'CHUNK_ELEMENTS', 7)  # the bad value sits in a later chunk
    late_nan = torch.zeros(5, 6)
    late_nan[4, 5] = float('nan')
    state = {'fine': torch.randn(3, 3), 'late_nan': late_nan, 'ints': torch.arange(4),
             'half_inf': torch.tensor([1.0, -float('inf')], dtype=torch.float16),
             'flags': torch.ones(2, dtype=torch.bool),
             'bf16_nan': torch.full((2,), float('nan'), dtype=torch.bfloat16), 'empty': torch.zeros(0),
             'meta': torch.empty(3, device='meta')}
    assert non_finite_keys(state) == ['late_nan', 'half_inf', 'bf16_nan']
    assert non_finite_keys({'a': torch.ones(2)}) == []


def test_message_is_one_line_with_the_first_keys():
    message = non_finite_message([f'layer{i}.weight' for i in range(8)], 'ckpt.pth', limit=3)
    assert '\n' not in message and message.startswith('ckpt.pth: 8 tensor(s) hold NaN or infinite values')
    assert 'layer2.weight and 5 more' in message and 'layer3' not in message
