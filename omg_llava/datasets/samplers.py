"""Length-grouped sampling (xtuner's scheme), reading the lengths from the dataset's own index
map."""
from __future__ import annotations

import math
from typing import Iterator, Sized

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler):
    """Shuffle indices into mega-batches of ``world_size · per_device_batch_size · mega_batch_mult``
    items, sort each mega-batch by signed length (image samples, longest first, then text-only
    samples), and deal them out so that a device batch holds samples of similar length (a batch can
    straddle the image/text boundary). Every index of the dataset is drawn once per epoch (padded
    with repeats up to a multiple of the world size).

    Args:
        dataset: a dataset with ``modality_length`` (one signed length per index, ``len(dataset)``
            entries).
        per_device_batch_size: batch size per device.
        length_property: the attribute holding the lengths.
        mega_batch_mult: mega-batch multiplier (default min(4096 // (world · bs), 50), as xtuner).
        seed: shuffling seed (synchronised across ranks when ``None``).
    """

    def __init__(self, dataset: Sized, per_device_batch_size: int,
                 length_property: str = 'modality_length',
                 mega_batch_mult: int | None = None, seed: int | None = None,
                 round_up: bool = True) -> None:
        rank, world_size = get_dist_info()
        self.rank, self.world_size = rank, world_size
        self.dataset = dataset
        self.lengths = list(getattr(dataset, length_property))
        if len(self.lengths) != len(dataset):
            raise ValueError(f'{length_property} has {len(self.lengths)} entries but the dataset '
                             f'has {len(dataset)} '
                             'samples; the lengths must follow the dataset indices')
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        self.round_up = round_up
        total_batch = per_device_batch_size * world_size
        self.group_size = total_batch * (mega_batch_mult or max(1, min(4096 // total_batch, 50)))
        self.num_samples = (math.ceil(len(dataset) / world_size) if round_up
                            else len(dataset) // world_size)
        self.total_size = self.num_samples * world_size

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        indices = self._grouped(torch.randperm(len(self.lengths), generator=g).tolist())
        if self.round_up:
            indices = (indices * math.ceil(self.total_size / len(indices)))[:self.total_size]
        return iter(indices[self.rank:self.total_size:self.world_size])

    def _grouped(self, permutation: list[int]) -> list[int]:
        out = []
        for start in range(0, len(permutation), self.group_size):
            group = permutation[start:start + self.group_size]
            out += sorted(group, key=lambda i: self.lengths[i], reverse=True)
        return out

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
