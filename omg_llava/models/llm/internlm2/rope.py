"""Rotary position embedding of InternLM2 (rotate-half convention) with linear and dynamic-NTK
scaling.

The tables are a pure function of the current positions: nothing is cached on a module, so the
result for a short sequence never depends on a longer one having been run before (the hub remote
code grows a cache and keeps the scaled base once it has seen a long input).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .configuration import InternLM2Config, RopeSettings, rope_settings


def rope_base(rope: RopeSettings, head_dim: int, max_position_embeddings: int,
              seq_len: int) -> float:
    """RoPE base for a sequence that needs ``seq_len`` positions.

    Dynamic NTK (beyond ``max_position_embeddings`` only):
    ``θ · (factor · seq_len / max_pos − (factor − 1)) ** (head_dim / (head_dim − 2))``; otherwise θ.
    """
    if rope.type != 'dynamic' or seq_len <= max_position_embeddings:
        return rope.theta
    factor = rope.factor
    return rope.theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (
        head_dim / (head_dim - 2)
    )


def rope_inv_freq(base: float, head_dim: int, device: torch.device | None = None) -> Tensor:
    """(head_dim / 2,) inverse frequencies ``1 / base ** (2i / head_dim)`` in fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (base ** exponents)


def rotary_cos_sin(position_ids: Tensor, config: InternLM2Config,
                   dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (B, S, head_dim), built from ``cat(freqs, freqs)`` in fp32, cast to
    ``dtype``.

    Args:
        position_ids: (B, S) integer positions.
        config: supplies the RoPE settings (:func:`rope_settings`), ``max_position_embeddings`` and
            the head size.
    """
    head_dim = config.hidden_size // config.num_attention_heads
    rope = rope_settings(config)
    base = rope.theta
    if rope.type == 'dynamic':
        # positions 0 … max must fit
        needed = int(position_ids.max()) + 1 if position_ids.numel() else 0
        base = rope_base(rope, head_dim, config.max_position_embeddings, needed)
    positions = position_ids.float()
    if rope.type == 'linear':
        positions = positions / rope.factor
    # (B, S, hd / 2)
    freqs = positions[..., None] * rope_inv_freq(base, head_dim, position_ids.device)
    angles = torch.cat((freqs, freqs), dim=-1)  # (B, S, hd)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] → [−x2, x1]`` over the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, S, hd) queries or keys by (B, S, hd) tables: ``x·cos +
    rotate_half(x)·sin``."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]
