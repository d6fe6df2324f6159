"""The OMG-LLaVA projectors (spec §4): visual tokens → LLM embeddings, and [SEG] hidden states →
queries.

Parameter names follow the released checkpoints: ``projector.model.{query_proj, model.0, model.2,
model_feat.0, model_feat.2, seperate_embed}`` and ``projector_text2vision.model.{0, 2}``. The
wrapper attribute ``model`` exists only to produce that ``.model.`` level of the names.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from omg_llava.registry import MODELS


def gelu_mlp(in_dim: int, out_dim: int, depth: int = 2) -> nn.Sequential:
    """Linear, then (GELU, Linear) × (depth − 1): keys ``0``, ``2``, ... (exact erf GELU)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class _VisualProjectorLayers(nn.Module):
    def __init__(self, query_channels: int, pixel_channels: int, clip_channels: int,
                 llm_hidden_size: int, depth: int) -> None:
        super().__init__()
        # lift [q | p] to the CLIP token width
        self.query_proj = nn.Linear(query_channels, clip_channels)
        # query (and visual-prompt) tokens
        self.model = gelu_mlp(clip_channels, llm_hidden_size, depth)
        self.model_feat = gelu_mlp(pixel_channels, llm_hidden_size, depth)  # pixel tokens
        # The reference spells the separator key "seperate_embed"; the name is part of the released
        # files.
        self.seperate_embed = nn.Embedding(1, llm_hidden_size)


@MODELS.register_module()
class OMGVisualProjector(nn.Module):
    """Maps the encoder's tokens to the LLM: ``[pixel tokens, separator, valid query tokens]`` per
    image.

    Args:
        query_channels: width of a query token [content | positional] (2C = 512).
        clip_channels: width of a pixel-shuffled CLIP token (4·C5 = 6144); queries are lifted to it.
        llm_hidden_size: LLM width D (4096).
        depth: MLP depth (2).
    Pixel tokens are ``clip_channels + query_channels`` wide (6656).
    """

    def __init__(self, query_channels: int = 512, clip_channels: int = 6144,
                 llm_hidden_size: int = 4096, depth: int = 2) -> None:
        super().__init__()
        self.model = _VisualProjectorLayers(query_channels, clip_channels + query_channels,
                                            clip_channels, llm_hidden_size, depth)

    def forward(self, pixel_tokens: Tensor, query_tokens: Tensor,
                query_blocked: Tensor) -> list[Tensor]:
        """Project one batch of encoder outputs.

        Args:
            pixel_tokens: (B, h·w, clip_channels + query_channels).
            query_tokens: (B, Q, query_channels).
            query_blocked: (B, Q, h·w) bool; a query with any False is valid.

        Returns:
            B tensors (h·w + 1 + n_valid_b, D): pixel tokens, separator, valid queries in ascending
            index.
        """
        pixels = self.model.model_feat(pixel_tokens)  # (B, hw, D)
        queries = self.project_queries(query_tokens)  # (B, Q, D)
        valid = ~query_blocked.all(dim=-1)  # (B, Q)
        separator = self.model.seperate_embed.weight  # (1, D)
        return [torch.cat([pixels[b], separator.to(pixels.dtype), queries[b][valid[b]]])
                for b in range(len(pixels))]

    def project_queries(self, queries: Tensor) -> Tensor:
        """Query or visual-prompt features (..., query_channels) → (..., D):
        ``model(query_proj(x))``."""
        return self.model.model(self.model.query_proj(queries))


@MODELS.register_module()
class Text2VisionProjector(nn.Module):
    """[SEG] hidden state (…, D) → decoder query (…, 2C) = [content | positional] (``model.0``,
    ``model.2``)."""

    def __init__(self, llm_hidden_size: int = 4096, query_channels: int = 512,
                 depth: int = 2) -> None:
        super().__init__()
        self.model = gelu_mlp(llm_hidden_size, query_channels, depth)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.model(hidden_states)
