"""A segment on the original image and its overlay, as the chat tools, the app and the evaluation
hook draw them. Universal segmentation itself (panoptic, instance, semantic, interactive, video)
is :mod:`omg_llava.segmentation`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """One panoptic segment on the original image: class id and name, score, (H, W) bool mask."""

    label: int
    name: str
    is_thing: bool
    score: float
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def overlay(image: np.ndarray, segments: list[Segment], alpha: float = 0.5,
            seed: int = 0) -> np.ndarray:
    """Blend a distinct colour per segment over an (H, W, 3) uint8 image."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32).copy()
    for segment in segments:
        colour = rng.integers(40, 255, size=3).astype(np.float32)
        out[segment.mask] = (1 - alpha) * out[segment.mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)

