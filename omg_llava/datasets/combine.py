"""A training mixture: datasets concatenated with repeats and permuted once (spec §8.3).

Unlike the reference ``CombineDataset`` (spec §10.14), ``modality_length`` is built from the same
index map as ``__getitem__``, so entry i always describes sample i (repeats and the permutation
included).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from omg_llava.registry import build_component


class CombinedDataset(Dataset):
    """Args:
        datasets: datasets (objects or config dicts), each with ``modality_length``.
        repeats: how many times each dataset appears (default 1 each).
        shuffle_seed: seed of the one-off permutation of the concatenation (42 in the reference);
            ``None`` keeps the concatenation order.
        text_only_lm: per dataset, whether its samples may get the model's text-only LM pass
            (``auxiliary_losses.TextOnlyLMLoss``): True where the answers can be read from the
            conversation's text (a referring answer repeats the question's expression), False where
            they describe the image (a region description, a caption). Each sample then carries a
            ``text_only_lm`` flag. ``None`` (default): no flags, every sample may.
    """

    def __init__(self, datasets: Sequence, repeats: Sequence[int] | None = None,
                 shuffle_seed: int | None = 42, text_only_lm: Sequence[bool] | None = None) -> None:
        self.datasets = [build_component(d) for d in datasets]
        repeats = list(repeats) if repeats is not None else [1] * len(self.datasets)
        if len(repeats) != len(self.datasets):
            raise ValueError(f'{len(repeats)} repeats for {len(self.datasets)} datasets')
        if text_only_lm is not None and (len(text_only_lm) != len(self.datasets)
                                         or not all(isinstance(flag, bool)
                                                    for flag in text_only_lm)):
            raise ValueError('text_only_lm needs one True/False per dataset '
                             f'({len(self.datasets)}), got {list(text_only_lm)!r}')
        self.text_only_lm = None if text_only_lm is None else list(text_only_lm)
        index = [(d, i) for d, (ds, r) in enumerate(zip(self.datasets, repeats)) for _ in range(r)
                 for i in range(len(ds))]
        if shuffle_seed is not None:
            order = np.random.RandomState(shuffle_seed).permutation(len(index))
            index = [index[j] for j in order]
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        d, j = self.index[i]
        sample = self.datasets[d][j]
        if self.text_only_lm is None:
            return sample
        return dict(sample, text_only_lm=self.text_only_lm[d])

    @property
    def modality_length(self) -> list[int]:
        lengths = [ds.modality_length for ds in self.datasets]
        return [lengths[d][j] for d, j in self.index]
