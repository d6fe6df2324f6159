"""Read a ``.safetensors`` file one tensor at a time with plain file reads (no memory map).

``safetensors.safe_open`` maps the whole file; every page a tensor was read from then counts in the
process's resident memory until the file is closed (a 2 GB shard of the 7B LLM at a time). Reading
each tensor's bytes straight into its own buffer keeps only that tensor resident; the file's pages
stay in the page cache, which the system reclaims as it needs.

Format (safetensors' documentation): an 8-byte little-endian header length, a JSON header mapping
each name to ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header; an
optional ``__metadata__`` entry), then the tensors' bytes.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator

import torch

DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
          'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
          'U8': torch.uint8, 'BOOL': torch.bool}
_MAX_HEADER_BYTES = 100 * 2 ** 20


class SafetensorsFormatError(ValueError):
    """The file is not a readable ``.safetensors`` file."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """``(entries, data_start)``: the header's tensor entries (``__metadata__`` left out) and the
    file offset their ``data_offsets`` count from.

    Raises:
        SafetensorsFormatError: a truncated file, a header that is not JSON, or an unknown dtype.
    """
    size = os.path.getsize(path)
    with open(path, 'rb') as file:
        head = file.read(8)
        length = struct.unpack('<Q', head)[0] if len(head) == 8 else None
        if length is None or length > min(size - 8, _MAX_HEADER_BYTES):
            raise SafetensorsFormatError(f'{path}: not a safetensors file (bad header length)')
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsFormatError(f'{path}: not a safetensors file (header is not JSON: '
                                         f'{exc})') from exc
    header.pop('__metadata__', None)
    for name, entry in header.items():
        if entry.get('dtype') not in DTYPES:
            raise SafetensorsFormatError(f'{path}: {name} has dtype {entry.get("dtype")!r}, which '
                                         f'this reader does not know ({", ".join(DTYPES)})')
        start, end = entry['data_offsets']
        if end > size - 8 - length:
            raise SafetensorsFormatError(f'{path}: {name} ends past the end of the file '
                                         '(truncated?)')
    return header, 8 + length


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the file, in file order, each freshly read into
    its own CPU tensor.

    Raises:
        SafetensorsFormatError: see :func:`read_header`; also a tensor whose byte count does not
            match its shape and dtype.
    """
    header, data_start = read_header(path)
    order = sorted(header.items(), key=lambda item: item[1]['data_offsets'][0])
    with open(path, 'rb', buffering=0) as file:
        for name, entry in order:
            dtype, shape = DTYPES[entry['dtype']], tuple(entry['shape'])
            start, end = entry['data_offsets']
            tensor = torch.empty(shape, dtype=dtype)
            nbytes = tensor.numel() * tensor.element_size()
            if end - start != nbytes:
                raise SafetensorsFormatError(f'{path}: {name} holds {end - start} bytes, but '
                                             f'{list(shape)} {entry["dtype"]} needs {nbytes}')
            if nbytes:
                view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
                file.seek(data_start + start)
                got = 0
                while got < nbytes:
                    count = file.readinto(view[got:])
                    if not count:
                        raise SafetensorsFormatError(f'{path}: {name} is cut short (truncated '
                                                     'file?)')
                    got += count
            yield name, tensor
