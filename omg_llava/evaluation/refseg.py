"""Referring-expression segmentation metrics: cIoU and gIoU (spec §9.3 "RES").

Every referring expression contributes one (intersection, union) pair of its predicted and ground-truth
foreground masks:

* **cIoU** (cumulative IoU) = Σ intersection / Σ union over all expressions;
* **gIoU** (generalised IoU) = mean of the per-expression IoUs, an expression whose union is empty (no ground
  truth and nothing predicted) counting 1.0. The reference averages per image and then weights the images by
  their number of expressions, which is exactly the plain mean over expressions computed here.

An answer without ``[SEG]`` is an empty prediction: intersection 0, union = ground-truth area (the reference
skipped it for cIoU and crashed when a whole image had none, spec §10.20).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


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
        raise ValueError(f'predicted mask {pred.shape} and ground truth {gt.shape} differ in size; predictions must '
                         'be at the original image size (H, W) given in the annotation file')
    return MaskOverlap(int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum()))


def refseg_metrics(overlaps: Sequence[MaskOverlap] | Iterable[tuple[int, int]]) -> dict[str, float | int]:
    """cIoU and gIoU of a set of expressions.

    Args:
        overlaps: one :class:`MaskOverlap` (or ``(intersection, union)`` pair) per referring expression.

    Returns:
        ``{'cIoU', 'gIoU', 'num_expressions'}``; fractions in [0, 1]. With no expression both are 0; when every
        union is empty cIoU is 1.0 (nothing to find, nothing predicted), like the per-expression convention.
    """
    pairs = [o if isinstance(o, MaskOverlap) else MaskOverlap(int(o[0]), int(o[1])) for o in overlaps]
    if not pairs:
        return {'cIoU': 0.0, 'gIoU': 0.0, 'num_expressions': 0}
    total_i = sum(p.intersection for p in pairs)
    total_u = sum(p.union for p in pairs)
    return {'cIoU': total_i / total_u if total_u else 1.0,
            'gIoU': float(np.mean([p.iou for p in pairs])),
            'num_expressions': len(pairs)}


__all__ = ['MaskOverlap', 'mask_overlap', 'refseg_metrics']
