"""Referring-expression segmentation metrics: cIoU and gIoU (spec §9.3 "RES").

Every referring expression contributes one (intersection, union) pair of its predicted and
ground-truth foreground masks:

* **cIoU** (cumulative IoU) = Σ intersection / Σ union over all expressions;
* **gIoU** (generalised IoU) = mean of the per-expression IoUs, an expression whose union is empty
  (no ground truth and nothing predicted) counting 1.0. The reference averages per image and then
  weights the images by their number of expressions, which is exactly the plain mean over
  expressions computed here.

An answer without ``[SEG]`` is an empty prediction: intersection 0, union = ground-truth area (the
reference skipped it for cIoU and crashed when a whole image had none, spec §10.20).

The ``reference`` protocol (docs/evaluation.md) reproduces the released script instead:
:func:`reference_gt_mask` decodes the ground truth as it does (an object's polygons are *summed*,
and only pixels whose count is exactly 1 are foreground, so where two polygons of one object overlap
the pixel is background) and :func:`reference_refseg_metrics` scores the answers with a ``[SEG]``
only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from omg_llava.datasets.mask_decoding import decode_segmentation


@dataclass(frozen=True)
class MaskOverlap:
    """Overlap of one predicted and one ground-truth mask, in pixels."""

    intersection: int
    union: int

    @property
    def iou(self) -> float:
        """IoU, 1.0 when both masks are empty."""
        return self.intersection / self.union if self.union else 1.0


def mask_overlap(pred: np.ndarray | None, gt: np.ndarray) -> MaskOverlap:
    """Intersection and union of two (H, W) masks; ``pred=None`` is the empty prediction.

    Raises:
        ValueError: the masks have different shapes.
    """
    gt = np.asarray(gt, dtype=bool)
    if pred is None:
        return MaskOverlap(0, int(gt.sum()))
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f'predicted mask {pred.shape} and ground truth {gt.shape} differ in size; '
                         'predictions must be at the original image size (H, W) given in the '
                         'annotation file')
    return MaskOverlap(int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum()))


def refseg_metrics(
    overlaps: Sequence[MaskOverlap] | Iterable[tuple[int, int]],
) -> dict[str, float | int]:
    """cIoU and gIoU of a set of expressions.

    Args:
        overlaps: one :class:`MaskOverlap` (or ``(intersection, union)`` pair) per referring
            expression.

    Returns:
        ``{'cIoU', 'gIoU', 'num_expressions'}``; fractions in [0, 1]. With no expression both are 0;
        when every union is empty cIoU is 1.0 (nothing to find, nothing predicted), like the
        per-expression convention.
    """
    pairs = [o if isinstance(o, MaskOverlap) else MaskOverlap(int(o[0]), int(o[1]))
             for o in overlaps]
    if not pairs:
        return {'cIoU': 0.0, 'gIoU': 0.0, 'num_expressions': 0}
    total_i = sum(p.intersection for p in pairs)
    total_u = sum(p.union for p in pairs)
    return {'cIoU': total_i / total_u if total_u else 1.0,
            'gIoU': float(np.mean([p.iou for p in pairs])),
            'num_expressions': len(pairs)}


# ------------------------------------------------------------------------------- reference protocol
#: The released script's guards: cIoU = ΣI / (ΣU + 1e-10), per-expression IoU = I / (U + 1e-5).
REFERENCE_CIOU_EPS = 1e-10
REFERENCE_IOU_EPS = 1e-5


def _reference_count_map(segmentation: Any, height: int, width: int) -> np.ndarray:
    """(H, W) uint8: how many of the annotation's parts (polygons, or RLEs of a list) cover each
    pixel, wrapped to uint8 as the reference's ``np.sum(...).astype(np.uint8)``. An empty
    segmentation covers nothing."""
    if isinstance(segmentation, (list, tuple)) and not segmentation:
        return np.zeros((height, width), np.uint8)
    if isinstance(segmentation, dict):  # one RLE (the reference crashes on it): one part
        parts = [segmentation]
    elif all(isinstance(s, (list, tuple)) for s in segmentation):
        parts = [[polygon] for polygon in segmentation]  # polygons, each decoded on its own
    elif all(isinstance(s, dict) for s in segmentation):
        parts = list(segmentation)
    else:  # one flat polygon
        parts = [segmentation]
    counts = sum(decode_segmentation(part, height, width).astype(np.int64) for part in parts)
    return counts.astype(np.uint8)


def reference_gt_mask(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """The ground truth of one referring expression as the released RefCOCO script scores it.

    Each annotation's parts are summed into a count map; the maps of several annotations (``ann_id``
    a list) are combined with a bitwise OR of those counts; the script's histogram then counts a
    pixel as foreground only when the value is exactly 1. So a pixel covered by two polygons of one
    object (value 2) is *not* ground truth: it adds to the union when predicted and to nothing
    otherwise.

    Args:
        segmentations: the annotations' COCO segmentations (polygons, RLE or lists of RLEs).
        height / width: the image size.

    Returns:
        (H, W) bool: the pixels whose value is exactly 1.

    Raises:
        MalformedSample: a segmentation cannot be decoded at this size.
    """
    value = np.zeros((height, width), np.uint8)
    for segmentation in segmentations:
        value |= _reference_count_map(segmentation, height, width)
    return value == 1


def reference_refseg_metrics(overlaps: Sequence[MaskOverlap],
                             has_seg: Sequence[bool]) -> dict[str, float | int]:
    """cIoU and gIoU as the released script computes them.

    * cIoU = Σ I / (Σ U + 1e-10) over the expressions answered with a ``[SEG]`` (the others are
      skipped);
    * gIoU = Σ (I / (U + 1e-5), or 1 when U = 0) over the answers with a ``[SEG]``, divided by the
      number of *all* expressions (an answer without ``[SEG]`` counts 0). The script's per-image
      averages weighted by the images' expression counts give this same number. (The script
      accumulates in float32; this is float64, a difference below 1e-6.)

    Returns:
        ``{'cIoU', 'gIoU', 'num_expressions'}`` (0 for both with no expression, where the script
        crashes).
    """
    if len(overlaps) != len(has_seg):
        raise ValueError(f'{len(overlaps)} overlaps but {len(has_seg)} has_seg flags')
    answered = [o for o, seg in zip(overlaps, has_seg) if seg]
    total_i = sum(o.intersection for o in answered)
    total_u = sum(o.union for o in answered)
    ious = [o.intersection / (o.union + REFERENCE_IOU_EPS) + (o.union == 0) for o in answered]
    return {'cIoU': total_i / (total_u + REFERENCE_CIOU_EPS),
            'gIoU': float(sum(ious)) / len(overlaps) if len(overlaps) else 0.0,
            'num_expressions': len(overlaps)}


__all__ = ['MaskOverlap', 'mask_overlap', 'refseg_metrics', 'reference_gt_mask',
           'reference_refseg_metrics']
