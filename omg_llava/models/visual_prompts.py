"""Visual prompts (points, boxes, region masks) and their encoding into query features (spec §6.4).

A prompt lives in network-input pixels of one image of the batch. :func:`encode_visual_prompts`
decodes each prompt with the OMG decoder over its image's features and returns the (N, 2C) query
features in the order given; the model projects them to LLM embeddings that replace ``<region>`` /
``<mark>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .seg_heads.omg_seg_head import ImageFeatures

PROMPT_KINDS = ('point', 'box', 'mask')


@dataclass
class VisualPrompt:
    """One prompt on image ``image_index``, in network-input pixels.

    Attributes:
        kind: ``'point'`` (value (2,) x, y), ``'box'`` (value (4,) x1, y1, x2, y2) or ``'mask'``
            (value (H, W) binary at the input size).
        value: the coordinates or the mask.
        image_index: which image of the batch the prompt refers to.
    """

    kind: str
    value: Tensor
    image_index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f'visual prompt kind must be one of {PROMPT_KINDS}, got {self.kind!r}')
        expected = {'point': (2, ), 'box': (4, )}.get(self.kind)
        if expected is not None and tuple(self.value.shape) != expected:
            raise ValueError(f'a {self.kind} prompt needs {expected[0]} numbers, got shape '
                             f'{list(self.value.shape)}')
        if self.kind == 'mask' and self.value.dim() != 2:
            raise ValueError('a mask prompt is one (H, W) mask, got shape '
                             f'{list(self.value.shape)}')


def prompts_from_tensors(kind: str, values: Tensor | None,
                         image_indices: Tensor) -> list[VisualPrompt]:
    """Prompts of one kind from a batch tensor ((N, 2) points, (N, 4) boxes or (N, H, W) masks)."""
    if values is None:
        return []
    if len(values) != len(image_indices):
        raise ValueError(f'{len(values)} {kind} prompts for {len(image_indices)} placeholders')
    return [VisualPrompt(kind, v, int(i)) for v, i in zip(values, image_indices)]


def encode_visual_prompts(encoder, prompts: Sequence[VisualPrompt],
                          features: ImageFeatures) -> Tensor:
    """Decode ``prompts`` over the features of their images.

    Args:
        encoder: the :class:`~omg_llava.models.OMGSegVisualEncoder`.
        prompts: N prompts (any mix of kinds).
        features: the image features of the batch the prompts refer to.

    Returns:
        (N, 2C) query features [final content | positional], in the order of ``prompts``.
    """
    num_images = features.mask_features.shape[0]
    bad = [p.image_index for p in prompts if not 0 <= p.image_index < num_images]
    if bad:
        raise ValueError(f'visual prompts refer to images {bad} but the batch has {num_images} '
                         'image(s)')
    C2 = encoder.query_channels
    out = features.mask_features.new_zeros((len(prompts), C2))
    device = features.mask_features.device
    encoders = {'point': encoder.encode_point_prompts, 'box': encoder.encode_box_prompts,
                'mask': encoder.encode_region_prompts}
    for kind, encode in encoders.items():
        rows = [i for i, p in enumerate(prompts) if p.kind == kind]
        if not rows:
            continue
        values = torch.stack([prompts[i].value.to(device) for i in rows]).float()
        batch_idxs = torch.tensor([prompts[i].image_index for i in rows], dtype=torch.long,
                                  device=device)
        out[rows] = encode(values, batch_idxs, features).query_features[:, 0].to(out.dtype)
    return out
