"""Files written by tools/segment_image.py and tools/segment_video.py.

* overlays: a colour per segment (stable per id, so a track keeps its colour across frames) blended
  over the image;
* panoptic: COCO-panoptic PNG (id = R + 256 G + 256² B, 0 = void) and its ``segments_info`` JSON;
* semantic: label PNG of class ids (uint8, void 255; uint16 with void 65535 when there are 255+
  classes);
* instance / interactive: JSON with one COCO RLE mask per instance or prompt (pycocotools).
"""
from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

from .fusion import InstanceOutput, PanopticOutput
from .vocabulary import Vocabulary


def colour_of(segment_id: int) -> np.ndarray:
    """A bright RGB colour fixed by the id (same id → same colour in every frame)."""
    rng = np.random.default_rng(segment_id * 7919 + 17)
    return rng.integers(40, 256, size=3).astype(np.float32)


def overlay_ids(image: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colour_of(id) over an (H, W, 3) uint8 image wherever ``ids`` (H, W) > 0."""
    out = image.astype(np.float32).copy()
    for segment_id in np.unique(ids):
        if segment_id <= 0:
            continue
        where = ids == segment_id
        out[where] = (1 - alpha) * out[where] + alpha * colour_of(int(segment_id))
    return out.clip(0, 255).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: np.ndarray, ids: list[int] | None = None) -> np.ndarray:
    """Overlay (N, H, W) bool masks, later masks on top; ``ids`` pick colours (default 1..N)."""
    canvas = np.zeros(image.shape[:2], dtype=np.int64)
    for i, mask in enumerate(masks):
        canvas[mask] = ids[i] if ids is not None else i + 1
    return overlay_ids(image, canvas)


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] tight box of a bool mask ([0, 0, 0, 0] when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


def panoptic_ids(panoptic: PanopticOutput, vocabulary: Vocabulary) -> tuple[np.ndarray, list[dict]]:
    """Segment-id map and COCO ``segments_info`` of a panoptic output.

    A thing segment's id is its query (track) + 1; all pixels of one stuff class form one segment
    whose id is the smallest of its queries + 1 (as the reference merges stuff). Returns ``(ids (H,
    W) int64, 0 = void, info)``; ``category_id`` is the class index in the vocabulary, with
    ``name``, ``isthing``, ``area``, ``bbox``, ``score``.
    """
    queries = panoptic.queries.cpu().numpy()
    labels = panoptic.labels.cpu().numpy()
    ids = np.zeros(queries.shape, dtype=np.int64)
    info, score_of = [], {q: s for q, _, s in panoptic.segments}
    done_stuff = set()
    for query, label, _ in panoptic.segments:
        if vocabulary.is_thing(label):
            where = queries == query
            segment_id, score = query + 1, score_of[query]
        else:
            if label in done_stuff:
                continue
            done_stuff.add(label)
            where = labels == label
            owners = [q for q, lab, _ in panoptic.segments if lab == label]
            segment_id, score = min(owners) + 1, max(score_of[q] for q in owners)
        if not where.any():
            continue
        ids[where] = segment_id
        info.append(dict(id=int(segment_id), category_id=int(label), name=vocabulary.names[label],
                         isthing=bool(vocabulary.is_thing(label)), area=int(where.sum()),
                         bbox=bbox_xywh(where), score=round(float(score), 4)))
    return ids, info


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO-panoptic PNG encoding: id → (id % 256, id // 256 % 256, id // 256²), uint8 (H, W, 3)."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 256 ** 2], axis=-1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]


def semantic_png(labels: Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    """Label image of class ids; void (= ``num_classes`` in ``labels``) becomes 255 (uint8) or 65535
    (uint16)."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    dtype, void = (np.uint8, 255) if num_classes < 255 else (np.uint16, 65535)
    out = labels.astype(np.int64).copy()
    out[out >= num_classes] = void
    return out.astype(dtype)


def rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool (H, W) mask, ``counts`` as str (JSON-ready)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(s) for s in encoded['size']], counts=encoded['counts'].decode('ascii'))


def instances_json(instances: InstanceOutput, vocabulary: Vocabulary) -> list[dict]:
    """One record per instance: ``id`` (query + 1), ``category_id``, ``name``, ``score``, ``bbox``,
    RLE."""
    masks = instances.masks.cpu().numpy()
    return [dict(id=int(q) + 1, category_id=int(label), name=vocabulary.names[int(label)],
                 score=round(float(score), 4), bbox=bbox_xywh(mask), area=int(mask.sum()),
                 segmentation=rle(mask))
            for q, label, score, mask in zip(instances.queries.tolist(), instances.labels.tolist(),
                                             instances.scores.tolist(), masks)]


def prompt_masks_json(masks: np.ndarray, prompts: list[dict]) -> list[dict]:
    """One record per prompt (``{'point': [x, y]}`` or ``{'box': [x1, y1, x2, y2]}``) with its RLE
    mask."""
    return [dict(prompt, area=int(mask.sum()), bbox=bbox_xywh(mask), segmentation=rle(mask))
            for prompt, mask in zip(prompts, masks)]
