"""Keeping an inference process's resident memory down on CPU.

Two measures that change no number the model computes:

* :func:`map_embedding_to_file_` moves the LLM's input embedding table (92544 × 4096, 0.76 GB in
  bf16 at 7B) out of anonymous memory into a private mapping of an unlinked temporary file. An
  embedding lookup reads only the rows of the tokens it embeds, so only those pages become resident
  (a few hundred rows, a few MB), while the LM head, which every decoded token reads whole, stays in
  memory. The file lives in the temporary directory (``TMPDIR``); it disappears when the process
  ends. On a RAM-backed temporary directory (tmpfs) the table still occupies memory, as shared
  memory instead of the process's own.
* :func:`release_free_memory` hands the pages glibc's allocator keeps after large temporary tensors
  are freed (the fp32 chunks of the LoRA merge, the encoder's activations) back to the system
  (``malloc_trim``).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import tempfile

import torch
from torch import nn

_CHUNK_ROWS = 8192
_MADV_PAGEOUT = 21


def map_embedding_to_file_(embedding: nn.Embedding, directory: str | None = None) -> int:
    """Replace ``embedding.weight``'s storage by a private mapping of an unlinked temporary file, in
    place.

    The values, dtype, shape and ``requires_grad`` stay the same; the table's rows are written to
    the file in chunks of 8192 rows (no second full copy), then the resident tensor is released.

    Args:
        embedding: an ``nn.Embedding`` on the CPU, shape (V, D), contiguous.
        directory: where the temporary file goes (default: Python's temporary directory).

    Returns:
        The number of bytes moved out of anonymous memory (0 when the weight is not a CPU tensor or
        already mapped).
    """
    weight = embedding.weight
    if weight.device.type != 'cpu' or is_file_mapped(embedding):
        return 0
    data = weight.detach().contiguous()
    size = data.numel() * data.element_size()
    if size == 0:
        return 0
    rows = data.view(data.shape[0], -1)
    # unlinked at once; the mapping keeps it alive
    with tempfile.TemporaryFile(dir=directory) as file:
        for start in range(0, rows.shape[0], _CHUNK_ROWS):
            chunk = rows[start:start + _CHUNK_ROWS].view(torch.uint8)  # (rows, D * itemsize) bytes
            file.write(memoryview(chunk.numpy()).cast('B'))
        file.flush()
        # private: writes stay in memory
        mapping = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
    # the tensor keeps `mapping` alive
    mapped = torch.frombuffer(mapping, dtype=data.dtype).view(data.shape)
    weight.data = mapped
    embedding._file_mapped_at = mapped.data_ptr()
    return size


def page_out_file_mappings(directory: str | os.PathLike) -> int:
    """Ask the kernel to reclaim the resident pages of this process's mappings of files under
    ``directory`` (``madvise(MADV_PAGEOUT)``, Linux 5.4+; elsewhere nothing happens).

    transformers maps an LLM's safetensors shards and keeps a shard mapped while any tensor of it
    lives (a norm weight), so the pages of tensors that were read once and then replaced (the
    base vocabulary tensors, copied when the vocabulary is resized) stay counted in the process's
    memory. Only clean file pages are reclaimed: pages that were written (a weight merged in place
    through the private mapping) are anonymous and stay, so no value changes; a page that is read
    again comes back from the file.

    Returns:
        The number of mappings advised.
    """
    root = os.path.realpath(directory) + os.sep
    try:
        with open('/proc/self/maps') as maps:
            spans = [line.split() for line in maps]
    except OSError:
        return 0
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    advised = 0
    for fields in spans:
        if len(fields) < 6 or not fields[5].startswith(root):
            continue
        start, end = (int(x, 16) for x in fields[0].split('-'))
        if madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT) == 0:
            advised += 1
    return advised


def is_file_mapped(embedding: nn.Embedding) -> bool:
    """Whether ``embedding.weight`` is the mapping :func:`map_embedding_to_file_` made (a later cast
    or move makes a resident copy again)."""
    return getattr(embedding, '_file_mapped_at', None) == embedding.weight.data_ptr()
