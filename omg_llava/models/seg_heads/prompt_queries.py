"""Visual-prompt queries of the OMG-Seg head: points, boxes and region masks (spec §3.4).

Every prompt becomes one decoder query. Its content is ``pb_embedding[0] + mask_tokens[0]`` (label
0, "point", for every prompt type, as in the reference) and its positional part encodes a ±3-pixel
pseudo box around the prompt's point. What differs between prompt types is the point and the
cross-attention mask used at each decoder step:

* point: the point itself; the query's own predicted masks (standard masked attention);
* box: the box centre; own masks with everything outside the box blocked;
* region: the first row-major maximum of the mask's distance transform; the region mask itself.

Coordinates are in input pixels of the (square, padded) network input; (x, y) order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.contrib import distance_transform
from mmdet.models.layers.transformer.utils import coordinate_to_encoding, inverse_sigmoid
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from torch import Tensor

from .omg_seg_head import AttentionMaskPolicy, OMGSegHead, own_prediction_policy

PSEUDO_BOX_HALF_SIZE = 3  # pixels around a prompt point (reference value)


def pseudo_box_cxcywh(points: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Normalised (cx, cy, w, h) of the box [x-3, y-3, x+3, y+3] / (W, H, W, H).

    Args:
        points: (N, 2) float (x, y) in input pixels.
        image_size: (H, W) of the input.

    Returns:
        (N, 1, 4), passed through ``sigmoid(inverse_sigmoid(.))`` like the reference (clamps to (0,
        1)).
    """
    H, W = image_size
    d = PSEUDO_BOX_HALF_SIZE
    boxes = torch.cat([points - d, points + d], dim=-1) / points.new_tensor([W, H, W, H])
    return inverse_sigmoid(bbox_xyxy_to_cxcywh(boxes)).sigmoid().unsqueeze(1)


def prompt_queries(head: OMGSegHead, points: Tensor,
                   image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Initial content and positional embedding of one query per prompt point → two (N, 1, C)
    tensors."""
    n, c = points.shape[0], head.feat_channels
    content = (head.pb_embedding.weight[0] + head.mask_tokens.weight[0]).view(1, 1, c).expand(n, 1,
                                                                                              c)
    encoding = coordinate_to_encoding(pseudo_box_cxcywh(points.float(), image_size),
                                      num_feats=c // 2)  # (N,1,2C)
    return content, head.pos_linear(encoding)


def region_center_points(masks: Tensor) -> tuple[Tensor, Tensor]:
    """The point deepest inside each region mask, as the reference picks it.

    The mask is zero-padded by 1 pixel (so the image border counts as outside), inverted, and passed
    to kornia's ``distance_transform`` (kernel 3, h 0.35); the first row-major argmax of the cropped
    map is the point. Ties are common, which is why the same routine is used rather than an exact
    transform.

    Args:
        masks: (N, H, W) binary region masks.

    Returns:
        ``(points, distance)``: (N, 2) int64 (x=col, y=row), and the padded map (N, 1, H+2, W+2).
    """
    padded = F.pad(masks[:, None].float(), (1, 1, 1, 1), value=0.0)
    distance = distance_transform(1.0 - padded, kernel_size=3, h=0.35)
    width = masks.shape[-1]
    flat_index = distance[:, 0, 1:-1, 1:-1].flatten(1).argmax(dim=-1)
    return torch.stack([flat_index % width, flat_index // width], dim=-1), distance


def region_mask_policy(masks: Tensor) -> AttentionMaskPolicy:
    """Attend only inside the region: ``masks`` (N, H, W) nearest-resized to each level."""

    def policy(step: int, logits: Tensor) -> Tensor:
        resized = F.interpolate(masks[:, None].float(), size=logits.shape[-2:], mode='nearest')
        return resized < 0.5  # (N, 1, h, w)

    return policy


def box_policy(boxes: Tensor, image_size: tuple[int, int]) -> AttentionMaskPolicy:
    """Own-mask attention with everything outside the box blocked.

    Args:
        boxes: (N, 4) (x1, y1, x2, y2) in input pixels.
        image_size: (H, W) of the input.
    """
    H, W = image_size
    normalised = (boxes.float() / boxes.new_tensor([W, H, W, H], dtype=torch.float)).clamp(0, 1)

    def policy(step: int, logits: Tensor) -> Tensor:
        h, w = logits.shape[-2:]
        inside = torch.zeros_like(logits, dtype=torch.bool)
        for i, (x1, y1, x2, y2) in enumerate(normalised.tolist()):
            sx, sy = math.floor(x1 * w), math.floor(y1 * h)
            ex, ey = math.floor(x2 * w + 1), math.floor(y2 * h + 1)
            inside[i, :, sy:ey, sx:ex] = True
        return own_prediction_policy(step, logits.masked_fill(~inside, -100.0))

    return policy


def box_center_points(boxes: Tensor) -> Tensor:
    """(N, 4) (x1, y1, x2, y2) → (N, 2) box centres (x, y)."""
    return (boxes[:, :2] + boxes[:, 2:]) / 2
