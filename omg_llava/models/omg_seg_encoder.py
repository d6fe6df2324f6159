"""The OMG-Seg visual encoder of OMG-LLaVA: ConvNeXt CLIP trunk + OMG-Seg head, frozen (spec
§1.2–1.3, §3).

:meth:`OMGSegVisualEncoder.forward` turns images into the three tensors the projector consumes
(pixel tokens, query tokens, query mask) and returns the per-image features that prompt and [SEG]
decoding need, so no state is kept on the module between calls.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from omg_llava.registry import MODELS

from .encoder_output_cache import ImageOutputCache, ImageRows, image_key
from .object_tokens import object_prior, pixel_shuffle_down
from .seg_heads.lean_attention import use_lean_attention_
from .seg_heads.omg_seg_head import DecodeOutput, ImageFeatures, OMGSegHead, own_prediction_policy
from .seg_heads.prompt_queries import (box_center_points, box_policy, prompt_queries,
                                       region_center_points,
                                       region_mask_policy)


@dataclass
class VisualEncoderOutput:
    """What one image batch produces.

    Attributes:
        pixel_tokens: (B, h·w, 4·C5 + 2C) = [pixel-shuffled C5 | prior-weighted content |
            prior-weighted pos].
        query_tokens: (B, Q, 2C) = [final query content (no post_norm) | ``query_embed``].
        query_blocked: (B, Q, h·w) True where the query does not win the cell; a query with at least
            one False becomes a visual token.
        image_features: pixel-decoder features for prompt / [SEG] decoding.
        class_logits: (B, Q, K+1) last-layer class logits (IoU channel removed).
        iou_logits: (B, Q, 1).
        mask_logits: (B, Q, H/4, W/4) last-layer mask logits.
        backbone_features: the 4 trunk maps (B, C_i, H/s_i, W/s_i); ``None`` when the output was
            assembled from the encoder's output cache (``cache_images``).
        decode: every decoder step (for inspection and parity checks); ``None`` likewise.
    """

    pixel_tokens: Tensor
    query_tokens: Tensor
    query_blocked: Tensor
    image_features: ImageFeatures
    class_logits: Tensor
    iou_logits: Tensor
    mask_logits: Tensor
    backbone_features: list[Tensor] | None
    decode: DecodeOutput | None

    def without_intermediates(self) -> 'VisualEncoderOutput':
        """The same output without ``backbone_features`` and ``decode`` (every decoder step's mask
        logits: (B, 300, 256, 256) floats each at 1024², ~0.9 GB in all), which nothing after the
        encoding reads: what a conversation keeps."""
        return dataclasses.replace(self, backbone_features=None, decode=None)

    def visual_tokens(self) -> list[Tensor]:
        """``[pixel tokens, query tokens, query mask]``, the projector input of the reference."""
        return [self.pixel_tokens, self.query_tokens, self.query_blocked]

    def image_rows(self, index: int) -> ImageRows:
        """Image ``index``'s slice of every tensor the model reads (no trunk maps, no decoder
        steps)."""
        features = self.image_features
        return (self.pixel_tokens[index], self.query_tokens[index], self.query_blocked[index],
                features.mask_features[index], *(m[index] for m in features.memories),
                self.class_logits[index],
                self.iou_logits[index], self.mask_logits[index])

    @classmethod
    def from_image_rows(cls, rows: list[ImageRows],
                        image_size: tuple[int, int]) -> 'VisualEncoderOutput':
        """Stack :meth:`image_rows` of several images into a batch (``backbone_features``,
        ``decode``: None)."""
        columns = [torch.stack(column) for column in zip(*rows)]
        pixel_tokens, query_tokens, blocked, mask_features, *memories = columns[:-3]
        class_logits, iou_logits, mask_logits = columns[-3:]
        return cls(pixel_tokens, query_tokens, blocked,
                   ImageFeatures(mask_features, memories, image_size),
                   class_logits, iou_logits, mask_logits, None, None)


@dataclass
class PromptOutput:
    """Decoded visual prompts: ``query_features`` (N, 1, 2C) = [final content | positional], the
    points used (N, 2) (x, y), and every decoder step."""

    query_features: Tensor
    points: Tensor
    decode: DecodeOutput


def _build(module: nn.Module | dict) -> nn.Module:
    return module if isinstance(module, nn.Module) else MODELS.build(module)


@MODELS.register_module()
class OMGSegVisualEncoder(nn.Module):
    """Frozen OMG-Seg (CLIP ConvNeXt trunk + :class:`OMGSegHead`) producing object-centric visual
    tokens.

    Args:
        backbone: the trunk (module or config), e.g. ``ConvNeXtCLIPBackbone``.
        panoptic_head: the head (module or config), :class:`OMGSegHead`.
        pixel_shuffle_ratio: space-to-depth ratio applied to C5 (2 → tokens at stride 64).
        object_prior_smooth: ``smooth`` of :func:`~omg_llava.models.object_tokens.object_prior`.
        frozen: keep everything in eval mode without gradients (the released models never train it).
        weights: optional paths loaded by :meth:`init_weights` (never at construction):
            ``omg_seg`` (omg_seg_convl.pth), ``clip`` (open_clip ConvNeXt file), ``class_embed``
            (convnext_large_d_320_CocoPanopticOVDataset.pth).
        cache_images: remember the outputs of up to this many images by their pixels
            (:mod:`~omg_llava.models.encoder_output_cache`; about 0.5 MB per 128-px tiny image); 0 =
            off, the released configs. Only for a frozen encoder: a training one changes its
            outputs.

    Attributes:
        keep_decoder_steps: :meth:`encode` keeps every decoder step in ``decode`` (default, for
            training and parity checks); :meth:`prepare_for_inference_` sets it to ``False`` (the
            last step only: ~0.7 GB less while encoding at 1024², the same outputs).
    """

    def __init__(self, backbone: nn.Module | dict, panoptic_head: nn.Module | dict,
                 pixel_shuffle_ratio: int = 2,
                 object_prior_smooth: float = 0.5, frozen: bool = True,
                 weights: dict[str, str | None] | None = None, cache_images: int = 0) -> None:
        super().__init__()
        self.backbone = _build(backbone)
        self.panoptic_head: OMGSegHead = _build(panoptic_head)
        self.pixel_shuffle_ratio = pixel_shuffle_ratio
        self.object_prior_smooth = object_prior_smooth
        self.frozen = frozen
        self.keep_decoder_steps = True
        self.weights = dict(weights or {})
        if cache_images and not frozen:
            raise ValueError(f'cache_images={cache_images} needs frozen=True: a training encoder '
                             'changes its outputs, so remembered ones would be stale; set '
                             'cache_images=0')
        self.output_cache = ImageOutputCache(cache_images) if cache_images else None
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> 'OMGSegVisualEncoder':
        """A frozen encoder stays in eval mode whatever the runner asks."""
        return super().train(mode and not self.frozen)

    def init_weights(self) -> None:
        """Load the files named in ``weights`` (called by mmengine's runner, or by hand)."""
        from .weights import load_visual_encoder_weights
        load_visual_encoder_weights(self, **self.weights)

    @property
    def query_channels(self) -> int:
        """Width of a query token [content | positional] (2C)."""
        return 2 * self.panoptic_head.feat_channels

    @property
    def pixel_shuffled_channels(self) -> int:
        """Width of a pixel-shuffled C5 token (C5 · ratio², 6144 at full size)."""
        return self.backbone.dims[-1] * self.pixel_shuffle_ratio ** 2

    def prepare_for_inference_(self) -> 'OMGSegVisualEncoder':
        """Inference's lean settings, in place: only the last decoder step is kept and the head's
        attentions run without their large work tensors
        (:func:`~omg_llava.models.seg_heads.lean_attention.use_lean_attention_`; at 1024² on a CPU
        the encode transient falls from ~1.2 GB). Same outputs up to float rounding; returns
        ``self``."""
        self.keep_decoder_steps = False
        use_lean_attention_(self.panoptic_head)
        return self

    def _own_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to the encoder's dtype when its weights are bf16/fp16 (inference's
        ``encoder_dtype``): mmdet's pixel decoder adds float32 positional encodings to its inputs,
        which a plain cast of the weights alone would leave mismatched. fp32 (the reference):
        no-op."""
        weight = next(self.parameters())
        if weight.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=weight.device.type, dtype=weight.dtype)

    # ------------------------------------------------------------------ images
    def forward(self, pixel_values: Tensor) -> VisualEncoderOutput:
        """Encode (B, 3, H, W) normalised square images (H, W multiples of 64) →
        :class:`VisualEncoderOutput` (with ``cache_images``, images seen before come from the cache,
        see :meth:`encode_with_cache`)."""
        if self.output_cache is None:
            return self.encode(pixel_values)
        return self.encode_with_cache(pixel_values)

    def encode_with_cache(self, pixel_values: Tensor) -> VisualEncoderOutput:
        """Like :meth:`encode`, running the encoder only on the images the cache does not hold; the
        output has no ``backbone_features`` / ``decode``."""
        if not self.frozen:
            raise RuntimeError('the output cache serves a frozen encoder only; this one was '
                               'unfrozen after construction (build it with cache_images=0 to train '
                               'it)')
        keys = [image_key(image) for image in pixel_values]
        missing = self.output_cache.missing(keys)
        fresh = {}
        if missing:
            computed = self.encode(pixel_values[missing])
            fresh = {keys[i]: computed.image_rows(j) for j, i in enumerate(missing)}
        rows = self.output_cache.gather(keys, fresh)
        return VisualEncoderOutput.from_image_rows(rows, tuple(pixel_values.shape[-2:]))

    def encode(self, pixel_values: Tensor) -> VisualEncoderOutput:
        """Run the trunk and the head on (B, 3, H, W) images → :class:`VisualEncoderOutput` (every
        field)."""
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen),
            self._own_precision(),
        ):
            pixel_values = pixel_values.to(next(self.parameters()).dtype)
            image_size = tuple(pixel_values.shape[-2:])
            feats = self.backbone(pixel_values)
            head = self.panoptic_head
            image_features = head.encode_image(feats, image_size)
            decode = head.decode_object_queries(image_features,
                                                keep_steps=self.keep_decoder_steps)
            class_logits = decode.class_logits[-1][..., :-1]  # (B, Q, K+1)
            iou_logits = decode.class_logits[-1][..., -1:]
            mask_logits = decode.mask_logits[-1]
            B = pixel_values.shape[0]
            query_tokens = torch.cat([decode.queries[-1],
                                      head.query_embed.weight[None].expand(B, -1, -1)], dim=-1)
            shuffled = pixel_shuffle_down(feats[-1], self.pixel_shuffle_ratio)  # (B, 4*C5, h, w)
            grid = tuple(shuffled.shape[-2:])
            prior, blocked = object_prior(class_logits, mask_logits, query_tokens, grid,
                                          self.object_prior_smooth,
                                          mask_size=image_size)
            pixel_tokens = torch.cat([shuffled.flatten(2).transpose(1, 2), prior], dim=-1)
        return VisualEncoderOutput(pixel_tokens, query_tokens, blocked, image_features,
                                   class_logits, iou_logits,
                                   mask_logits, list(feats), decode)

    # ------------------------------------------------------------------ prompts
    def _decode_prompts(self, points: Tensor, batch_idxs: Tensor, features: ImageFeatures,
                        policy: Any) -> PromptOutput:
        head = self.panoptic_head
        with (
            torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen),
            self._own_precision(),  # pos_linear too: the points are float32
        ):
            content, pos = prompt_queries(head, points, features.image_size)  # (N, 1, C) each
            decode = head.decode_alone(content[:, 0], pos[:, 0], batch_idxs, features, policy)
        return PromptOutput(torch.cat([decode.queries[-1], pos], dim=-1), points, decode)

    def encode_point_prompts(self, points: Tensor, batch_idxs: Tensor,
                             features: ImageFeatures) -> PromptOutput:
        """Point prompts (N, 2) (x, y) in input pixels, on images ``batch_idxs`` (N,) →
        :class:`PromptOutput`."""
        check_points_inside(points, features.image_size)
        return self._decode_prompts(points.float(), batch_idxs, features, own_prediction_policy)

    def encode_box_prompts(self, boxes: Tensor, batch_idxs: Tensor,
                           features: ImageFeatures) -> PromptOutput:
        """Box prompts (N, 4) (x1, y1, x2, y2) in input pixels → :class:`PromptOutput`."""
        check_boxes_inside(boxes, features.image_size)
        return self._decode_prompts(box_center_points(boxes.float()), batch_idxs, features,
                                    box_policy(boxes, features.image_size))

    def encode_region_prompts(self, masks: Tensor, batch_idxs: Tensor,
                              features: ImageFeatures) -> PromptOutput:
        """Region-mask prompts (N, H, W) binary at the input size → :class:`PromptOutput`."""
        if tuple(masks.shape[-2:]) != features.image_size or masks.dim() != 3:
            raise ValueError(f'region masks must be (N, {features.image_size[0]}, '
                             f'{features.image_size[1]}) at the network input size, got '
                             f'{list(masks.shape)}')
        empty = (masks.flatten(1) > 0).sum(-1) == 0
        if empty.any():
            raise ValueError(f'region masks {empty.nonzero().flatten().tolist()} are empty: a '
                             'region prompt needs at least one foreground pixel')
        points, _ = region_center_points(masks)
        return self._decode_prompts(points.float(), batch_idxs, features, region_mask_policy(masks))

    def decode_seg_queries(self, queries: Tensor, batch_idxs: Tensor, features: ImageFeatures,
                           with_classes: bool = False) -> DecodeOutput:
        """[SEG] queries (N, 2C) = [content | positional] → every decoder step; ``.mask_logits[j]``
        is (N, 1, H/4, W/4) and the last one is what inference uses (spec §1.5, §6.1).
        ``with_classes`` also reads the class head on them (``.class_logits[j]`` (N, 1, K+2), for a
        training term only)."""
        head = self.panoptic_head
        C = head.feat_channels
        queries = queries.to(head.query_feat.weight.dtype)  # (N, 2C)
        with self._own_precision():
            return head.decode_alone(queries[:, :C], queries[:, C:], batch_idxs, features,
                                     own_prediction_policy,
                                     with_classes=with_classes,
                                     use_llm_decoder=head.with_llm_decoder_copy)


def check_points_inside(points: Tensor, image_size: tuple[int, int]) -> None:
    """Raise a clear error for (N, 2) (x, y) points outside the [0, W) x [0, H) input."""
    H, W = image_size
    outside = (points[:, 0] < 0) | (points[:, 0] >= W) | (points[:, 1] < 0) | (points[:, 1] >= H)
    if outside.any():
        bad = points[outside].tolist()
        raise ValueError(f'point prompts {bad} lie outside the {W}x{H} image (x in [0, {W}), y in '
                         f'[0, {H})); '
                         'give coordinates in image pixels')


def check_boxes_inside(boxes: Tensor, image_size: tuple[int, int]) -> None:
    """Raise a clear error for (N, 4) boxes that are empty or leave the input."""
    H, W = image_size
    x1, y1, x2, y2 = boxes.unbind(-1)
    bad = (x1 < 0) | (y1 < 0) | (x2 > W) | (y2 > H) | (x2 <= x1) | (y2 <= y1)
    if bad.any():
        raise ValueError(f'box prompts {boxes[bad].tolist()} are empty or outside the {W}x{H} '
                         'image; give (x1, y1, x2, y2) with 0 <= x1 < x2 <= W and 0 <= y1 < y2 '
                         '<= H')
