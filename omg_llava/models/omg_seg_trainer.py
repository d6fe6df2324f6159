"""Pre-training an OMG-Seg visual encoder for instance segmentation (the OMG-Seg stage OMG-LLaVA builds on).

The released OMG-LLaVA starts from a trained OMG-Seg whose 300 object queries already segment objects
(spec §3). A tiny, randomly initialised encoder lacks that, so :class:`OMGSegTrainer` trains trunk, pixel
decoder, masked-attention decoder and class head together with the Hungarian set losses of
:class:`~omg_llava.models.seg_heads.SegmentationSetCriterion`, then :meth:`OMGSegTrainer.save_encoder` writes the
two files the OMG-LLaVA loaders read (``omg_seg_convl.pth`` layout for the head, open_clip names for the trunk)
plus :meth:`OMGSegTrainer.save_class_embeddings` for the class-embedding file.

Class embeddings are fixed random unit vectors (the CLIP text embeddings of the release play that role);
the head learns to project its queries onto them.

OMG-LLaVA also decodes *single* queries through this decoder: a ``[SEG]`` query (the LLM's estimate of an
object query, §1.5) and point/region prompts (§3.5). The released OMG-Seg learnt single-query decoding from its
interactive (SAM-style) training; a decoder trained on the 300-query set alone does not (re-decoding a tiny
model's own final object query alone dropped its IoU from 0.83 to 0.67). With ``single_query_weight > 0`` each
step also decodes, one query at a time, (a) every matched final object query (detached, with its positional
embedding: what a perfect ``[SEG]`` would produce) and (b) a point prompt at a random pixel of every
ground-truth instance, with the ``[SEG]`` mask losses of :func:`~omg_llava.models.seg_losses.seg_mask_losses`.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import Tensor, nn

from omg_llava.checkpoint import RenameRule, rename_keys
from omg_llava.registry import MODELS

from .backbones.convnext_clip import OPEN_CLIP_PREFIXES
from .omg_seg_encoder import OMGSegVisualEncoder
from .seg_heads.omg_seg_head import DecodeOutput, ImageFeatures, own_prediction_policy
from .seg_heads.prompt_queries import prompt_queries
from .seg_heads.set_criterion import SegmentationSetCriterion
from .seg_losses import MaskLossConfig, seg_mask_losses

#: the files :meth:`OMGSegTrainer.export` writes (keys as in an OMG-LLaVA config's ``visual_encoder.weights``)
ENCODER_FILES = dict(omg_seg='omg_seg.pth', clip='clip_trunk.safetensors', class_embed='class_embed.pth')
# backbone names → open_clip names: the inverse of ``backbones.convnext_clip.OPEN_CLIP_RENAMES``.
TO_OPEN_CLIP_RENAMES: tuple[RenameRule, ...] = tuple(RenameRule(re.escape(b), a) for a, b in OPEN_CLIP_PREFIXES)


def random_class_embeddings(num_classes: int, num_synonyms: int, dim: int, seed: int = 0) -> Tensor:
    """(K, synonyms, dim) L2-unit random vectors, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, num_synonyms, dim, generator=generator), dim=-1)


def random_mask_points(masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One uniformly drawn foreground pixel per mask: (n, H, W) binary → (n, 2) float (x, y) pixel centres.

    An empty mask gets the image centre (it has no pixel to point at)."""
    n, H, W = masks.shape
    flat = masks.flatten(1).float()
    empty = flat.sum(-1) == 0
    flat[empty] = 1.0
    index = torch.multinomial(flat, 1, generator=generator)[:, 0]
    points = torch.stack([index % W, index // W], dim=-1).float() + 0.5
    points[empty] = points.new_tensor([W / 2, H / 2])
    return points


def _build_encoder(encoder: OMGSegVisualEncoder | dict) -> OMGSegVisualEncoder:
    if isinstance(encoder, dict):
        encoder = MODELS.build(dict(encoder, frozen=False, weights=encoder.get('weights') or {}))
    encoder.frozen = False
    encoder.backbone.frozen = False  # ConvNeXtCLIPBackbone keeps its own switch
    encoder.requires_grad_(True)
    return encoder


@MODELS.register_module()
class OMGSegTrainer(BaseModel):
    """Trains an :class:`OMGSegVisualEncoder` (unfrozen) on instance masks with Hungarian set losses.

    Args:
        visual_encoder: the encoder or its config (``frozen`` is overridden to False).
        num_classes: K classes of the data (labels in [0, K)); default: all classes of the head.
        class_embed_seed: seed of the random class embeddings set on the head.
        criterion: keyword arguments of :class:`SegmentationSetCriterion` (besides ``num_classes``).
        single_query_weight: weight of the single-query decoding losses (see the module docstring); 0 = off.
        single_query_points: points sampled per mask by those losses.
        data_preprocessor: mmengine data preprocessor config (default: moves tensors to the device).
    """

    def __init__(self, visual_encoder: OMGSegVisualEncoder | dict, num_classes: int | None = None,
                 class_embed_seed: int = 0, criterion: dict | None = None, single_query_weight: float = 0.0,
                 single_query_points: int = 12544, data_preprocessor: dict | nn.Module | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.visual_encoder = _build_encoder(visual_encoder)
        head = self.visual_encoder.panoptic_head
        clip_dim, num_head_classes, num_synonyms = head.cls_embed.shape
        num_head_classes -= 1  # the no-object column
        self.num_classes = num_head_classes if num_classes is None else num_classes
        if not 0 < self.num_classes <= num_head_classes:
            raise ValueError(f'num_classes={self.num_classes} does not fit a head with {num_head_classes} classes')
        head.set_class_embeddings(random_class_embeddings(num_head_classes, num_synonyms, clip_dim, class_embed_seed))
        self.criterion = SegmentationSetCriterion(self.num_classes, **(criterion or {}))
        if single_query_weight < 0:
            raise ValueError(f'single_query_weight must be >= 0, got {single_query_weight}')
        self.single_query_weight = single_query_weight
        self.single_query_loss_cfg = MaskLossConfig(num_points=single_query_points)

    def encode(self, pixel_values: Tensor) -> tuple[ImageFeatures, DecodeOutput]:
        """(B, 3, S, S) normalised images → image features and every decoder step of the object queries."""
        encoder = self.visual_encoder
        pixel_values = pixel_values.to(next(encoder.parameters()).dtype)
        features = encoder.panoptic_head.encode_image(encoder.backbone(pixel_values), tuple(pixel_values.shape[-2:]))
        return features, encoder.panoptic_head.decode_object_queries(features)

    def single_query_losses(self, features: ImageFeatures, decode: DecodeOutput, gt_masks: list[Tensor],
                            matches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Mask losses of single-query decodings (module docstring): matched final object queries re-decoded
        alone, and one point prompt per instance at a random pixel of its mask.

        Args:
            features: the batch's image features; decode: its object-query decoding.
            gt_masks: per image, (n_b, S, S) binary masks.
            matches: per image, the last decoder step's ``(query_idxs, gt_idxs)``
                (:meth:`SegmentationSetCriterion.losses_and_matches`).

        Returns:
            ``loss_single_dice`` and ``loss_single_mask`` (scalars, scaled by ``single_query_weight``).
        """
        head = self.visual_encoder.panoptic_head
        final_queries = decode.queries[-1].detach()  # (B, Q, C)
        contents, positions, image_idxs, targets = [], [], [], []
        for b, (masks, (query_idxs, gt_idxs)) in enumerate(zip(gt_masks, matches)):
            if len(masks) == 0:
                continue
            masks = masks.to(final_queries.device)
            contents.append(final_queries[b, query_idxs])
            positions.append(head.query_embed.weight[query_idxs])
            targets.append(masks[gt_idxs])
            points = random_mask_points(masks)  # (n_b, 2)
            content, pos = prompt_queries(head, points, features.image_size)
            contents.append(content[:, 0])
            positions.append(pos[:, 0])
            targets.append(masks)
            image_idxs.append(torch.full((len(query_idxs) + len(masks),), b, device=masks.device))
        if not contents:
            zero = decode.mask_logits[-1].sum() * 0
            return {'loss_single_dice': zero, 'loss_single_mask': zero}
        content, pos = torch.cat(contents)[:, None], torch.cat(positions)[:, None]  # (N, 1, C) each
        image_idxs = torch.cat(image_idxs)
        single = head.decode(content, pos, features.select(image_idxs), own_prediction_policy)
        losses = seg_mask_losses(single.mask_logits, torch.cat(targets), self.single_query_loss_cfg)
        return {'loss_single_dice': self.single_query_weight * losses['loss_dice'],
                'loss_single_mask': self.single_query_weight * losses['loss_mask']}

    def forward(self, data: dict, data_samples: None = None, mode: str = 'loss'):
        """Args:
            data: ``pixel_values`` (B, 3, S, S), ``gt_labels`` list of (n_b,), ``gt_masks`` list of (n_b, S, S).
            mode: ``'loss'`` → dict of losses; ``'predict'`` → per-image predictions (see :meth:`predict`);
                ``'tensor'`` → the :class:`DecodeOutput`.
        """
        features, decode = self.encode(data['pixel_values'])
        if mode == 'loss':
            losses, matches = self.criterion.losses_and_matches(decode, data['gt_labels'], data['gt_masks'])
            if self.single_query_weight > 0:
                losses.update(self.single_query_losses(features, decode, data['gt_masks'], matches))
            return losses
        if mode == 'predict':
            return self.predict(decode, tuple(data['pixel_values'].shape[-2:]))
        if mode == 'tensor':
            return decode
        raise ValueError(f'unknown mode {mode!r}; use "loss", "predict" or "tensor"')

    @torch.no_grad()
    def predict(self, decode: DecodeOutput, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Last-step predictions per image, sorted by score: ``scores`` (Q,), ``labels`` (Q,) in [0, K),
        ``masks`` (Q, S, S) bool (logit > 0 after bilinear upsampling)."""
        K = self.num_classes
        probs = decode.class_logits[-1][..., :-1].float().softmax(-1)  # (B, Q, K_head+1)
        scores, labels = probs[..., :K].max(-1)  # no-object and classes beyond K excluded
        masks = F.interpolate(decode.mask_logits[-1].float(), size=image_size, mode='bilinear', align_corners=False)
        results = []
        for b in range(len(scores)):
            order = scores[b].argsort(descending=True)
            results.append(dict(scores=scores[b, order], labels=labels[b, order], masks=masks[b, order] > 0))
        return results

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | os.PathLike) -> list[str]:
        """Write the three :data:`ENCODER_FILES` into ``out_dir`` (created if needed); returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {k: os.path.join(os.fspath(out_dir), name) for k, name in ENCODER_FILES.items()}
        self.save_encoder(paths['omg_seg'], paths['clip'])
        self.save_class_embeddings(paths['class_embed'])
        return list(paths.values())

    def save_encoder(self, path_head: str | os.PathLike, path_trunk: str | os.PathLike) -> None:
        """Write the head as ``{'state_dict': {'panoptic_head.*': ...}}`` (the ``omg_seg_convl.pth`` layout) and
        the trunk as safetensors with open_clip names (``visual.trunk.*`` / ``visual.head.*``), readable by
        :func:`omg_llava.models.weights.load_visual_encoder_weights` (``omg_seg=`` / ``clip=``)."""
        from safetensors.torch import save_file
        head_state = {f'panoptic_head.{k}': v.detach().cpu().clone()
                      for k, v in self.visual_encoder.panoptic_head.state_dict().items() if '_llm.' not in k}
        torch.save({'state_dict': head_state}, os.fspath(path_head))
        trunk_state, _ = rename_keys(self.visual_encoder.backbone.state_dict(), TO_OPEN_CLIP_RENAMES)
        unmapped = [k for k in trunk_state if not k.startswith('visual.')]
        if unmapped:
            raise RuntimeError(f'trunk keys without an open_clip name: {unmapped[:5]}')
        save_file({k: v.detach().cpu().contiguous() for k, v in trunk_state.items()}, os.fspath(path_trunk))

    def save_class_embeddings(self, path: str | os.PathLike) -> None:
        """Write the head's class embeddings as a bare (K, synonyms, clip_dim) tensor (the class-embedding file)."""
        cls_embed = self.visual_encoder.panoptic_head.cls_embed  # (clip_dim, K+1, synonyms)
        torch.save(cls_embed[:, :-1].permute(1, 2, 0).contiguous().cpu(), os.fspath(path))
