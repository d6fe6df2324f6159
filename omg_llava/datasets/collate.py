"""Batching OMG-LLaVA samples (spec §8, xtuner's collate layout ``{'data': ..., 'data_samples':
None}``)."""
from __future__ import annotations

from typing import Sequence

import torch

from omg_llava.utils.constants import DEFAULT_PAD_TOKEN_ID, IGNORE_INDEX

from .encoding import blank_image


def omg_llava_collate_fn(instances: Sequence[dict], pad_index: int = DEFAULT_PAD_TOKEN_ID) -> dict:
    """Right-pad ids with ``pad_index`` and labels with −100; stack images (text-only samples get a
    blank image); keep ``masks`` as one tensor per sample; concatenate ``regions`` and ``points``
    over the batch (their order is batch-then-position, matching the ``<region>`` / ``<mark>``
    placeholders); samples flagged by ``CombinedDataset(text_only_lm=...)`` give ``text_only_lm``,
    (B,) bool (unflagged samples: True)."""
    L = max(len(x['input_ids']) for x in instances)
    B = len(instances)
    input_ids = torch.full((B, L), pad_index, dtype=torch.long)
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((B, L), dtype=torch.bool)
    for b, x in enumerate(instances):
        n = len(x['input_ids'])
        input_ids[b, :n] = x['input_ids']
        labels[b, :n] = x['labels']
        attention_mask[b, :n] = True
    sides = {x['pixel_values'].shape[-1] for x in instances if x['pixel_values'] is not None}
    if len(sides) > 1:
        raise ValueError(f'images of different sizes {sorted(sides)} in one batch')
    data = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                pixel_values=None,
                masks=[x['masks'] if len(x['masks']) else None for x in instances], regions=None,
                points=None)
    if sides:
        side = sides.pop()
        data['pixel_values'] = torch.stack([x['pixel_values'] if x['pixel_values'] is not None
                                            else blank_image(side)
                                            for x in instances])
    regions = [x['regions'] for x in instances if len(x['regions'])]
    points = [x['points'] for x in instances if len(x['points'])]
    data['regions'] = torch.cat(regions) if regions else None
    data['points'] = torch.cat(points) if points else None
    if any('text_only_lm' in x for x in instances):
        data['text_only_lm'] = torch.tensor([bool(x.get('text_only_lm', True)) for x in instances])
    return {'data': data, 'data_samples': None}
