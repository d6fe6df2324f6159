"""Inference attention of the OMG-Seg head without its large work tensors.

At a 1024² input the head's two attentions hold most of an image encoding's transient memory on a
CPU (measured on the full-size encoder, bf16, one image):

* the pixel decoder's multi-scale deformable attention (21504 queries, 8 heads, 3 levels, 4
  points): mmcv's CPU path samples every level for every query at once, stacks the levels and then
  weights them, ~1.1 GB of work tensors;
* the masked cross-attention of the query decoder (300 queries over up to 128² keys, 8 heads):
  ``nn.MultiheadAttention`` returns the head-averaged attention weights by default, so it builds
  the full (8, 300, 16384) score, softmax and weight tensors, ~0.8 GB.

:func:`use_lean_attention_` switches a head's modules, in place, to subclasses that compute the same
outputs in bounded memory: the deformable attention samples one level and a chunk of queries at a
time and accumulates the weighted sum; the cross- and self-attention ask for no weights, so torch
uses its fused scaled-dot-product kernel. Parameters, their names and the state dict do not change.
Outputs equal the originals up to float summation order (tests/models/test_lean_attention.py).
Inference only switches (``build_model``, the segmenter); training keeps mmcv's modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from torch import Tensor, nn

#: queries sampled per chunk by the lean deformable attention (8 heads x 32 channels x 4 points x
#: 4096 queries x 4 bytes = 16 MB per level)
DEFORMABLE_QUERY_CHUNK = 4096


def deformable_sampling(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """The core of multi-scale deformable attention, one level at a time.

    Args:
        value: (B, S, heads, c) projected values of all levels, level-major (S = Σ h_l·w_l).
        spatial_shapes: (L, 2) (h_l, w_l).
        sampling_locations: (B, Nq, heads, L, P, 2) (x, y) in [0, 1] of each level.
        attention_weights: (B, Nq, heads, L, P), softmax-normalised over L·P.

    Returns:
        (B, Nq, heads·c): Σ over levels and points of weight × bilinear sample (zeros outside,
        ``align_corners=False``), computed in float32.
    """
    B, _, heads, c = value.shape
    Nq = sampling_locations.shape[1]
    out = value.new_zeros((B * heads, c, Nq), dtype=torch.float32)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        # (B*heads, c, h, w)
        level_value = (value[:, start:start + h * w].float().permute(0, 2, 3, 1)
                       .reshape(B * heads, c, h, w))
        start += h * w
        # (B*heads, Nq, P, 2) in [-1, 1]
        grid = (2 * sampling_locations[:, :, :, level].float() - 1).transpose(1, 2).flatten(0, 1)
        # (B*heads, 1, Nq, P)
        weights = attention_weights[:, :, :, level].float().transpose(1, 2).flatten(0, 1)[:, None]
        sampled = F.grid_sample(level_value, grid, mode='bilinear', padding_mode='zeros',
                                align_corners=False)  # (B*heads, c, Nq, P)
        out += (sampled * weights).sum(-1)
    return out.view(B, heads * c, Nq).transpose(1, 2)


class LeanMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's multi-scale deformable attention, evaluated in query chunks with one level sampled at
    a time off the CUDA kernels' devices (module docstring). Same parameters and arguments."""

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                identity: Tensor | None = None, query_pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None, reference_points: Tensor | None = None,
                spatial_shapes: Tensor | None = None, level_start_index: Tensor | None = None,
                **kwargs) -> Tensor:
        """As :class:`mmcv.ops.MultiScaleDeformableAttention` (2-d reference points, dropout and
        identity added); ``query`` (B, Nq, C) with ``batch_first``, (Nq, B, C) otherwise."""
        if query.is_cuda or reference_points.shape[-1] != 2:
            return super().forward(query, key, value, identity, query_pos, key_padding_mask,
                                   reference_points, spatial_shapes, level_start_index, **kwargs)
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        B, Nq, _ = query.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(B, value.shape[1], self.num_heads, -1)
        # (L, 2) as (w, h): offsets are in cells of their level
        normalizer = spatial_shapes.flip(-1).to(torch.float32)
        chunks = []
        for start in range(0, Nq, DEFORMABLE_QUERY_CHUNK):
            part = query[:, start:start + DEFORMABLE_QUERY_CHUNK]
            n = part.shape[1]
            offsets = self.sampling_offsets(part).view(B, n, self.num_heads, self.num_levels,
                                                       self.num_points, 2)
            weights = self.attention_weights(part).view(B, n, self.num_heads, -1).softmax(-1)
            weights = weights.view(B, n, self.num_heads, self.num_levels, self.num_points)
            reference = reference_points[:, start:start + n, None, :, None, :]
            locations = reference + offsets / normalizer[None, None, None, :, None, :]
            sampled = deformable_sampling(value, spatial_shapes, locations, weights)
            chunks.append(self.output_proj(sampled.to(part.dtype)))
        output = torch.cat(chunks, dim=1)
        if not self.batch_first:
            output = output.transpose(0, 1)
        return self.dropout(output) + identity


class WeightlessMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` without attention weights: torch's fused scaled-dot-product kernel
    on the projected heads, a boolean mask passed as it is (torch's own module turns it into a float
    (B·heads, L, S) mask first, 157 MB per decoder step at 1024²). Same parameters; returns
    ``(output, None)``."""

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, None]:
        if (key_padding_mask is not None or is_causal or not self._qkv_same_embed_dim
                or self.bias_k is not None or self.add_zero_attn):
            return super().forward(query, key, value, key_padding_mask, False, attn_mask,
                                   average_attn_weights, is_causal)
        if not self.batch_first:  # (L, B, E) → (B, L, E)
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        B, L, E = query.shape
        S, heads = key.shape[1], self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else \
            self.in_proj_bias.chunk(3)

        def split_heads(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
            return F.linear(x, weight, bias).view(B, x.shape[1], heads, -1).transpose(1, 2)

        q, k, v = split_heads(query, w_q, b_q), split_heads(key, w_k, b_k), \
            split_heads(value, w_v, b_v)
        if attn_mask is not None:
            attn_mask = attn_mask.view(B, heads, L, S) if attn_mask.dim() == 3 else attn_mask
            if attn_mask.dtype == torch.bool:
                attn_mask = ~attn_mask  # torch's module: True = blocked; the kernel: True = kept
            else:
                attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, E))
        return (out if self.batch_first else out.transpose(0, 1)), None


def use_lean_attention_(head: nn.Module) -> int:
    """Switch every deformable attention and ``nn.MultiheadAttention`` under ``head`` to the lean
    subclasses above, in place (parameters untouched); returns how many modules were switched."""
    switched = 0
    for module in head.modules():
        if type(module) is MultiScaleDeformableAttention:
            module.__class__ = LeanMultiScaleDeformableAttention
            switched += 1
        elif type(module) is nn.MultiheadAttention:
            module.__class__ = WeightlessMultiheadAttention
            switched += 1
    return switched
