"""Losses of OMG-LLaVA beyond the LM cross-entropy (spec §6.2, §6.3).

* :func:`seg_mask_losses`: dice and BCE of every [SEG] decoder prediction against its ground-truth mask,
  on Mask2Former's uncertainty-sampled points.
* :func:`pretrain_alignment_loss`: the pretrain stage's 10 × MSE that trains ``projector_text2vision`` as an
  approximate inverse of the visual projector's query path.
* :func:`object_token_hint_loss`: an optional finetune term (not in the reference, off by default) that pulls each
  [SEG] query towards the encoder's own query for the asked-for object; see its docstring.
* :func:`seg_attention_hint_loss`: an optional finetune term (not in the reference, used by no config) that
  supervises where an LLM head looks from each [SEG].
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
    """Mask-loss settings of the reference finetune (Mask2Former point sampling, mmdet loss weights, and the
    extra scales OMG-LLaVA applies to the summed terms)."""

    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    dice_weight: float = 5.0
    bce_weight: float = 5.0
    dice_eps: float = 1.0
    dice_scale: float = 0.1
    bce_scale: float = 0.4


def dice_loss(pred_logits: Tensor, targets: Tensor, eps: float = 1.0) -> Tensor:
    """Naive dice summed over masks: Σ_n 1 − (2Σpg + eps) / (Σp + Σg + eps). Shapes (N, P) → scalar."""
    probs = pred_logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1) + eps
    denominator = probs.sum(-1) + targets.sum(-1) + eps
    return (1 - numerator / denominator).sum()


def seg_mask_losses(step_logits: list[Tensor], gt_masks: Tensor, cfg: MaskLossConfig = MaskLossConfig()
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
            coords = get_uncertain_point_coords_with_randomness(logits, None, cfg.num_points, cfg.oversample_ratio,
                                                                cfg.importance_sample_ratio)  # (N, P, 2)
            point_targets = point_sample(targets, coords, align_corners=False).squeeze(1)  # (N, P)
        point_logits = point_sample(logits, coords, align_corners=False).squeeze(1)  # (N, P)
        total_dice = total_dice + cfg.dice_weight * dice_loss(point_logits, point_targets, cfg.dice_eps) / (
            num_masks + AVG_EPS)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction='sum')
        total_bce = total_bce + cfg.bce_weight * bce / (point_logits.numel() + AVG_EPS)
    return {'loss_dice': cfg.dice_scale * total_dice, 'loss_mask': cfg.bce_scale * total_bce}


def pretrain_alignment_loss(query_tokens: Tensor, query_blocked: Tensor, project_queries, text2vision,
                            weight: float = 10.0) -> Tensor:
    """``weight`` · MSE between query tokens x and ``text2vision(project_queries(x))`` (spec §6.3).

    Args:
        query_tokens: (B, Q, 2C) [content | positional] of the encoder.
        query_blocked: (B, Q, h·w); the loss uses the queries with **any** blocked cell (the reference's
            choice, nearly all queries — not the valid-token rule).
        project_queries: the visual projector's query path (2C → D).
        text2vision: the text→vision projector (D → 2C).
    """
    selected = query_tokens[query_blocked.any(dim=-1)]  # (n, 2C)
    predicted = text2vision(project_queries(selected))
    return weight * F.mse_loss(predicted.float(), selected.float())


def non_negative_weight(name: str, value: float) -> float:
    """``value``, or a ValueError naming the loss weight ``name`` if it is negative (0 turns a term off)."""
    if value < 0:
        raise ValueError(f'{name} must be >= 0 (0 turns that loss off), got {value}')
    return value


def matching_object_tokens(gt_masks: Tensor, mask_logits: Tensor, valid: Tensor, image_idxs: Tensor,
                           min_iou: float = 0.5) -> tuple[Tensor, Tensor]:
    """For each ground-truth mask, the visual-token query of its image whose own mask overlaps it best.

    Each image's query masks are upsampled once, however many ground truths it has (an image of the finetune has
    several [SEG]s), and the overlaps are one matrix product per batch.

    Args:
        gt_masks: (N, S, S) binary masks at the network input size.
        mask_logits: (B, Q, h, w) last-step mask logits of the object queries of the batch's images.
        valid: (B, Q) bool, the queries that are visual tokens of their image (win at least one cell).
        image_idxs: (N,) long, the image of each ground truth.
        min_iou: matches below this IoU are dropped.

    Returns:
        ``(query_idxs, found)``: (N,) long index of the best valid query of the mask's image and (N,) bool,
        IoU >= ``min_iou``.
    """
    with torch.no_grad():
        size = tuple(gt_masks.shape[-2:])
        images, per_mask = image_idxs.unique(return_inverse=True)  # (U,), (N,) position in ``images``
        pred = F.interpolate(mask_logits[images].float(), size=size, mode='bilinear', align_corners=False) > 0
        pred = pred.flatten(2).float()  # (U, Q, S·S)
        gt = gt_masks.flatten(1).float()  # (N, S·S)
        U, Q = pred.shape[:2]
        overlaps = (pred.reshape(U * Q, -1) @ gt.T).view(U, Q, -1)  # (U, Q, N) pixel counts, exact in fp32
        inter = overlaps[per_mask, :, torch.arange(len(gt), device=gt.device)]  # (N, Q)
        union = (pred.sum(-1)[per_mask] + gt.sum(-1, keepdim=True) - inter).clamp(min=1)
        iou = torch.where(valid[image_idxs], inter / union, torch.full_like(inter, -1.0))
        best_iou, query_idxs = iou.max(dim=-1)
    return query_idxs, best_iou >= min_iou


def object_token_hint_loss(seg_queries: Tensor, query_tokens: Tensor, valid: Tensor, query_idxs: Tensor,
                           found: Tensor, temperature: float = 10.0) -> Tensor:
    """Pull each [SEG] query towards the object query that segments its ground truth.

    The [SEG] path decodes ``projector_text2vision(h)`` as if it were an object query; the released decoder (and
    the tiny one after single-query training) turns the asked-for object's own query into its mask. A 7B LLM
    finds that mapping from the mask losses alone; a tiny LLM trained from scratch did not (its [SEG] queries lay
    far from every object query: nearest one the target's in 19-21% of cases). This term supervises the choice
    directly: MSE to the target query plus cross-entropy over the cosine similarities (× ``temperature``) to
    the valid queries of the image.

    Args:
        seg_queries: (N, 2C) ``projector_text2vision`` outputs of the [SEG] tokens.
        query_tokens: (N, Q, 2C) ``[content | positional]`` of the object queries of each [SEG]'s image.
        valid / query_idxs / found: see :func:`matching_object_tokens`.

    Returns:
        scalar, 0 (still in the graph) when no [SEG] has a matching token.
    """
    if not found.any():
        return seg_queries.sum() * 0.0
    queries, tokens = seg_queries[found].float(), query_tokens[found].float()
    targets = query_idxs[found]
    target_tokens = tokens[torch.arange(len(targets), device=tokens.device), targets]  # (n, 2C)
    mse = F.mse_loss(queries, target_tokens)
    cosine = torch.einsum('nc,nqc->nq', F.normalize(queries, dim=-1), F.normalize(tokens, dim=-1))
    logits = (cosine * temperature).masked_fill(~valid[found], float('-inf'))
    return mse + F.cross_entropy(logits, targets)


def seg_class_loss(seg_class_logits: Tensor, token_class_logits: Tensor, found: Tensor) -> Tensor:
    """Make each decoded [SEG] query classify as its object: the decoder's own class head, read on the [SEG]
    query, against the class its matched visual-token query is given (a label the frozen encoder supplies).

    The mask losses tell a [SEG] that picked the red star instead of the blue one only which pixels were wrong;
    this term names what was wrong (the colour, the kind: the class embeddings are word bags of the names).

    Args:
        seg_class_logits: (N, K) class logits of the decoded [SEG] queries (no-object and IoU columns removed).
        token_class_logits: (N, K) class logits of each [SEG]'s matched visual-token query (same columns).
        found: (N,) bool, the [SEG]s with a matched token (:func:`matching_object_tokens`).

    Returns:
        Mean cross-entropy against the matched tokens' most likely class over the found [SEG]s (0 in the graph
        if none).
    """
    if not bool(found.any()):
        return seg_class_logits.sum() * 0.0
    targets = token_class_logits[found].argmax(-1)
    return F.cross_entropy(seg_class_logits[found].float(), targets)


def seg_attention_hint_loss(attention_probs: Tensor, seg_rows: Tensor, seg_cols: Tensor, target_cols: Tensor,
                            found: Tensor, head: int | None = 0) -> Tensor:
    """Teach one attention head to look, from each [SEG], at the visual token of the asked-for object.

    The [SEG] mask is decoded from the LLM's last hidden state at the [SEG] position, so that state must carry
    the chosen object's token. A tiny LLM trained from scratch reads objects in text answers but its [SEG] states
    ignore the visual tokens; this term supervises the lookup itself: −log of the attention probability from the
    [SEG] position to the target object token. On the tiny synthetic model it teaches the look (72% of held-out
    [SEG]s instead of 20%) but did not raise the held-out cIoU (docs/tiny_model.md), so no config uses it.

    Args:
        attention_probs: (B, nH, T, T) attention probabilities of one LLM layer.
        seg_rows / seg_cols: (N,) sample index and sequence position of every [SEG] input token.
        target_cols: (N,) sequence position of the visual token of each [SEG]'s ground-truth object.
        found: (N,) bool, the [SEG]s whose object has a visual token (:func:`matching_object_tokens`).
        head: the supervised head; ``None`` supervises the heads' mean probability (the best placed head takes
            most of the gradient).

    Returns:
        scalar, 0 (still in the graph) when no [SEG] has a matching token.
    """
    if not found.any():
        return attention_probs.sum() * 0.0
    rows, cols, targets = seg_rows[found], seg_cols[found], target_cols[found]
    if head is None:
        probs = attention_probs[rows, :, cols, targets].float().mean(dim=-1)  # (n,)
    else:
        probs = attention_probs[rows, head, cols, targets].float()
    return -(probs + 1e-6).log().mean()
