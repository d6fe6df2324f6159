"""From a :class:`GroundedConversation` to the tensors the model trains on (spec §1.1, §5.4, §8.4).

The image is padded to a square with the CLIP-mean colour (original centred), resized to the network
input side and CLIP-normalised; masks are zero-padded the same way and nearest-resized; points are
shifted and scaled. Text goes through the ``internlm2_chat`` template with ``<image>`` as the −200
sentinel.
"""
from __future__ import annotations

import numpy as np
import torch

from omg_llava.inference.image_io import SquareGeometry, load_image, preprocess_image
from omg_llava.utils.conversation import encode_conversation

from .sample import GroundedConversation, MalformedSample


def encode_sample(conversation: GroundedConversation, tokenizer, image_size: int,
                  max_length: int) -> dict:
    """Tensors of one sample.

    Returns:
        ``input_ids`` / ``labels`` (L,) long (truncated to ``max_length``), ``pixel_values`` (3, S,
        S) float (``None`` without image), ``masks`` (n, S, S) uint8, ``regions`` (r, S, S) uint8,
        ``points`` (p, 2) float in input pixels, ``image_size`` (H, W) of the original.

    Raises:
        MalformedSample: unreadable image, or annotations whose size differs from the image.
    """
    conversation.validate()
    try:
        encoded = encode_conversation(tokenizer, conversation.turns,
                                      with_image=conversation.image_path is not None,
                                      max_length=max_length)
    except ValueError as exc:  # e.g. <image> in a later turn
        raise MalformedSample(f'conversation not encodable: {exc}') from exc
    item = dict(input_ids=torch.tensor(encoded.input_ids), labels=torch.tensor(encoded.labels),
                pixel_values=None,
                masks=torch.zeros((0, image_size, image_size), dtype=torch.uint8),
                regions=torch.zeros((0, image_size, image_size), dtype=torch.uint8),
                points=torch.zeros((0, 2)), image_size=None)
    if conversation.image_path is None:
        return item
    try:
        image = load_image(conversation.image_path)
    except FileNotFoundError as exc:
        raise MalformedSample(f'image not found: {conversation.image_path!r}') from exc
    except (OSError, ValueError) as exc:  # unreadable, a folder, over the size limits
        raise MalformedSample(f'unreadable image: {exc}') from exc
    pixels, geometry = preprocess_image(image, image_size)
    item.update(pixel_values=pixels, image_size=geometry.original_size,
                masks=_masks_to_input(conversation.masks, geometry),
                regions=_masks_to_input(conversation.regions, geometry))
    if conversation.points:
        points = torch.tensor(conversation.points, dtype=torch.float)
        H, W = geometry.original_size
        if ((points < 0) | (points[:, 0:1] >= W) | (points[:, 1:2] >= H)).any():
            raise MalformedSample(f'point outside the image: {conversation.points} in a {W}x{H} '
                                  'image')
        item['points'] = geometry.points_to_input(points)
    return item


def _masks_to_input(masks: list[np.ndarray], geometry: SquareGeometry) -> torch.Tensor:
    S = geometry.input_side
    if not masks:
        return torch.zeros((0, S, S), dtype=torch.uint8)
    for mask in masks:
        if tuple(mask.shape) != geometry.original_size:
            raise MalformedSample(f'mask size mismatch: a mask of shape {mask.shape} for an image '
                                  f'of size {geometry.original_size}')
    stacked = torch.from_numpy(np.stack([m > 0 for m in masks]))
    return geometry.masks_to_input(stacked).to(torch.uint8)


def blank_image(image_size: int) -> torch.Tensor:
    """The (3, S, S) image text-only samples carry in a batch (the CLIP mean: zeros after
    normalisation)."""
    return torch.zeros((3, image_size, image_size))


__all__ = ['encode_sample', 'blank_image']
