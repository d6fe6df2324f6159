"""Universal (panoptic and instance) segmentation with the frozen OMG-Seg encoder alone.

The head's last-layer class and mask logits are fused by mmdet's ``MaskFormerFusionHead``
(Mask2Former inference). Panoptic: keep queries whose best class beats ``score_thr``, assign each
pixel to the query with the highest score·probability, drop segments that keep less than
``overlap_thr`` of their mask. Instance: top-k (query, thing class) pairs scored by class
probability x mean mask probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mmdet.evaluation.functional import INSTANCE_OFFSET
from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead

from omg_llava.models.omg_seg_encoder import OMGSegVisualEncoder, VisualEncoderOutput

from .image_io import SquareGeometry


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


def coco_panoptic_class_names() -> tuple[str, ...]:
    """The 133 COCO-panoptic class names (80 things, then 53 stuff), the order of the
    class-embedding file."""
    from mmdet.datasets import CocoPanopticDataset
    return tuple(CocoPanopticDataset.METAINFO['classes'])


@torch.no_grad()
def panoptic_segments(encoder: OMGSegVisualEncoder, output: VisualEncoderOutput,
                      geometry: SquareGeometry,
                      class_names: tuple[str, ...], *, score_thr: float = 0.8,
                      overlap_thr: float = 0.8, image_index: int = 0) -> list[Segment]:
    """Panoptic segments of image ``image_index`` of an encoder output, on the original image.

    Args:
        encoder: the encoder that produced ``output`` (for the class split).
        output: :meth:`OMGSegVisualEncoder.forward` result.
        geometry: how that image was padded and resized.
        class_names: one name per class (K).
        score_thr: minimum class probability of a kept query (reference 0.8).
        overlap_thr: minimum fraction of a query's mask it must keep after overlaps (reference 0.8).
    """
    head = encoder.panoptic_head
    fusion = _fusion_head(head, class_names, object_mask_thr=score_thr, iou_thr=overlap_thr,
                          filter_low_score=True)
    class_logits = output.class_logits[image_index].float()  # (Q, K+1)
    mask_logits = geometry.logits_to_original(output.mask_logits[image_index])  # (Q, H, W)
    # (H, W) label + id*OFFSET
    panoptic = fusion.panoptic_postprocess(class_logits, mask_logits).sem_seg[0]
    probs = class_logits.softmax(-1)[:, :-1]
    segments = []
    for segment_id in panoptic.unique().tolist():
        label = segment_id % INSTANCE_OFFSET
        if label >= head.num_classes:  # unassigned pixels
            continue
        mask = panoptic == segment_id
        # score of the segment: the probability of its class under the query whose mask covers it
        # most
        overlap = (mask_logits[:, mask] > 0).float().mean(-1)
        score = float(probs[overlap.argmax(), label])
        segments.append(Segment(label, class_names[label], label < head.num_things_classes, score,
                                mask.cpu().numpy()))
    return sorted(segments, key=lambda s: -s.area)


@torch.no_grad()
def instance_segments(encoder: OMGSegVisualEncoder, output: VisualEncoderOutput,
                      geometry: SquareGeometry,
                      class_names: tuple[str, ...], *, score_thr: float = 0.3,
                      max_per_image: int = 100, image_index: int = 0) -> list[Segment]:
    """Instance segmentation (things only) of one image: Mask2Former's top-k (query, class) pairs
    scored by class probability x mean mask probability, kept when the score reaches ``score_thr``;
    highest first."""
    head = encoder.panoptic_head
    fusion = _fusion_head(head, class_names, max_per_image=max_per_image)
    mask_logits = geometry.logits_to_original(output.mask_logits[image_index])  # (Q, H, W)
    result = fusion.instance_postprocess(output.class_logits[image_index].float(), mask_logits)
    order = result.scores.argsort(descending=True)
    return [Segment(int(result.labels[i]), class_names[int(result.labels[i])], True,
                    float(result.scores[i]),
                    result.masks[i].cpu().numpy()) for i in order.tolist()
            if result.scores[i] >= score_thr]


def _fusion_head(head, class_names: tuple[str, ...], **test_cfg) -> MaskFormerFusionHead:
    if len(class_names) != head.num_classes:
        raise ValueError(f'{len(class_names)} class names for a head with {head.num_classes} '
                         'classes')
    return MaskFormerFusionHead(num_things_classes=head.num_things_classes,
                                num_stuff_classes=head.num_stuff_classes, test_cfg=test_cfg)


def overlay(image: np.ndarray, segments: list[Segment], alpha: float = 0.5,
            seed: int = 0) -> np.ndarray:
    """Blend a distinct colour per segment over an (H, W, 3) uint8 image."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32).copy()
    for segment in segments:
        colour = rng.integers(40, 255, size=3).astype(np.float32)
        out[segment.mask] = (1 - alpha) * out[segment.mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)

