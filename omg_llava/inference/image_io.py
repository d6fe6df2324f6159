"""Image loading and the reference preprocessing (spec §1.1), with the inverse mapping for outputs.

Images are padded to a square with the CLIP-mean colour, the original centred, then resized (bicubic)
to the network input side and CLIP-normalised with the released configs' 4-decimal statistics
(:data:`~omg_llava.utils.constants.CLIP_MEAN` / ``CLIP_STD``). :class:`SquareGeometry` records the padding so that
prompts can be mapped in and masks mapped back out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from omg_llava.utils.constants import CLIP_MEAN, CLIP_STD

PAD_COLOR = tuple(int(255 * m) for m in CLIP_MEAN)  # (122, 116, 104)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, with a clear error for missing or unreadable files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image not found: {path!r}')
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f'cannot read {path!r} as an image ({exc}); give a PNG/JPEG/... file') from exc


@dataclass(frozen=True)
class SquareGeometry:
    """Where the original image sits in the padded square network input.

    Attributes:
        original_size: (H, W) of the original image.
        input_side: side S of the network input.
    """

    original_size: tuple[int, int]
    input_side: int

    @property
    def side(self) -> int:
        """Side of the padded square before resizing: max(H, W)."""
        return max(self.original_size)

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) of the original inside the padded square: (max − min) // 2 on the short axis."""
        H, W = self.original_size
        return (W - H) // 2 if W > H else 0, (H - W) // 2 if H > W else 0

    @property
    def scale(self) -> float:
        return self.input_side / self.side

    def points_to_input(self, points_xy: Tensor) -> Tensor:
        """(N, 2) (x, y) original pixels → network-input pixels."""
        top, left = self.offset
        return (points_xy.float() + points_xy.new_tensor([left, top], dtype=torch.float)) * self.scale

    def boxes_to_input(self, boxes: Tensor) -> Tensor:
        """(N, 4) (x1, y1, x2, y2) original pixels → network-input pixels (both corners shifted)."""
        return self.points_to_input(boxes.view(-1, 2)).view(-1, 4)

    def masks_to_input(self, masks: Tensor) -> Tensor:
        """(N, H, W) original-size binary masks → (N, S, S) float, zero-padded then nearest-resized."""
        H, W = self.original_size
        top, left = self.offset
        canvas = masks.new_zeros((masks.shape[0], self.side, self.side), dtype=torch.float)
        canvas[:, top:top + H, left:left + W] = masks.float()
        return F.interpolate(canvas[:, None], size=(self.input_side, ) * 2, mode='nearest')[:, 0]

    def logits_to_original(self, logits: Tensor) -> Tensor:
        """(N, h, w) mask logits on the square → (N, H, W) logits on the original image (spec §10.19):
        bilinear to max(H, W)², then the padding is cropped."""
        H, W = self.original_size
        top, left = self.offset
        square = F.interpolate(logits[:, None].float(), size=(self.side, ) * 2, mode='bilinear', align_corners=False)
        return square[:, 0, top:top + H, left:left + W]


def preprocess_image(image: Image.Image, input_side: int) -> tuple[Tensor, SquareGeometry]:
    """PIL RGB image → ((3, S, S) CLIP-normalised float32, geometry)."""
    W, H = image.size
    geometry = SquareGeometry((H, W), input_side)
    canvas = Image.new('RGB', (geometry.side, geometry.side), PAD_COLOR)
    top, left = geometry.offset
    canvas.paste(image, (left, top))
    canvas = canvas.resize((input_side, input_side), resample=Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (pixels - mean) / std, geometry
