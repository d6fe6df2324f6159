"""Projectors: released key names/shapes at full size, token sequence layout."""
from __future__ import annotations

import torch

from omg_llava.models import OMGVisualProjector, Text2VisionProjector

from conftest import read_key_manifest


def test_full_size_projector_keys_equal_the_pretrain_checkpoint():
    with torch.device('meta'):
        projector, text2vision = OMGVisualProjector(), Text2VisionProjector()
    got = {f'projector.{k}': tuple(v.shape) for k, v in projector.state_dict().items()}
    got.update({f'projector_text2vision.{k}': tuple(v.shape)
                for k, v in text2vision.state_dict().items()})
    expected = {k: v for k, v in read_key_manifest('omg_llava_7b_pretrain_8gpus.tsv').items()
                if k.startswith('projector')}
    assert len(expected) == 15 and got == expected


def test_visual_sequence_is_pixels_separator_then_valid_queries_in_order():
    torch.manual_seed(0)
    projector = OMGVisualProjector(query_channels=8, clip_channels=16, llm_hidden_size=6)
    pixels, queries = torch.randn(2, 4, 24), torch.randn(2, 5, 8)
    blocked = torch.ones(2, 5, 4, dtype=torch.bool)
    blocked[0, 3, 1] = blocked[0, 1, 0] = False  # image 0: queries 1 and 3 win a cell
    blocked[1, 4, 2] = False  # image 1: query 4
    seq = projector(pixels, queries, blocked)
    assert [s.shape for s in seq] == [(4 + 1 + 2, 6), (4 + 1 + 1, 6)]
    torch.testing.assert_close(seq[0][:4], projector.model.model_feat(pixels[0]))
    torch.testing.assert_close(seq[0][4], projector.model.seperate_embed.weight[0])
    torch.testing.assert_close(seq[0][5:], projector.project_queries(queries[0, [1, 3]]))
    torch.testing.assert_close(seq[1][5:], projector.project_queries(queries[1, [4]]))
