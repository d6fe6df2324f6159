"""non_finite_keys: the tensors of a state dict holding NaN or infinities, by name, checked in
bounded chunks."""
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
             'bf16_nan': torch.full((2,), float('nan'), dtype=torch.bfloat16),
             'empty': torch.zeros(0), 'meta': torch.empty(3, device='meta')}
    assert non_finite_keys(state) == ['late_nan', 'half_inf', 'bf16_nan']
    assert non_finite_keys({'a': torch.ones(2)}) == []


def test_message_is_one_line_with_the_first_keys():
    message = non_finite_message([f'layer{i}.weight' for i in range(8)], 'ckpt.pth', limit=3)
    assert ('\n' not in message
            and message.startswith('ckpt.pth: 8 tensor(s) hold NaN or infinite values'))
    assert 'layer2.weight and 5 more' in message and 'layer3' not in message


def test_load_into_names_the_non_finite_tensors_of_a_file(tmp_path):
    from torch import nn

    from omg_llava.checkpoint import CheckpointError, load_into, read_weights
    state = {'0.weight': torch.randn(4, 3), '0.bias': torch.tensor([0.0, float('nan'), 0.0, 0.0]),
             '1.weight': torch.full((2, 4), 1e6), '1.bias': torch.zeros(2)}
    torch.save(state, tmp_path / 'nan.pth')
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[1].half()  # 1e6 overflows float16: infinite once copied in
    try:
        load_into(model, read_weights(tmp_path / 'nan.pth'), source=str(tmp_path / 'nan.pth'))
    except CheckpointError as exc:
        message = str(exc)
    else:
        raise AssertionError('a checkpoint holding NaN loaded silently')
    assert ('\n' not in message
            and message.startswith(f'{tmp_path / "nan.pth"}: 2 tensor(s) hold NaN or infinite'))
    assert '(0.bias, 1.weight)' in message
    state['0.bias'][1] = 0.0
    model[1].float()
    assert len(load_into(model, state, source='fine').loaded) == 4


def test_chat_refuses_a_checkpoint_full_of_nan(tmp_path, capsys):
    from conftest import TINY_CONFIG, load_tool

    from omg_llava.inference.model_builder import build_model
    model, _, _ = build_model(str(TINY_CONFIG), merge_lora=False)
    state = {k: torch.full_like(v, float('nan')) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / 'diverged.pth')
    code = load_tool('chat').main([str(TINY_CONFIG), '--pth', str(tmp_path / 'diverged.pth'),
                                   '--prompt', 'hi', '--out-dir', str(tmp_path / 'out')])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(f'error: {tmp_path / "diverged.pth"}: ')
    assert ('hold NaN or infinite values' in err[-1]
            and not (tmp_path / 'out' / 'answer.json').exists())
