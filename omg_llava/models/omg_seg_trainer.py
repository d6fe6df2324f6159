"""Pre-training an OMG-Seg visual encoder for instance segmentation (the OMG-Seg stage OMG-LLaVA
builds on).

The released OMG-LLaVA starts from a trained OMG-Seg whose 300 object queries already segment
objects (spec §3). A tiny, randomly initialised encoder lacks that, so :class:`OMGSegTrainer` trains
trunk, pixel decoder, masked-attention decoder and class head together with the Hungarian set losses
of :class:`~omg_llava.models.seg_heads.SegmentationSetCriterion`, then
:meth:`OMGSegTrainer.save_encoder` writes the two files the OMG-LLaVA loaders read
(``omg_seg_convl.pth`` layout for the head, open_clip names for the trunk) plus
:meth:`OMGSegTrainer.save_class_embeddings` for the class-embedding file.

Class embeddings are fixed unit vectors the head learns to project its queries onto; the release
uses CLIP text embeddings of the class names. Here they are random, or, given ``class_names``, word
bags of the names (:func:`word_bag_class_embeddings`): like CLIP's, names sharing a word share a
direction. That matters when classes compose attributes: with 24 "colour kind" classes and
independent random vectors, the head learnt the colour and barely the kind (matched query's kind
right 51 % after 2000 steps, with the region term below); with word bags, 61-77 % (two runs).

OMG-LLaVA also decodes *single* queries through this decoder: a ``[SEG]`` query (the LLM's estimate
of an object query, §1.5) and point/region prompts (§3.5). The released OMG-Seg learnt single-query
decoding from its interactive (SAM-style) training; a decoder trained on the 300-query set alone
does not (re-decoding a tiny model's own final object query alone dropped its IoU from 0.83 to
0.67). With ``single_query_weight > 0`` each step also decodes, one query at a time, (a) every
matched final object query (detached, with its positional embedding: what a perfect ``[SEG]`` would
produce) and (b) a point prompt at a random pixel of every ground-truth instance, with the ``[SEG]``
mask losses of :func:`~omg_llava.models.seg_losses.seg_mask_losses`.

The released trunk is a CLIP image tower: its features already tell object categories apart. A tiny
trunk trained from scratch with the set losses learns only what the masks need: on the synthetic
shapes, colour (which the masks follow) was linearly readable from mask-pooled trunk and
pixel-decoder features, the shape's kind was not (30-42 %, chance 25 %), and the class head never
learnt it either (kind of the matched query right 34-37 % after 1200 steps). With
``region_class_weight > 0`` each step also classifies every ground-truth instance from one trunk
stage alone: the stage's features averaged over the instance's mask (:func:`mask_pooled_features`),
a linear classifier owned by the trainer (not exported), cross-entropy with the instance's class.
Trained alone from scratch, kind accuracy reached 84 % in 700 steps from the stride-16 stage but 44
% from the stride-32 one (a 4x4 map at 128 px), hence ``region_class_stage``.

The set losses do not make the queries say *where* their object is either (the centre was not
linearly readable from the final queries: RMSE 0.18 of the image side for x, about the spread of the
centres), and OMG-LLaVA's object tokens are those queries; a 7B LLM reads positions off the pixel
tokens, a tiny one trained from scratch hardly. With ``box_weight > 0`` each step also regresses the
normalised box (cx, cy, w, h) of every matched object from its final query (a trainer-owned MLP, not
exported; L1, as DETR's box term). At weight 5 the centre became readable (RMSE 0.07 of the side for
x) without costing the kind.

Which referring expressions a ``[SEG]`` query can select is the decoder's doing, not the LLM's: on
the synthetic shapes a bag-of-words MLP decoded through a frozen tiny decoder matched the tiny LLM
expression kind by expression kind, and two pre-stages of the same recipe gave opposite profiles
(attributes 49 % / 76 % right object, positions 81 % / 57 %), because nothing here trained a
text-derived query. With ``referring_weight > 0`` (and a dataset with ``refs_file``) each step also
decodes, alone, a query made from each of up to ``referring_per_image`` referring expressions per
image by a trainer-owned :class:`~omg_llava.models.referring_queries.BagOfWordsQueryEncoder` (not
exported), with the ``[SEG]`` mask losses against the referred instance. In a lab with a trainable
decoder this raised the held-out right-object rate from 67 % to 79 % within 500 steps; in the tiny
recipe (weight 2 or 4, 3000 steps) the trainer's own queries find the right held-out object for 77 %
of the expressions, and the OMG-LLaVA trained on that encoder reached cIoU 0.60 against 0.54
(docs/tiny_model.md). :meth:`export` also writes the expression encoder, so that
``projects/tiny_omg_llava/referring_figures.py`` can measure those lookups.

OMG-LLaVA answers questions about a point, a box or a region mask from that prompt's decoded query
(``[final content | positional]``, spec §3.4) alone: the LLM reads the object's colour and kind off
it. The mask losses of the point prompts above make the prompt segment its object, not say what it
is: in a tiny pre-stage the object's colour was linearly readable from the prompt features 60-65 %
of the time, and the LLM trained on them answered about one object of the image whichever was
prompted. With ``prompt_class_weight > 0`` each step also decodes one prompt per ground-truth
instance, of a kind drawn at random (a random interior point, the mask's tight box, or the mask
itself, through the encoder's own prompt encoders), and a trainer-owned linear classifier (not
exported) predicts the instance's class from the prompt's final content (cross-entropy): the
content has to carry the class linearly, which is what the LLM's projector reads.
"""
from __future__ import annotations

import os
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from mmdet.structures.mask import mask2bbox
from mmengine.model import BaseModel
from torch import Tensor, nn

from omg_llava.checkpoint import RenameRule, rename_keys
from omg_llava.registry import MODELS

from .backbones.convnext_clip import OPEN_CLIP_PREFIXES
from .omg_seg_encoder import OMGSegVisualEncoder
from .referring_queries import BagOfWordsQueryEncoder
from .seg_heads.omg_seg_head import DecodeOutput, ImageFeatures, own_prediction_policy
from .seg_heads.prompt_queries import prompt_queries
from .seg_heads.set_criterion import SegmentationSetCriterion
from .seg_losses import MaskLossConfig, non_negative_weight, seg_mask_losses
from .visual_prompts import PROMPT_KINDS, VisualPrompt, encode_visual_prompts

#: the files :meth:`OMGSegTrainer.export` writes (keys as in an OMG-LLaVA config's
#: ``visual_encoder.weights``)
ENCODER_FILES = dict(omg_seg='omg_seg.pth', clip='clip_trunk.safetensors',
                     class_embed='class_embed.pth')
REFERRING_QUERIES_FILE = 'referring_queries.pth'
# backbone names → open_clip names: the inverse of ``backbones.convnext_clip.OPEN_CLIP_RENAMES``.
TO_OPEN_CLIP_RENAMES: tuple[RenameRule, ...] = tuple(RenameRule(re.escape(b), a)
                                                     for a, b in OPEN_CLIP_PREFIXES)


def random_class_embeddings(num_classes: int, num_synonyms: int, dim: int, seed: int = 0) -> Tensor:
    """(K, synonyms, dim) L2-unit random vectors, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(num_classes, num_synonyms, dim, generator=generator), dim=-1)


def word_bag_class_embeddings(class_names: Sequence[str], num_synonyms: int, dim: int,
                              seed: int = 0) -> Tensor:
    """(K, synonyms, dim) unit vectors: each class name's words get fixed random vectors
    (reproducible from ``seed``, independent of the name order) and a name's embedding is their
    normalised sum, so names sharing a word ("blue star", "blue circle") share a direction, as CLIP
    text embeddings of related names do."""
    vocabulary = sorted({word for name in class_names for word in name.lower().split()})
    if not vocabulary:
        raise ValueError('class_names must hold at least one non-empty name')
    generator = torch.Generator().manual_seed(seed)
    word_vectors = dict(zip(vocabulary,
                            F.normalize(torch.randn(len(vocabulary), dim, generator=generator),
                                        dim=-1)))
    embeds = []
    for name in class_names:
        words = name.lower().split()
        if not words:
            raise ValueError(f'empty class name in class_names: {list(class_names)!r}')
        embeds.append(F.normalize(torch.stack([word_vectors[w] for w in words]).sum(0), dim=-1))
    return torch.stack(embeds)[:, None].expand(-1, num_synonyms, -1).contiguous()


def mask_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of binary masks as (cx, cy, w, h) fractions of the mask size: (n, H, W) → (n, 4).

    An empty mask gets the zero box (mmdet's ``mask2bbox`` convention)."""
    H, W = masks.shape[-2:]
    boxes = bbox_xyxy_to_cxcywh(mask2bbox(masks.bool()))  # pixels, exclusive right/bottom edges
    return boxes / boxes.new_tensor([W, H, W, H])


def random_mask_points(masks: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One uniformly drawn foreground pixel per mask: (n, H, W) binary → (n, 2) float (x, y) pixel
    centres.

    An empty mask gets the image centre (it has no pixel to point at)."""
    n, H, W = masks.shape
    flat = masks.flatten(1).float()
    empty = flat.sum(-1) == 0
    flat[empty] = 1.0
    index = torch.multinomial(flat, 1, generator=generator)[:, 0]
    points = torch.stack([index % W, index // W], dim=-1).float() + 0.5
    points[empty] = points.new_tensor([W / 2, H / 2])
    return points


def mask_pooled_features(feature_map: Tensor, masks: Tensor) -> Tensor:
    """Average of a feature map over each mask: (C, h, w) and (n, H, W) binary (H, W multiples of h,
    w) → (n, C).

    Masks are area-resized to the map, so a cell counts with the fraction of it the mask covers."""
    # (n, h, w)
    weights = F.adaptive_avg_pool2d(masks[:, None].float(), feature_map.shape[-2:])[:, 0]
    pooled = torch.einsum('nhw,chw->nc', weights, feature_map.float())
    return pooled / weights.flatten(1).sum(-1, keepdim=True).clamp(min=1e-6)


def _build_encoder(encoder: OMGSegVisualEncoder | dict) -> OMGSegVisualEncoder:
    if isinstance(encoder, dict):
        encoder = MODELS.build(dict(encoder, frozen=False, cache_images=0,
                                    weights=encoder.get('weights') or {}))
    encoder.frozen = False
    encoder.output_cache = None  # a training encoder's outputs change: nothing to remember
    encoder.backbone.frozen = False  # ConvNeXtCLIPBackbone keeps its own switch
    encoder.requires_grad_(True)
    return encoder


@MODELS.register_module()
class OMGSegTrainer(BaseModel):
    """Trains an :class:`OMGSegVisualEncoder` (unfrozen) on instance masks with Hungarian set
    losses.

    Args:
        visual_encoder: the encoder or its config (``frozen`` is overridden to False).
        num_classes: K classes of the data (labels in [0, K)); default: all classes of the head.
        class_embed_seed: seed of the random class embeddings set on the head.
        class_names: the data's K class names (label order); given, the first K class embeddings are
            :func:`word_bag_class_embeddings` of them instead of independent random vectors.
        criterion: keyword arguments of :class:`SegmentationSetCriterion` (besides ``num_classes``).
        single_query_weight: weight of the single-query decoding losses (see the module docstring);
            0 = off.
        single_query_points: points sampled per mask by those losses.
        region_class_weight: weight of the trunk's region classification (module docstring); 0 =
            off.
        region_class_stage: trunk stage (0-3, strides 4-32) whose mask-pooled features that
            classification reads.
        box_weight: weight of the box regression from the matched final queries (module docstring);
            0 = off.
        referring_weight: weight of the referring-expression decoding losses (module docstring); 0 =
            off.
        referring_per_image: at most this many expressions per image and step (a random subset).
        prompt_class_weight: weight of the classification of visual-prompt queries (module
            docstring); 0 = off.
        data_preprocessor: mmengine data preprocessor config (default: moves tensors to the device).
    """

    def __init__(self, visual_encoder: OMGSegVisualEncoder | dict, num_classes: int | None = None,
                 class_embed_seed: int = 0, class_names: Sequence[str] | None = None,
                 criterion: dict | None = None,
                 single_query_weight: float = 0.0, single_query_points: int = 12544,
                 region_class_weight: float = 0.0, region_class_stage: int = 2,
                 box_weight: float = 0.0,
                 referring_weight: float = 0.0, referring_per_image: int = 4,
                 prompt_class_weight: float = 0.0,
                 data_preprocessor: dict | nn.Module | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.visual_encoder = _build_encoder(visual_encoder)
        head = self.visual_encoder.panoptic_head
        clip_dim, num_head_classes, num_synonyms = head.cls_embed.shape
        num_head_classes -= 1  # the no-object column
        self.num_classes = num_head_classes if num_classes is None else num_classes
        if not 0 < self.num_classes <= num_head_classes:
            raise ValueError(f'num_classes={self.num_classes} does not fit a head with '
                             f'{num_head_classes} classes')
        class_embeds = random_class_embeddings(num_head_classes, num_synonyms, clip_dim,
                                               class_embed_seed)
        if class_names is not None:
            if len(class_names) != self.num_classes:
                raise ValueError(f'{len(class_names)} class_names for '
                                 f'num_classes={self.num_classes}')
            class_embeds[:self.num_classes] = word_bag_class_embeddings(class_names, num_synonyms,
                                                                        clip_dim, class_embed_seed)
        head.set_class_embeddings(class_embeds)
        self.criterion = SegmentationSetCriterion(self.num_classes, **(criterion or {}))
        self.single_query_weight = non_negative_weight('single_query_weight', single_query_weight)
        self.region_class_weight = non_negative_weight('region_class_weight', region_class_weight)
        dims = self.visual_encoder.backbone.dims
        if not 0 <= region_class_stage < len(dims):
            raise ValueError(f'region_class_stage must be in [0, {len(dims) - 1}], got '
                             f'{region_class_stage}')
        self.region_class_stage = region_class_stage
        self.region_classifier = (nn.Linear(dims[region_class_stage], self.num_classes)
                                  if region_class_weight else None)
        self.box_weight = non_negative_weight('box_weight', box_weight)
        channels = head.query_feat.weight.shape[1]
        self.box_head = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(),
                                      nn.Linear(channels, 4)) \
            if box_weight else None
        self.single_query_loss_cfg = MaskLossConfig(num_points=single_query_points)
        self.referring_weight = non_negative_weight('referring_weight', referring_weight)
        if referring_per_image < 1:
            raise ValueError(f'referring_per_image must be >= 1, got {referring_per_image}')
        self.referring_per_image = referring_per_image
        self.referring_queries = BagOfWordsQueryEncoder(channels) if referring_weight else None
        self.prompt_class_weight = non_negative_weight('prompt_class_weight', prompt_class_weight)
        self.prompt_classifier = (nn.Linear(channels, self.num_classes)
                                  if prompt_class_weight else None)

    def encode(self, pixel_values: Tensor) -> tuple[list[Tensor], ImageFeatures, DecodeOutput]:
        """(B, 3, S, S) normalised images → the 4 trunk maps, the image features and every decoder
        step of the object queries."""
        encoder = self.visual_encoder
        pixel_values = pixel_values.to(next(encoder.parameters()).dtype)
        trunk_maps = encoder.backbone(pixel_values)
        features = encoder.panoptic_head.encode_image(trunk_maps, tuple(pixel_values.shape[-2:]))
        return trunk_maps, features, encoder.panoptic_head.decode_object_queries(features)

    def region_class_loss(self, trunk_map: Tensor, gt_labels: list[Tensor],
                          gt_masks: list[Tensor]) -> Tensor:
        """Classification of every instance from one trunk stage (module docstring).

        Args:
            trunk_map: (B, C, h, w) the ``region_class_stage`` trunk map.
            gt_labels: per image, (n_b,) classes in [0, K); gt_masks: per image, (n_b, S, S) binary
                masks.

        Returns:
            ``region_class_weight`` × mean cross-entropy over the batch's instances (0 in the graph
            if none).
        """
        pooled = [mask_pooled_features(trunk_map[b], masks.to(trunk_map.device))
                  for b, masks in enumerate(gt_masks) if len(masks)]
        if not pooled:
            return trunk_map.sum() * 0.0
        # (n, K)
        logits = self.region_classifier(torch.cat(pooled).to(self.region_classifier.weight.dtype))
        labels = torch.cat([labels for labels in gt_labels if len(labels)]).to(logits.device).long()
        return self.region_class_weight * F.cross_entropy(logits.float(), labels)

    def box_loss(self, decode: DecodeOutput, gt_masks: list[Tensor],
                 matches: list[tuple[Tensor, Tensor]]) -> Tensor:
        """``box_weight`` × L1 between the boxes regressed from the matched final queries and the
        ground-truth mask boxes (:func:`mask_boxes`), averaged over the batch's matched objects (0
        in the graph if none).

        Args:
            decode: the batch's object-query decoding; gt_masks: per image, (n_b, S, S) binary
                masks.
            matches: per image, the last decoder step's ``(query_idxs, gt_idxs)``.
        """
        final_queries = decode.queries[-1]  # (B, Q, C)
        queries = [final_queries[b, query_idxs] for b, (query_idxs, _) in enumerate(matches)
                   if len(query_idxs)]
        if not queries:
            return final_queries.sum() * 0.0
        targets = torch.cat([mask_boxes(masks[gt_idxs].to(final_queries.device))
                             for masks, (query_idxs, gt_idxs) in zip(gt_masks, matches)
                             if len(query_idxs)])
        predicted = self.box_head(torch.cat(queries)).float().sigmoid()  # (n, 4)
        return self.box_weight * F.l1_loss(predicted, targets)

    def single_query_losses(self, features: ImageFeatures, decode: DecodeOutput,
                            gt_masks: list[Tensor],
                            matches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        """Mask losses of single-query decodings (module docstring): matched final object queries
        re-decoded alone, and one point prompt per instance at a random pixel of its mask.

        Args:
            features: the batch's image features; decode: its object-query decoding.
            gt_masks: per image, (n_b, S, S) binary masks.
            matches: per image, the last decoder step's ``(query_idxs, gt_idxs)``
                (:meth:`SegmentationSetCriterion.losses_and_matches`).

        Returns:
            ``loss_single_dice`` and ``loss_single_mask`` (scalars, scaled by
            ``single_query_weight``).
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
        single = head.decode_alone(torch.cat(contents), torch.cat(positions), torch.cat(image_idxs),
                                   features, own_prediction_policy)
        losses = seg_mask_losses(single.mask_logits, torch.cat(targets), self.single_query_loss_cfg)
        return {'loss_single_dice': self.single_query_weight * losses['loss_dice'],
                'loss_single_mask': self.single_query_weight * losses['loss_mask']}

    def prompt_class_loss(self, features: ImageFeatures, gt_labels: list[Tensor],
                          gt_masks: list[Tensor]) -> Tensor:
        """Classification of every instance from one visual prompt on it (module docstring).

        Each non-empty instance gets a point (:func:`random_mask_points`), its tight box or its
        mask, drawn uniformly, decoded by the encoder's prompt encoders; the trainer's linear
        classifier reads the final content (N, C) of each.

        Args:
            features: the batch's image features.
            gt_labels: per image, (n_b,) classes in [0, K); gt_masks: per image, (n_b, S, S) binary
                masks.

        Returns:
            ``prompt_class_weight`` × mean cross-entropy over the prompted instances (0 in the graph
            if none).
        """
        device = features.mask_features.device
        prompts, targets = [], []
        for b, (labels, masks) in enumerate(zip(gt_labels, gt_masks)):
            masks = masks.to(device)
            keep = (masks.flatten(1) > 0).any(-1)
            masks, labels = masks[keep], labels.to(device)[keep].long()
            if not len(masks):
                continue
            draw = torch.randint(len(PROMPT_KINDS), (len(masks),), device=device).tolist()
            values = {'point': random_mask_points(masks), 'box': mask2bbox(masks.bool()).float(),
                      'mask': masks}
            prompts += [VisualPrompt(PROMPT_KINDS[k], values[PROMPT_KINDS[k]][i], b)
                        for i, k in enumerate(draw)]
            targets.append(labels)
        if not prompts:
            return sum(p.sum() for p in self.prompt_classifier.parameters()) * 0.0
        C = self.visual_encoder.panoptic_head.feat_channels
        contents = encode_visual_prompts(self.visual_encoder, prompts, features)[:, :C]  # (N, C)
        logits = self.prompt_classifier(contents.to(self.prompt_classifier.weight.dtype))
        return self.prompt_class_weight * F.cross_entropy(logits.float(), torch.cat(targets))

    def decode_referring(self, features: ImageFeatures, sentences: list[str],
                         image_idxs: list[int]) -> DecodeOutput:
        """Decode each referring expression alone, as a query of the trainer's bag-of-words encoder.

        Args:
            features: image features of B images.
            sentences: N expressions; image_idxs: the image (in [0, B)) each one refers into.

        Returns:
            The decoder steps of the N single queries (``mask_logits[-1]``: (N, 1, h, w)).
        """
        if self.referring_queries is None:
            raise ValueError('this OMGSegTrainer has no referring-expression encoder: build it '
                             'with referring_weight > 0')
        queries = self.referring_queries(sentences)  # (N, 2C)
        C = queries.shape[-1] // 2
        return self.visual_encoder.panoptic_head.decode_alone(
            queries[:, :C], queries[:, C:], torch.tensor(image_idxs, device=queries.device),
            features, own_prediction_policy)

    def referring_losses(self, features: ImageFeatures, sentences: list[list[str]],
                         targets: list[Tensor], gt_masks: list[Tensor]) -> dict[str, Tensor]:
        """Mask losses of queries made from referring expressions, each decoded alone (module
        docstring).

        Args:
            features: the batch's image features.
            sentences: per image, its r_b expressions; targets: per image, (r_b,) index of each
                one's instance.
            gt_masks: per image, (n_b, S, S) binary masks.

        Returns:
            ``loss_ref_dice`` and ``loss_ref_mask`` (scalars, scaled by ``referring_weight``; 0 in
            the graph when the batch has no expression).
        """
        chosen, image_idxs, masks = [], [], []
        for b, (image_sentences, image_targets) in enumerate(zip(sentences, targets)):
            keep = torch.randperm(len(image_sentences))[:self.referring_per_image].tolist()
            chosen += [image_sentences[i] for i in keep]
            image_idxs += [b] * len(keep)
            masks += [gt_masks[b][image_targets[i]] for i in keep]
        if not chosen:
            zero = sum(p.sum() for p in self.referring_queries.parameters()) * 0
            return {'loss_ref_dice': zero, 'loss_ref_mask': zero}
        decode = self.decode_referring(features, chosen, image_idxs)
        losses = seg_mask_losses(decode.mask_logits,
                                 torch.stack(masks).to(decode.mask_logits[-1].device),
                                 self.single_query_loss_cfg)
        return {'loss_ref_dice': self.referring_weight * losses['loss_dice'],
                'loss_ref_mask': self.referring_weight * losses['loss_mask']}

    def forward(self, data: dict, data_samples: None = None, mode: str = 'loss'):
        """Args:
            data: ``pixel_values`` (B, 3, S, S), ``gt_labels`` list of (n_b,), ``gt_masks`` list of
                (n_b, S, S); with ``referring_weight``, also ``ref_sentences`` / ``ref_targets``
                (CocoInstanceDataset).
            mode: ``'loss'`` → dict of losses; ``'predict'`` → per-image predictions (see
                :meth:`predict`); ``'tensor'`` → the :class:`DecodeOutput`.
        """
        trunk_maps, features, decode = self.encode(data['pixel_values'])
        if mode == 'loss':
            losses, matches = self.criterion.losses_and_matches(decode, data['gt_labels'],
                                                                data['gt_masks'])
            if self.single_query_weight > 0:
                losses.update(self.single_query_losses(features, decode, data['gt_masks'], matches))
            if self.referring_weight > 0:
                if 'ref_sentences' not in data:
                    raise ValueError('referring_weight > 0 needs referring expressions in the '
                                     'batch: give the dataset a refs_file (CocoInstanceDataset)')
                losses.update(self.referring_losses(features, data['ref_sentences'],
                                                    data['ref_targets'], data['gt_masks']))
            if self.prompt_class_weight > 0:
                losses['loss_prompt_cls'] = self.prompt_class_loss(features, data['gt_labels'],
                                                                   data['gt_masks'])
            if self.box_weight > 0:
                losses['loss_box'] = self.box_loss(decode, data['gt_masks'], matches)
            if self.region_class_weight > 0:
                losses['loss_region_cls'] = self.region_class_loss(
                    trunk_maps[self.region_class_stage], data['gt_labels'], data['gt_masks'])
            return losses
        if mode == 'predict':
            return self.predict(decode, tuple(data['pixel_values'].shape[-2:]))
        if mode == 'tensor':
            return decode
        raise ValueError(f'unknown mode {mode!r}; use "loss", "predict" or "tensor"')

    @torch.no_grad()
    def predict(self, decode: DecodeOutput, image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Last-step predictions per image, sorted by score: ``scores`` (Q,), ``labels`` (Q,) in [0,
        K), ``masks`` (Q, S, S) bool (logit > 0 after bilinear upsampling)."""
        K = self.num_classes
        probs = decode.class_logits[-1][..., :-1].float().softmax(-1)  # (B, Q, K_head+1)
        scores, labels = probs[..., :K].max(-1)  # no-object and classes beyond K excluded
        masks = F.interpolate(decode.mask_logits[-1].float(), size=image_size, mode='bilinear',
                              align_corners=False)
        results = []
        for b in range(len(scores)):
            order = scores[b].argsort(descending=True)
            results.append(dict(scores=scores[b, order], labels=labels[b, order],
                                masks=masks[b, order] > 0))
        return results

    # ------------------------------------------------------------------ export
    def export(self, out_dir: str | os.PathLike) -> list[str]:
        """Write the three :data:`ENCODER_FILES` into ``out_dir`` (created if needed) and, with a
        referring term, the trainer's expression encoder as :data:`REFERRING_QUERIES_FILE` (a flat
        state dict, for evaluating the pre-stage's own referring lookups; OMG-LLaVA does not read
        it); returns the written paths."""
        os.makedirs(out_dir, exist_ok=True)
        paths = {k: os.path.join(os.fspath(out_dir), name) for k, name in ENCODER_FILES.items()}
        self.save_encoder(paths['omg_seg'], paths['clip'])
        self.save_class_embeddings(paths['class_embed'])
        if self.referring_queries is not None:
            paths['referring_queries'] = os.path.join(os.fspath(out_dir), REFERRING_QUERIES_FILE)
            torch.save({k: v.detach().cpu()
                        for k, v in self.referring_queries.state_dict().items()},
                       paths['referring_queries'])
        return list(paths.values())

    def save_encoder(self, path_head: str | os.PathLike, path_trunk: str | os.PathLike) -> None:
        """Write the head as ``{'state_dict': {'panoptic_head.*': ...}}`` (the ``omg_seg_convl.pth``
        layout) and the trunk as safetensors with open_clip names (``visual.trunk.*`` /
        ``visual.head.*``), readable by :func:`omg_llava.models.weights.load_visual_encoder_weights`
        (``omg_seg=`` / ``clip=``)."""
        from safetensors.torch import save_file
        head_state = {f'panoptic_head.{k}': v.detach().cpu().clone()
                      for k, v in self.visual_encoder.panoptic_head.state_dict().items()
                      if '_llm.' not in k}
        torch.save({'state_dict': head_state}, os.fspath(path_head))
        trunk_state, _ = rename_keys(self.visual_encoder.backbone.state_dict(),
                                     TO_OPEN_CLIP_RENAMES)
        unmapped = [k for k in trunk_state if not k.startswith('visual.')]
        if unmapped:
            raise RuntimeError(f'trunk keys without an open_clip name: {unmapped[:5]}')
        save_file({k: v.detach().cpu().contiguous() for k, v in trunk_state.items()},
                  os.fspath(path_trunk))

    def save_class_embeddings(self, path: str | os.PathLike) -> None:
        """Write the head's class embeddings as a bare (K, synonyms, clip_dim) tensor (the
        class-embedding file)."""
        cls_embed = self.visual_encoder.panoptic_head.cls_embed  # (clip_dim, K+1, synonyms)
        torch.save(cls_embed[:, :-1].permute(1, 2, 0).contiguous().cpu(), os.fspath(path))
