"""Decoder queries from referring expressions, for teaching a from-scratch OMG-Seg decoder to look
objects up.

OMG-LLaVA decodes each ``[SEG]`` as a query of the OMG-Seg decoder (spec §1.5). Which expressions
such a query can select is the decoder's doing: on the synthetic shapes, a bag-of-words MLP whose
output is decoded through the frozen decoder of a tiny pre-stage matched the tiny LLM expression
kind by expression kind (docs/tiny_model.md, "Which cues a run learns"), and a pre-stage that never
decodes a query derived from text learns those lookups only by chance.
:class:`BagOfWordsQueryEncoder` is the text side of a referring term in the pre-stage
(:class:`~omg_llava.models.OMGSegTrainer` ``referring_weight``): owned by the trainer and not
exported, it only makes the decoder answer text-derived queries; the OMG-LLaVA finetune then teaches
the LLM to produce them.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import Tensor, nn


def hashed_word_features(sentence: str, buckets: int) -> list[int]:
    """Bucket ids of a sentence's lower-cased words and of its adjacent word pairs (so that "the
    circle left of the square" and "the square left of the circle" differ), by CRC-32: stable across
    runs and processes."""
    words = sentence.lower().split()
    grams = words + [f'{a} {b}' for a, b in zip(words, words[1:])]
    return [zlib.crc32(gram.encode('utf-8')) % buckets for gram in grams]


class BagOfWordsQueryEncoder(nn.Module):
    """Sentences → decoder queries ``[content | positional]``: a sum of hashed word and word-pair
    embeddings, then an MLP.

    Args:
        query_channels: C of the decoder; the output is (N, 2C).
        buckets: hash buckets of the word and word-pair embeddings.
        hidden: width of the embeddings and of the MLP's hidden layer.
    """

    def __init__(self, query_channels: int, buckets: int = 4096, hidden: int = 256) -> None:
        super().__init__()
        self.buckets = buckets
        self.embed = nn.EmbeddingBag(buckets, hidden, mode='sum')
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 2 * query_channels))

    def forward(self, sentences: Sequence[str]) -> Tensor:
        """N sentences → (N, 2C) queries."""
        features = [hashed_word_features(s, self.buckets) for s in sentences]
        empty = [i for i, f in enumerate(features) if not f]
        if empty:
            raise ValueError(f'referring expressions {empty} have no words')
        device = self.embed.weight.device
        ids = torch.tensor([i for f in features for i in f], dtype=torch.long, device=device)
        offsets = torch.tensor([0] + [len(f) for f in features[:-1]], dtype=torch.long,
                               device=device).cumsum(0)
        return self.mlp(self.embed(ids, offsets))
