"""Random weight files written tensor by tensor, so writing a 7B bundle holds one chunk of one
tensor at a time.

* :func:`write_safetensors`: the header first (names, dtypes, shapes, offsets), then each tensor's
  bytes, generated in row chunks.
* :func:`write_torch_file`: a ``torch.save`` zip whose storages are reserved but not written
  (``torch.serialization.skip_data`` over never-touched ``torch.empty`` tensors), then filled in
  place through a shared memory map, each tensor's pages dropped once written.

Values are reproducible per key and seed: 1-D ``weight`` tensors (norm scales) are ones, biases
zeros, everything else N(0, 0.02²) samples taken from one pool of 2²⁴ draws at a random offset per
chunk (drawing 7.7 B fresh normal values would take most of an hour on a shared 2-core machine; a
benchmark needs the sizes and a sane scale, not independent draws).
"""
from __future__ import annotations

import functools
import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from omg_llava.checkpoint import FilePages

INIT_STD = 0.02
CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 per generated chunk
SAFETENSORS_DTYPES = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16'}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its key, shape and dtype."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


@functools.lru_cache(maxsize=2)
def _pool(seed: int) -> torch.Tensor:
    """(2 · CHUNK_ELEMENTS,) float32 N(0, INIT_STD²) draws: any CHUNK_ELEMENTS-long window is a
    chunk's values."""
    draws = torch.empty(CHUNK_ELEMENTS).normal_(0.0, INIT_STD,
                                                generator=torch.Generator().manual_seed(seed))
    return torch.cat([draws, draws])


def _chunks(spec: TensorSpec, seed: int) -> Iterable[tuple[slice, torch.Tensor]]:
    """``(rows, values)`` covering the tensor in order: float32 values in chunks of
    leading-dimension rows."""
    shape = spec.shape or (1, )
    row = max(1, spec.nbytes // spec.dtype.itemsize // shape[0])
    step = max(1, CHUNK_ELEMENTS // row)
    generator = torch.Generator().manual_seed(zlib.crc32(spec.key.encode()) ^ seed)
    last = spec.key.rsplit('.', 1)[-1]
    for start in range(0, shape[0], step):
        rows = slice(start, min(start + step, shape[0]))
        chunk_shape = (rows.stop - rows.start, ) + tuple(shape[1:])
        if last == 'bias':
            values = torch.zeros(chunk_shape)
        elif last == 'weight' and len(spec.shape) == 1:
            values = torch.ones(chunk_shape)
        else:
            count = (rows.stop - rows.start) * row
            offset = int(torch.randint(CHUNK_ELEMENTS, (1, ), generator=generator))
            values = _pool(seed)[offset:offset + count].view(chunk_shape)
        yield rows, values


def write_safetensors(path: str | os.PathLike, specs: Sequence[TensorSpec], seed: int = 0) -> int:
    """Write random tensors as a ``.safetensors`` file, streaming. Returns the bytes of tensor
    data."""
    header, offset = {}, 0
    for spec in specs:
        header[spec.key] = dict(dtype=SAFETENSORS_DTYPES[spec.dtype], shape=list(spec.shape),
                                data_offsets=[offset, offset + spec.nbytes])
        offset += spec.nbytes
    header['__metadata__'] = {'format': 'pt'}
    encoded = json.dumps(header, separators=(',', ':')).encode()
    encoded += b' ' * (-len(encoded) % 8)
    with open(path, 'wb') as file:
        file.write(struct.pack('<Q', len(encoded)))
        file.write(encoded)
        for spec in specs:
            for _, values in _chunks(spec, seed):
                file.write(values.to(spec.dtype).contiguous().view(torch.uint8).numpy().tobytes())
    return offset


def write_torch_file(path: str | os.PathLike, specs: Sequence[TensorSpec], seed: int = 0,
                     wrap_key: str | None = None) -> int:
    """Write random tensors as a ``torch.save`` file (a flat dict, or ``{wrap_key: dict}`` such as
    mmengine's ``state_dict``), one tensor at a time. Returns the bytes of tensor data."""
    # never touched: no memory
    skeleton = {spec.key: torch.empty(spec.shape, dtype=spec.dtype) for spec in specs}
    with torch.serialization.skip_data():
        torch.save({wrap_key: skeleton} if wrap_key else skeleton, path)
    del skeleton
    previous = torch.serialization.get_default_mmap_options()
    torch.serialization.set_default_mmap_options(mmap.MAP_SHARED)
    try:
        loaded = torch.load(path, mmap=True, weights_only=True)
    finally:
        torch.serialization.set_default_mmap_options(previous)
    tensors = loaded[wrap_key] if wrap_key else loaded
    pages = FilePages(path)
    with torch.no_grad():
        for spec in specs:
            target = tensors[spec.key]
            view = target.view(1) if not spec.shape else target
            for rows, values in _chunks(spec, seed):
                view[rows] = values
            pages.release(target)
    del tensors, loaded
    return sum(spec.nbytes for spec in specs)


def shard_specs(specs: Sequence[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Split ``specs`` in order into shards of at most ``shard_bytes`` (a larger tensor gets its own
    shard)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards
