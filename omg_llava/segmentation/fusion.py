"""Post-processing of the head's last-layer class and mask logits (OMG-Seg spec §3.3-3.5).

* Panoptic: the Mask2Former rule of ``OMGFusionHead.panoptic_postprocess`` (mmdet's
  ``MaskFormerFusionHead`` with ``filter_low_score``), keeping track of which query painted each
  segment so that video tracks keep their ids.
* Instance: top-k (query, thing class) pairs, scored by class probability x mean mask probability.
* Semantic (not in the reference, defined here): per pixel the class of the panoptic segment that
  wins it, stuff and things alike; pixels no segment keeps are void.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

INSTANCE_OFFSET = 1000  # mmdet's panoptic id = class + instance_id * INSTANCE_OFFSET


@dataclass
class PanopticOutput:
    """One image's panoptic segmentation.

    Attributes:
        labels: (H, W) int64 class per pixel; ``num_classes`` = void.
        queries: (H, W) int64 query (track) that painted the pixel; -1 = void. A stuff class painted
            by several queries keeps each query's pixels apart here, but has one class (its segments
            merge, as in mmdet).
        segments: per kept query in query order, ``(query, label, score)`` with the class
            probability as score.
    """

    labels: Tensor
    queries: Tensor
    segments: list[tuple[int, int, float]]


def panoptic_fusion(class_logits: Tensor, mask_logits: Tensor, num_things: int, *,
                    score_thr: float = 0.0, overlap_thr: float = 0.8) -> PanopticOutput:
    """Mask2Former panoptic inference with OMG-Seg's test settings.

    Args:
        class_logits: (Q, K+1) with the no-object class last.
        mask_logits: (Q, H, W) at the output resolution.
        num_things: classes [0, num_things) are things.
        score_thr: keep queries whose best class (no-object included) is a real class with
            probability > ``score_thr`` (OMG-Seg configs: 0.0).
        overlap_thr: drop a query whose won pixels are fewer than this fraction of its own mask
            (0.8).

    Returns:
        :class:`PanopticOutput`; a query's painted region is its won pixels with probability >= 0.5,
        and the won area is counted before that filter (as in the reference).
    """
    num_classes = class_logits.shape[-1] - 1
    scores, labels = class_logits.float().softmax(-1).max(-1)  # (Q,)
    keep = (labels != num_classes) & (scores > score_thr)
    kept = keep.nonzero().flatten()
    H, W = mask_logits.shape[-2:]
    label_map = torch.full((H, W), num_classes, dtype=torch.long, device=mask_logits.device)
    query_map = torch.full((H, W), -1, dtype=torch.long, device=mask_logits.device)
    segments = []
    if len(kept) == 0:
        return PanopticOutput(label_map, query_map, segments)
    winner = torch.empty((H, W), dtype=torch.long, device=mask_logits.device)  # index into kept
    rows = max(1, (1 << 24) // max(1, len(kept) * W))  # ~64 MB of probabilities at a time
    for top in range(0, H, rows):
        probs = mask_logits[kept, top:top + rows].float().sigmoid()  # (k, rows, W)
        winner[top:top + rows] = (scores[kept, None, None] * probs).argmax(0)
    for k, query in enumerate(kept.tolist()):
        won = winner == k
        area = int(won.sum())
        own = mask_logits[query].float().sigmoid() >= 0.5
        original = int(own.sum())
        if area == 0 or original == 0 or area / original < overlap_thr:
            continue
        painted = won & own
        label = int(labels[query])
        label_map[painted] = label
        query_map[painted] = query
        segments.append((query, label, float(scores[query])))
    return PanopticOutput(label_map, query_map, segments)


def semantic_map(panoptic: PanopticOutput) -> Tensor:
    """(H, W) int64 class of the winning panoptic segment per pixel (void = ``num_classes``)."""
    return panoptic.labels.clone()


@dataclass
class InstanceOutput:
    """Instances of one image, highest score first: ``queries`` (N,), ``labels`` (N,), ``scores``
    (N,), ``masks`` (N, H, W) bool."""

    queries: Tensor
    labels: Tensor
    scores: Tensor
    masks: Tensor


def instance_fusion(class_logits: Tensor, mask_logits: Tensor, num_things: int, *,
                    max_per_image: int = 100, score_thr: float = 0.0) -> InstanceOutput:
    """Top-``max_per_image`` (query, class) pairs over the real classes (softmax over K+1, no-object
    dropped), things only, each scored class probability x mean mask probability inside its mask
    (logit > 0).

    Args:
        class_logits: (Q, K+1); mask_logits: (Q, H, W).
        score_thr: drop pairs below this final score (the reference keeps all).
    """
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.float().softmax(-1)[:, :num_classes]  # (Q, K)
    top_scores, top = probs.flatten().topk(min(max_per_image, probs.numel()))
    queries, labels = top // num_classes, top % num_classes
    thing = labels < num_things
    queries, labels, top_scores = queries[thing], labels[thing], top_scores[thing]
    masks = mask_logits[queries] > 0  # (N, H, W)
    sig = mask_logits[queries].float().sigmoid()
    mask_scores = (sig * masks).flatten(1).sum(-1) / (masks.flatten(1).sum(-1) + 1e-6)
    scores = top_scores * mask_scores
    order = scores.argsort(descending=True)
    order = order[scores[order] >= score_thr]
    return InstanceOutput(queries[order], labels[order], scores[order], masks[order])
