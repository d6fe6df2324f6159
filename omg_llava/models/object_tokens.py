"""Object-centric visual tokens (spec §1.3): pixel-shuffled CLIP features plus an object prior.

Both functions are pure tensor code; :class:`~omg_llava.models.omg_seg_encoder.OMGSegVisualEncoder`
wires them to the backbone and the head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pixel_shuffle_down(features: Tensor, ratio: int) -> Tensor:
    """Space-to-depth: (B, C, H, W) → (B, C·r², H/r, W/r).

    Output channel ``(dy·r + dx)·C + c`` of cell (row, col) is input ``[c, r·row + dy, r·col + dx]``
    (offset-major, channel-minor), the order the projector's ``model_feat.0`` columns were trained
    on. Note that this differs from ``F.pixel_unshuffle`` (channel-major).
    """
    B, C, H, W = features.shape
    if H % ratio or W % ratio:
        raise ValueError(f'feature map {H}x{W} is not divisible by the pixel-shuffle ratio '
                         f'{ratio}: the input image side must be a multiple of {32 * ratio} pixels')
    x = features.view(B, C, H // ratio, ratio, W // ratio, ratio)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(B, ratio * ratio * C, H // ratio, W // ratio)


def object_prior(class_logits: Tensor, mask_logits: Tensor, query_tokens: Tensor,
                 grid_size: tuple[int, int],
                 smooth: float = 0.5, mask_size: tuple[int, int] | None = None,
                 query_chunk: int = 16) -> tuple[Tensor, Tensor]:
    """Per-cell query mixture and the winning query of each cell.

    Args:
        class_logits: (B, Q, K+1) last-layer class logits (no IoU channel), no-object last.
        mask_logits: (B, Q, H, W) last-layer mask logits at the input size, or at the decoder's
            resolution when ``mask_size`` is given.
        query_tokens: (B, Q, 2C) ``[content | positional]`` of each query.
        grid_size: (h, w) token grid (input size / 64 for ratio 2).
        smooth: ``P = (smooth + (1 - smooth)·s) · sigmoid(mask)`` with s the best real-class
            probability.
        mask_size: the input size (H, W): ``mask_logits`` are first upsampled to it (bilinear),
            ``query_chunk`` queries at a time, so the (B, Q, H, W) full-size maps never exist at
            once (300 at 1024² are 1.2 GB per float32 tensor). Every step is per query, so the
            result is the same as upsampling all at once.
        query_chunk: queries per chunk with ``mask_size``.

    Returns:
        ``(prior, blocked)``: prior (B, h·w, 2C) = softmaxᵀ(P over queries) · query_tokens, and
        blocked (B, Q, h·w), True where the query is *not* the argmax of P in that cell.
        The softmax is over probabilities in [0, 1], so the mixture is nearly uniform (spec §10.22);
        that is what the projector was trained on.
    """
    scores = class_logits.softmax(dim=-1)[..., :-1].max(dim=-1).values  # (B, Q)
    weights = (smooth + (1.0 - smooth) * scores)[..., None, None]  # (B, Q, 1, 1)
    if mask_size is None:
        probs = _cell_probabilities(mask_logits, weights, grid_size)
    else:
        probs = torch.cat([
            _cell_probabilities(F.interpolate(mask_logits[:, q:q + query_chunk], size=mask_size,
                                              mode='bilinear',
                                              align_corners=False), weights[:, q:q + query_chunk],
                                grid_size)
            for q in range(0, mask_logits.shape[1], query_chunk)], dim=1)  # (B, Q, hw)
    prior = torch.einsum('bqn,bqc->bnc', probs.softmax(dim=1), query_tokens)  # (B, hw, 2C)
    winner = probs.argmax(dim=1)  # (B, hw)
    query_index = torch.arange(probs.shape[1], device=probs.device)
    blocked = query_index[None, :, None] != winner[:, None, :]  # (B, Q, hw)
    return prior, blocked


def _cell_probabilities(mask_logits: Tensor, weights: Tensor, grid_size: tuple[int, int]) -> Tensor:
    """(B, q, H, W) full-size mask logits, (B, q, 1, 1) weights → (B, q, h·w) weighted probabilities
    per cell."""
    probs = weights * mask_logits.sigmoid()  # (B, q, H, W)
    return F.interpolate(probs, size=grid_size, mode='bilinear', align_corners=False).flatten(2)
