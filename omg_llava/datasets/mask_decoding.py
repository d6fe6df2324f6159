"""COCO-style segmentations → binary masks, checked before they reach pycocotools.

Annotation files in the training mixture (spec §8.3/§8.4) store masks in four shapes: polygon lists
(COCO, RefCOCO/REFER), compressed RLE dicts with ``str`` or ``bytes`` counts (SAM / Flickr GCG),
uncompressed RLE dicts with a list of run lengths (COCO ``iscrowd``), and lists of RLE dicts that
together form one mask (GranDf / OpenPSG GCG). :func:`decode_segmentation` turns any of them into
one (H, W) bool array.

pycocotools' C decoder does not check its input: run lengths that do not add up to H·W write past
the output buffer, and a two-point "polygon" is silently read as a box. Everything is therefore
validated here first and a bad annotation raises :class:`MalformedSample`, so the dataset skips the
row instead of crashing (or worse).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .sample import MalformedSample


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """Decode one COCO-style segmentation into a mask of the image.

    Args:
        segm: one of
            * polygons: a list of ``[x1, y1, x2, y2, ...]`` lists (≥ 3 points each), or one such
              flat list;
            * compressed RLE: ``{'size': [H, W], 'counts': str | bytes}``;
            * uncompressed RLE: ``{'size': [H, W], 'counts': [int, ...]}`` (column-major run
              lengths);
            * a list of RLE dicts (compressed or not), whose union is the mask.
        height: image height H.
        width: image width W.

    Returns:
        (H, W) bool mask.

    Raises:
        MalformedSample: the segmentation is empty, of an unknown shape, or inconsistent with the
            image size.
    """
    if height <= 0 or width <= 0:
        raise MalformedSample(f'bad image size: {height}x{width}')
    if isinstance(segm, dict):
        return _decode_rle(segm, height, width)
    if isinstance(segm, (list, tuple)) and segm:
        if all(isinstance(s, dict) for s in segm):
            mask = np.zeros((height, width), dtype=bool)
            for rle in segm:
                mask |= _decode_rle(rle, height, width)
            return mask
        if all(_is_number(v) for v in segm):
            return _decode_polygons([segm], height, width)
        if all(isinstance(s, (list, tuple)) for s in segm):
            return _decode_polygons(segm, height, width)
    raise MalformedSample(f'unsupported or empty segmentation: {type(segm).__name__} '
                          f'{_preview(segm)}')


def _decode_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2 or not all(_is_number(v) and math.isfinite(v)
                                                           for v in polygon):
            raise MalformedSample(f'bad polygon segmentation: {_preview(polygon)} (need ≥ 3 finite '
                                  '(x, y) points)')
    rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _decode_rle(rle: dict, height: int, width: int) -> np.ndarray:
    size, counts = rle.get('size'), rle.get('counts')
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(s) for s in size)
            and [int(s) for s in size] == [height, width]):
        raise MalformedSample(f'RLE size mismatch: {size} for an image of size {[height, width]}')
    if isinstance(counts, str):
        counts = counts.encode('ascii', errors='replace')
    if isinstance(counts, bytes):
        runs = compressed_rle_counts(counts)
    elif isinstance(counts, (list, tuple)) and all(isinstance(c, (int, np.integer))
                                                   for c in counts):
        runs = [int(c) for c in counts]
    else:
        raise MalformedSample(f'bad RLE counts: {type(counts).__name__} {_preview(counts)}')
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise MalformedSample(f'bad RLE run lengths: they add up to {sum(runs)} (some negative: '
                              f'{any(r < 0 for r in runs)}) for a {height}x{width} mask')
    if not isinstance(counts, bytes):  # uncompressed → pycocotools' compressed form
        counts = mask_utils.frPyObjects({'size': [height, width], 'counts': runs}, height,
                                        width)['counts']
    return mask_utils.decode({'size': [height, width], 'counts': counts}).astype(bool)


def compressed_rle_counts(counts: bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string.

    Each run is a variable-length integer of 6-bit characters (``chr(48 + c)``; bit 5 continues the
    number, bit 4 of the last character is the sign); from the third run on, the stored value is the
    difference to the run two places before.

    Raises:
        MalformedSample: a character outside the alphabet or a string that ends inside a number.
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        value, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise MalformedSample('bad RLE string: it ends inside a run length')
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise MalformedSample(f'bad RLE string: invalid character {chr(counts[p])!r}')
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _is_number(v: Any) -> bool:
    return isinstance(v, (Real, np.number)) and not isinstance(v, bool)


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + '...'


__all__ = ['decode_segmentation', 'compressed_rle_counts']
