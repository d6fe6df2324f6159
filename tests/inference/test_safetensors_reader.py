"""The plain-read safetensors reader gives exactly what the safetensors library loads, and refuses
bad files."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from omg_llava.inference.safetensors_reader import SafetensorsFormatError, iter_tensors


def _sample() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {'layers.0.weight': torch.randn(37, 19, generator=generator).to(torch.bfloat16),
            'layers.0.bias': torch.randn(37, generator=generator),
            'norm.weight': torch.randn(5, generator=generator).half(),
            'ids': torch.arange(11, dtype=torch.int64), 'flags': torch.tensor([True, False]),
            'empty': torch.zeros(0, 4)}


def test_reads_what_safetensors_loads(tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file(_sample(), str(path), metadata={'format': 'pt'})
    expected = load_file(str(path))
    read = dict(iter_tensors(path))
    assert read.keys() == expected.keys()
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape, name
        assert torch.equal(read[name], tensor), name


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / 'model.safetensors'
    save_file(_sample(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    with pytest.raises(SafetensorsFormatError, match='truncated'):
        list(iter_tensors(path))


def test_not_a_safetensors_file_is_refused(tmp_path):
    path = tmp_path / 'model.safetensors'
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{not json at all')
    with pytest.raises(SafetensorsFormatError, match='not a safetensors file'):
        list(iter_tensors(path))
