"""OMG-Seg alone as a universal image segmenter: panoptic, instance, semantic and interactive (no
LLM).

    segmenter = build_segmenter('configs/omg_llava_7b_finetune_8gpus.py', omg_seg=..., clip=...,
                                classes='cat,dog,stuff:grass',
                                tokenizer='bpe_simple_vocab_16e6.txt.gz')
    panoptic = segmenter.panoptic(image)  # labels / queries (H, W) on the original image
    # (2, H, W) bool
    masks = segmenter.interactive(image, points=[[120, 80]], boxes=[[10, 20, 200, 180]])

Images go through the OMG-LLaVA preprocessing (pad to a square with the CLIP mean colour, bicubic
resize to ``input_side``, CLIP mean/std); every output is mapped back to the original pixels.
Interactive prompts follow OMG-Seg's SAM-style evaluation (spec §4 of omg_seg_universal.md): one
query per prompt with content ``pb_embedding[0] + mask_tokens[0]``, positional part from the
prompt's box (a ±3-pixel pseudo box for a point), all prompts decoded together with each attending
only to itself, one mask per prompt (last layer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from mmdet.models.layers.transformer.utils import coordinate_to_encoding, inverse_sigmoid
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from PIL import Image
from torch import Tensor

from omg_llava.inference.image_io import SquareGeometry, preprocess_image, to_rgb_image
from omg_llava.models.omg_seg_encoder import (OMGSegVisualEncoder, check_boxes_inside,
                                              check_points_inside)
from omg_llava.models.seg_heads.omg_seg_head import ImageFeatures, own_prediction_policy
from omg_llava.models.seg_heads.prompt_queries import pseudo_box_cxcywh

from .fusion import InstanceOutput, PanopticOutput, instance_fusion, panoptic_fusion, semantic_map
from .vocabulary import Vocabulary, coco_panoptic_vocabulary


@dataclass
class ImageOutput:
    """The head's last-layer predictions for one image.

    Attributes:
        geometry: where the original sits in the square input.
        features: pixel-decoder features (batch of 1), reused by interactive prompts.
        class_logits: (Q, K+1) with the no-object class last.
        mask_logits: (Q, S/4, S/4) on the square input.
        query_features: (Q, C) last decoder output before ``post_norm`` (what video tracking
            matches).
    """

    geometry: SquareGeometry
    features: ImageFeatures
    class_logits: Tensor
    mask_logits: Tensor
    query_features: Tensor


def prompt_box_queries(encoder: OMGSegVisualEncoder, cxcywh: Tensor) -> tuple[Tensor, Tensor]:
    """Content and positional embedding (N, C) each of one prompt query per normalised (cx, cy, w,
    h) box (N, 4)."""
    head = encoder.panoptic_head
    C = head.feat_channels
    content = (head.pb_embedding.weight[0] + head.mask_tokens.weight[0]).expand(len(cxcywh), C)
    encoding = coordinate_to_encoding(cxcywh[:, None], num_feats=C // 2)  # (N, 1, 2C)
    return content, head.pos_linear(encoding)[:, 0]


class UniversalSegmenter:
    """The OMG-Seg encoder with a vocabulary, for image segmentation without the LLM.

    Args:
        encoder: a built (and loaded) :class:`OMGSegVisualEncoder`.
        vocabulary: the classes the head's class embeddings belong to; with ``class_embeddings`` it
            replaces them. Default: the COCO-panoptic vocabulary when the head has 133 classes, else
            ``class i`` names.
        class_embeddings: (K, S, D) unit vectors of ``vocabulary``
            (:func:`~.vocabulary.embed_vocabulary`).
        input_side: side of the square network input (1024 for the released model).
    """

    def __init__(self, encoder: OMGSegVisualEncoder, vocabulary: Vocabulary | None = None,
                 class_embeddings: Tensor | None = None, input_side: int = 1024) -> None:
        self.encoder = encoder.eval().prepare_for_inference_()
        self.input_side = input_side
        head = encoder.panoptic_head
        if class_embeddings is not None:
            if vocabulary is None:
                raise ValueError('class_embeddings need the vocabulary they were made from')
            self.set_vocabulary(vocabulary, class_embeddings)
        elif vocabulary is not None and len(vocabulary) != head.num_classes:
            raise ValueError(f'the vocabulary has {len(vocabulary)} classes but the head\'s class '
                             f'embeddings {head.num_classes}; give its class embeddings too')
        else:
            self.vocabulary = vocabulary or (coco_panoptic_vocabulary() if head.num_classes == 133
                                             else Vocabulary(
                tuple(f'class {i}' for i in range(head.num_classes)), head.num_things_classes))

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def set_vocabulary(self, vocabulary: Vocabulary, class_embeddings: Tensor) -> None:
        """Classify into ``vocabulary`` from now on: (K, S, D) unit class embeddings replace the
        head's, and the head's class counts follow (things first). The no-object class stays a zero
        vector (spec §1.5)."""
        head = self.encoder.panoptic_head
        dim = head.cls_proj[-1].out_features
        if class_embeddings.dim() != 3 or class_embeddings.shape[0] != len(vocabulary) \
                or class_embeddings.shape[-1] != dim:
            raise ValueError(f'class embeddings must be ({len(vocabulary)}, synonyms, {dim}) for '
                             f'this vocabulary and head, got {list(class_embeddings.shape)}: embed '
                             'with the text tower of the same CLIP')
        norms = class_embeddings.float().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError('class embeddings must be unit vectors; make them with '
                             'tools/make_class_embeddings.py')
        background = class_embeddings.new_zeros(1, *class_embeddings.shape[1:])
        # (D, K+1, S)
        full = torch.cat([class_embeddings, background]).permute(2, 0, 1).contiguous()
        head.cls_embed = full.to(device=head.cls_embed.device, dtype=head.cls_embed.dtype)
        head.num_classes = len(vocabulary)
        head.num_things_classes = vocabulary.num_things
        head.num_stuff_classes = vocabulary.num_stuff
        self.vocabulary = vocabulary

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def encode_frames(
        self, images: Sequence[Image.Image | np.ndarray]
    ) -> tuple[ImageFeatures, SquareGeometry]:
        """Trunk and pixel decoder on equally sized images → features (B rows) and their shared
        geometry."""
        pils = [to_rgb_image(image) for image in images]
        sizes = {p.size for p in pils}
        if len(sizes) != 1:
            raise ValueError(f'frames of one clip must share a size, got {sorted(sizes)}')
        tensors, geometries = zip(*(preprocess_image(p, self.input_side) for p in pils))
        pixels = torch.stack(tensors).to(self.device, next(self.encoder.parameters()).dtype)
        features = self.encoder.panoptic_head.encode_image(
            self.encoder.backbone(pixels), tuple(pixels.shape[-2:])
        )
        return features, geometries[0]

    @torch.no_grad()
    def encode(self, image: Image.Image | np.ndarray) -> ImageOutput:
        """Run the trunk, pixel decoder and the 300 object queries on one image."""
        features, geometry = self.encode_frames([image])
        decode = self.encoder.panoptic_head.decode_object_queries(features, keep_steps=False)
        return ImageOutput(
            geometry,
            features,
            decode.class_logits[-1][0, :, :-1],
            decode.mask_logits[-1][0],
            decode.queries[-1][0],
        )

    def _output(self, image) -> ImageOutput:
        return image if isinstance(image, ImageOutput) else self.encode(image)

    # ------------------------------------------------------------------ tasks
    @torch.no_grad()
    def panoptic(
        self, image, *, score_thr: float = 0.0, overlap_thr: float = 0.8
    ) -> PanopticOutput:
        """Panoptic segmentation on the original image (spec §3.3; thresholds of the OMG-Seg
        configs)."""
        out = self._output(image)
        return self._panoptic(
            out.class_logits, out.mask_logits, out.geometry, score_thr, overlap_thr
        )

    def _panoptic(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        geometry: SquareGeometry,
        score_thr: float,
        overlap_thr: float,
    ) -> PanopticOutput:
        num_classes = class_logits.shape[-1] - 1
        scores, labels = class_logits.float().softmax(-1).max(-1)
        # only kept queries can paint pixels: upsample just those (same result, far less memory)
        kept = ((labels != num_classes) & (scores > score_thr)).nonzero().flatten()
        full = geometry.logits_to_original(mask_logits[kept])  # (k, H, W)
        result = panoptic_fusion(
            class_logits[kept],
            full,
            self.vocabulary.num_things,
            score_thr=score_thr,
            overlap_thr=overlap_thr,
        )
        painted = result.queries >= 0
        result.queries[painted] = kept[result.queries[painted]]
        result.segments = [(int(kept[q]), label, score) for q, label, score in result.segments]
        return result

    @torch.no_grad()
    def semantic(self, image, **kwargs) -> Tensor:
        """(H, W) int64 class per pixel: the class of the panoptic segment that wins it; void =
        K."""
        return semantic_map(self.panoptic(image, **kwargs))

    @torch.no_grad()
    def instance(
        self, image, *, max_per_image: int = 100, score_thr: float = 0.0
    ) -> InstanceOutput:
        """Instance segmentation (things) on the original image (spec §3.4)."""
        out = self._output(image)
        probs = out.class_logits.float().softmax(-1)[:, :-1]
        top = probs.flatten().topk(min(max_per_image, probs.numel())).indices // probs.shape[1]
        queries = top.unique()  # only these queries can be instances: upsample just them
        result = instance_fusion(
            out.class_logits[queries],
            out.geometry.logits_to_original(out.mask_logits[queries]),
            self.vocabulary.num_things,
            max_per_image=max_per_image,
            score_thr=score_thr,
        )
        result.queries = queries[result.queries]
        return result

    @torch.no_grad()
    def interactive_logits(
        self, output: ImageOutput, points: Tensor | None = None, boxes: Tensor | None = None
    ) -> Tensor:
        """Mask logits (N, S/4, S/4) of point prompts then box prompts, given in original-image
        pixels.

        Args:
            output: :meth:`encode` of the image.
            points: (P, 2) (x, y); each becomes the pseudo box [x-3, y-3, x+3, y+3].
            boxes: (B, 4) (x1, y1, x2, y2); encoded as its own (cx, cy, w, h).
        """
        geometry, features = output.geometry, output.features
        size = features.image_size
        H, W = size
        encodings = []
        if points is not None and len(points):
            points = geometry.points_to_input(
                torch.as_tensor(points, dtype=torch.float).view(-1, 2)
            )
            check_points_inside(points, size)
            encodings.append(pseudo_box_cxcywh(points, size)[:, 0])
        if boxes is not None and len(boxes):
            boxes = geometry.boxes_to_input(torch.as_tensor(boxes, dtype=torch.float).view(-1, 4))
            check_boxes_inside(boxes, size)
            encodings.append(
                inverse_sigmoid(
                    bbox_xyxy_to_cxcywh(boxes / boxes.new_tensor([W, H, W, H]))
                ).sigmoid()
            )
        if not encodings:
            return output.mask_logits.new_zeros((0, *output.mask_logits.shape[-2:]))
        cxcywh = torch.cat(encodings).to(self.device)
        content, pos = prompt_box_queries(self.encoder, cxcywh)
        image_idxs = torch.zeros(len(cxcywh), dtype=torch.long, device=self.device)
        decode = self.encoder.panoptic_head.decode_alone(
            content, pos, image_idxs, features, own_prediction_policy
        )
        return decode.mask_logits[-1][:, 0]

    @torch.no_grad()
    def interactive(
        self,
        image,
        points: Sequence[Sequence[float]] | Tensor | None = None,
        boxes: Sequence[Sequence[float]] | Tensor | None = None,
    ) -> Tensor:
        """One (H, W) bool mask per prompt on the original image, points first then boxes (spec
        §4.3: mask logits → original size → sigmoid > 0.5). No prompt gives (0, H, W)."""
        out = self._output(image)
        logits = self.interactive_logits(out, points, boxes)
        return out.geometry.logits_to_original(logits) > 0
