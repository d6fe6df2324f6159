"""Per-image outputs of a frozen encoder, remembered by image content (a training-time speed-up).

A frozen encoder maps the same pixels to the same outputs, and a multi-epoch run encodes every image
many times: the tiny synthetic recipe's finetune draws its 6000 images about 6 times each (4500
steps of 8 rows), and the encoder was a fifth of its step. :class:`ImageOutputCache` keys each image
by a digest of its pixel bytes (not by file name, so identical images under several datasets'
folders are encoded once) and keeps the most recently used ``max_images`` entries. An entry is a
tuple of per-image tensors (detached); what they mean is the caller's business
(:class:`~omg_llava.models.omg_seg_encoder.OMGSegVisualEncoder` stores the rows of its
:class:`~omg_llava.models.omg_seg_encoder.VisualEncoderOutput`).

Unlike the reference's "last image" attributes (style.md: features were reused for whatever image
came next), a hit is only ever the same pixels, so the cache changes no result, only how often the
encoder runs.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor

ImageRows = tuple[Tensor, ...]


def image_key(image: Tensor) -> bytes:
    """Digest of one image's shape, dtype and pixel bytes: (3, H, W) any dtype / device → 16
    bytes."""
    flat = image.detach().contiguous().flatten().cpu()
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes(), digest_size=16)
    digest.update(f'{tuple(image.shape)}{image.dtype}'.encode())
    return digest.digest()


class ImageOutputCache:
    """Least-recently-used map from :func:`image_key` to an image's output rows.

    Args:
        max_images: entries kept (>= 1); the least recently used is dropped beyond that.
    """

    def __init__(self, max_images: int) -> None:
        if max_images < 1:
            raise ValueError(f'max_images must be >= 1, got {max_images}')
        self.max_images = max_images
        self._entries: OrderedDict[bytes, ImageRows] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def missing(self, keys: Sequence[bytes]) -> list[int]:
        """Indices into ``keys`` of the images to compute: the first occurrence of every key not
        held."""
        seen, missing = set(), []
        for i, key in enumerate(keys):
            if key not in self._entries and key not in seen:
                missing.append(i)
            seen.add(key)
        return missing

    def gather(self, keys: Sequence[bytes], fresh: dict[bytes, ImageRows]) -> list[ImageRows]:
        """Rows for every key (from ``fresh``, the just computed ones, or the cache), then store
        ``fresh``.

        The batch's rows are collected before anything is dropped, so a cache smaller than the batch
        still answers the whole batch."""
        rows = []
        for key in keys:
            if key in fresh:
                rows.append(fresh[key])
            else:
                self._entries.move_to_end(key)
                rows.append(self._entries[key])
                self.hits += 1
        self.misses += len(fresh)
        for key, value in fresh.items():
            self._entries[key] = tuple(t.detach() for t in value)
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_images:
            self._entries.popitem(last=False)
        return rows
