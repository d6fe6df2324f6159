"""Losses of OMG-LLaVA beyond the LM cross-entropy (spec §6.2, §6.3).

* :func:`seg_mask_losses`: dice and BCE of every [SEG] decoder prediction against its ground-truth
  mask, on Mask2Former's uncertainty-sampled points.
* :func:`pretrain_alignment_loss`: the pretrain stage's 10 × MSE that trains
  ``projector_text2vision`` as an approximate inverse of the visual projector's query path.

Training terms outside the released recipe live in :mod:`omg_llava.models.auxiliary_losses`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from mmcv.ops import point_sample
from mmdet.models.utils import get_uncertain_point_coords_with_randomness
from torch import Tensor

AVG_EPS = 1e-4  # added to every average's denominator, as the reference does


@dataclass(frozen=True)
class MaskLossConfig:
    """Mask-loss settings of the reference finetune (Mask2Former point sampling, mmdet loss weights,
    and the extra scales OMG-LLaVA applies to the summed terms)."""

    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    dice_weight: float = 5.0
    bce_weight: float = 5.0
    dice_eps: float = 1.0
    dice_scale: float = 0.1
    bce_scale: float = 0.4


def dice_loss(pred_logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Naive dice summed over masks: Σ_n 1 − (2Σpg + eps) / (Σp + Σg + eps). Shapes (N, P) →
    scalar."""
    probs = pred_logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1) + eps
    denominator = probs.sum(-1) + targets.sum(-1) + eps
    return (1 - numerator / denominator).sum()


def seg_mask_losses(step_logits: list[Tensor], gt_masks: Tensor,
                    cfg: MaskLossConfig = MaskLossConfig()
                    ) -> dict[str, Tensor]:
    """Dice and BCE of every decoder step's [SEG] masks.

    Args:
        step_logits: per decoder step, (N, 1, h, w) mask logits of the N [SEG] queries.
        gt_masks: (N, H, W) binary masks at the network input size, in the same order.

    Returns:
        ``loss_dice`` = dice_scale · Σ_steps dice_weight · Σ_n dice / (N + 1e-4) and ``loss_mask`` =
        bce_scale · Σ_steps bce_weight · Σ BCE / (N·P + 1e-4).
    """
    num_masks = len(gt_masks)
    targets = gt_masks[:, None].to(step_logits[0].dtype)  # (N, 1, H, W)
    total_dice = step_logits[0].new_zeros(())
    total_bce = step_logits[0].new_zeros(())
    for logits in step_logits:
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(logits, None, cfg.num_points,
                                                                cfg.oversample_ratio,
                                                                # (N, P, 2)
                                                                cfg.importance_sample_ratio)
            point_targets = point_sample(targets, coords, align_corners=False).squeeze(1)  # (N, P)
        point_logits = point_sample(logits, coords, align_corners=False).squeeze(1)  # (N, P)
        total_dice = total_dice + cfg.dice_weight * dice_loss(point_logits, point_targets,
                                                              cfg.dice_eps) / (
            num_masks + AVG_EPS)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction='sum')
        total_bce = total_bce + cfg.bce_weight * bce / (point_logits.numel() + AVG_EPS)
    return {'loss_dice': cfg.dice_scale * total_dice, 'loss_mask': cfg.bce_scale * total_bce}


def pretrain_alignment_loss(query_tokens: Tensor, query_blocked: Tensor, project_queries,
                            text2vision, weight: float = 10.0) -> Tensor:
    """``weight`` · MSE between query tokens x and ``text2vision(project_queries(x))`` (spec §6.3).

    Args:
        query_tokens: (B, Q, 2C) [content | positional] of the encoder.
        query_blocked: (B, Q, h·w); the loss uses the queries with **any** blocked cell (the
            reference's choice, nearly all queries — not the valid-token rule).
        project_queries: the visual projector's query path (2C → D).
        text2vision: the text→vision projector (D → 2C).
    """
    selected = query_tokens[query_blocked.any(dim=-1)]  # (n, 2C)
    predicted = text2vision(project_queries(selected))
    return weight * F.mse_loss(predicted.float(), selected.float())


def non_negative_weight(name: str, value: float) -> float:
    """``value``, or a ValueError naming the loss weight ``name`` if it is negative (0 turns a term
    off)."""
    if value < 0:
        raise ValueError(f'{name} must be >= 0 (0 turns that loss off), got {value}')
    return value
