"""The OMG-Seg head (`panoptic_head.*` of ``omg_seg_convl.pth``), spec §3.

A Mask2Former-style head built from mmdet 3.3 / mmcv 2.1 parts, so that parameter names equal the
released checkpoint: the deformable pixel decoder (``MSDeformAttnPixelDecoder``), the
masked-attention decoder (``Mask2FormerTransformerDecoder``), the open-vocabulary class head,
``iou_embed``, and the SAM-like prompt modules (``mask_tokens``, ``pb_embedding``, ``pos_linear``).

Unlike the reference ``Mask2FormerVideoSemSamHead``, the head keeps no per-image state:
:meth:`encode_image` returns an :class:`ImageFeatures` that callers pass to every later decoding
(300 object queries, visual prompts, [SEG] queries), indexed by each query's image.

Shapes below use B images, N decoded queries sets, Q queries each, C = ``feat_channels``,
(H4, W4) = stride-4 mask-feature size, (h_l, w_l) = size of memory level l.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmdet.models.layers import (Mask2FormerTransformerDecoder, MSDeformAttnPixelDecoder,
                                 SinePositionalEncoding3D)
from torch import Tensor, nn

from omg_llava.registry import MODELS

# attn_mask_policy(step, logits) -> blocked: logits (N, Q, h, w) resized to the next level; True =
# blocked.
AttentionMaskPolicy = Callable[[int, Tensor], Tensor]


@dataclass
class ImageFeatures:
    """Per-image outputs of the pixel decoder, reused by every decoding of that image.

    Attributes:
        mask_features: (B, C, H4, W4) stride-4 features the mask logits are read from.
        memories: per level l, (B, C, h_l, w_l); level 0 = stride 32, 1 = stride 16, 2 = stride 8.
        image_size: (H, W) of the network input the features come from.
    """

    mask_features: Tensor
    memories: list[Tensor]
    image_size: tuple[int, int]

    def select(self, batch_idxs: Tensor | None) -> 'ImageFeatures':
        """Features of the images ``batch_idxs`` (N,) in that order; ``None`` keeps all."""
        if batch_idxs is None:
            return self
        return ImageFeatures(self.mask_features[batch_idxs], [m[batch_idxs] for m in self.memories],
                             self.image_size)


@dataclass
class DecodeOutput:
    """Per-step predictions of one decoding (step 0 = the initial queries, step j = after layer
    j-1).

    Attributes:
        queries: list of (N, Q, C) query contents before ``post_norm``; the last is the final query.
        mask_logits: list of (N, Q, H4, W4).
        attn_masks: list of (N*heads, Q, h*w) bool cross-attention masks for the next layer
            (True = blocked), recorded before fully blocked rows are re-opened.
        class_logits: list of (N, Q, K+2) = [K classes | no-object | IoU], only for object queries.
    """

    queries: list[Tensor] = field(default_factory=list)
    mask_logits: list[Tensor] = field(default_factory=list)
    attn_masks: list[Tensor] = field(default_factory=list)
    class_logits: list[Tensor] = field(default_factory=list)


def mlp3(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear (keys ``0``, ``2``, ``4``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def masked_average_pool(features: Tensor, mask_logits: Tensor) -> Tensor:
    """Mean of ``features`` (N, C, H, W) over the pixels where ``mask_logits`` (N, Q, H, W) > 0 →
    (N, Q, C).

    The binary mask is detached; an empty mask gives zeros (area normaliser + 1e-8).
    """
    with torch.no_grad():
        weights = (mask_logits.detach() > 0).to(features.dtype).flatten(2)  # (N, Q, HW)
        weights /= weights.sum(dim=-1, keepdim=True) + 1e-8  # in place: one (N, Q, HW) tensor
    return torch.bmm(weights, features.flatten(2).transpose(1, 2))  # no transposed copy


def own_prediction_policy(step: int, logits: Tensor) -> Tensor:
    """Standard Mask2Former masked attention: block where the query's own mask is off."""
    return logits.sigmoid() < 0.5


@MODELS.register_module()
class OMGSegHead(nn.Module):
    """OMG-Seg panoptic head with open-vocabulary classes and point/box/mask prompt queries.

    Args:
        in_channels: backbone stage widths (C2..C5).
        strides: backbone stage strides.
        feat_channels: head width C (256 in the release).
        num_queries: object queries Q (300).
        num_things_classes / num_stuff_classes: 80 / 53 for COCO panoptic.
        num_synonyms: synonyms per class in the class-embedding file (17).
        clip_embed_dim: width of the class embeddings (768).
        num_heads: attention heads of the decoder (8).
        pixel_decoder_heads: attention heads of the deformable encoder (default: ``num_heads``).
        pixel_decoder_layers / pixel_decoder_ffn_channels / deform_points: deformable encoder (6 /
        1024 / 4). decoder_layers / decoder_ffn_channels: masked-attention decoder (9 / 2048).
        num_feature_levels: memory levels the decoder cycles through (3).
        logit_scale: log of the cosine-logit multiplier (ln 100 = 4.6052).
        with_llm_decoder_copy: create ``transformer_decoder_llm`` / ``mask_embed_llm`` (task
            finetunes, §3.7).
    """

    def __init__(self,
                 in_channels: Sequence[int] = (192, 384, 768, 1536),
                 strides: Sequence[int] = (4, 8, 16, 32),
                 feat_channels: int = 256,
                 num_queries: int = 300,
                 num_things_classes: int = 80,
                 num_stuff_classes: int = 53,
                 num_synonyms: int = 17,
                 clip_embed_dim: int = 768,
                 num_heads: int = 8,
                 pixel_decoder_heads: int | None = None,
                 pixel_decoder_layers: int = 6,
                 pixel_decoder_ffn_channels: int = 1024,
                 deform_points: int = 4,
                 decoder_layers: int = 9,
                 decoder_ffn_channels: int = 2048,
                 num_feature_levels: int = 3,
                 logit_scale: float = 4.6052,
                 with_llm_decoder_copy: bool = False) -> None:
        super().__init__()
        C = feat_channels
        self.feat_channels = C
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.num_classes = num_things_classes + num_stuff_classes
        self.num_things_classes = num_things_classes
        self.num_stuff_classes = num_stuff_classes
        self.num_feature_levels = num_feature_levels
        self.num_decoder_layers = decoder_layers
        attn = dict(embed_dims=C, num_heads=num_heads, batch_first=True)
        deform_attn = dict(attn, num_heads=pixel_decoder_heads or num_heads, dropout=0.0)
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels=list(in_channels), strides=list(strides), feat_channels=C, out_channels=C,
            num_outs=num_feature_levels, norm_cfg=dict(type='GN', num_groups=32),
            act_cfg=dict(type='ReLU'),
            encoder=ConfigDict(num_layers=pixel_decoder_layers, layer_cfg=dict(
                self_attn_cfg=dict(num_levels=num_feature_levels, num_points=deform_points,
                                   im2col_step=64, norm_cfg=None, init_cfg=None, **deform_attn),
                ffn_cfg=dict(embed_dims=C, feedforward_channels=pixel_decoder_ffn_channels,
                             num_fcs=2, ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True)))),
            positional_encoding=dict(num_feats=C // 2, normalize=True))
        self.transformer_decoder = Mask2FormerTransformerDecoder(
            num_layers=decoder_layers, return_intermediate=True, init_cfg=None,
            layer_cfg=dict(
                self_attn_cfg=dict(attn_drop=0.0, proj_drop=0.0, dropout_layer=None, **attn),
                cross_attn_cfg=dict(attn_drop=0.0, proj_drop=0.0, dropout_layer=None, **attn),
                ffn_cfg=dict(embed_dims=C, feedforward_channels=decoder_ffn_channels, num_fcs=2,
                             ffn_drop=0.0,
                             dropout_layer=None, add_identity=True,
                             act_cfg=dict(type='ReLU', inplace=True))))
        self.decoder_positional_encoding = SinePositionalEncoding3D(num_feats=C // 2,
                                                                    normalize=True)
        self.query_embed = nn.Embedding(num_queries, C)
        self.query_feat = nn.Embedding(num_queries, C)
        self.level_embed = nn.Embedding(num_feature_levels, C)
        self.mask_embed = mlp3(C, C, C)
        self.iou_embed = mlp3(C, C, 1)
        self.cls_proj = mlp3(C, C, clip_embed_dim)
        self.mask_pooling_proj = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C))
        # Prompt query modules (the reference hard-codes enable_box_query=True, so they always
        # exist).
        self.mask_tokens = nn.Embedding(1, C)
        self.pb_embedding = nn.Embedding(2, C)
        # input: coordinate encoding of (cx, cy, w, h), 4 x C/2
        self.pos_linear = nn.Linear(2 * C, C)
        # Non-persistent buffers (in no checkpoint): class embeddings (clip_dim, K+1, synonyms) with
        # an all-zero no-object class, filled by set_class_embeddings(); logit scale.
        self.register_buffer('cls_embed',
                             torch.zeros(clip_embed_dim, self.num_classes + 1, num_synonyms),
                             persistent=False)
        self.register_buffer('logit_scale', torch.tensor(logit_scale), persistent=False)
        self.with_llm_decoder_copy = with_llm_decoder_copy
        if with_llm_decoder_copy:
            self.transformer_decoder_llm = copy.deepcopy(self.transformer_decoder)
            self.mask_embed_llm = copy.deepcopy(self.mask_embed)

    # ------------------------------------------------------------------ weights
    def set_class_embeddings(self, class_embeddings: Tensor) -> None:
        """Fill the class-embedding buffer from the file content (K, synonyms, clip_dim), unit-norm
        rows."""
        expected = (self.cls_embed.shape[1] - 1, self.cls_embed.shape[2], self.cls_embed.shape[0])
        if class_embeddings.dim() != 3 or tuple(class_embeddings.shape) != expected:
            raise ValueError(f'class embeddings must have shape {list(expected)} (classes, '
                             f'synonyms, clip_dim), got {list(class_embeddings.shape)}: check the '
                             'class-embedding file and the head config.')
        norms = class_embeddings.float().norm(dim=-1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise ValueError('class embeddings must be L2-unit-norm along the last axis (max '
                             f'deviation {(norms - 1).abs().max().item():.3g}); is this really the '
                             'class-embedding file?')
        background = class_embeddings.new_zeros(1, *class_embeddings.shape[1:])
        # (clip_dim, K+1, synonyms)
        full = torch.cat([class_embeddings, background], dim=0).permute(2, 0, 1)
        self.cls_embed = full.to(device=self.cls_embed.device,
                                 dtype=self.cls_embed.dtype).contiguous()

    def copy_decoder_for_llm(self) -> None:
        """Initialise ``transformer_decoder_llm`` / ``mask_embed_llm`` from the OMG-Seg decoder
        (§3.7)."""
        if not self.with_llm_decoder_copy:
            raise RuntimeError('this head was built without with_llm_decoder_copy=True')
        self.transformer_decoder_llm.load_state_dict(self.transformer_decoder.state_dict())
        self.mask_embed_llm.load_state_dict(self.mask_embed.state_dict())

    # ------------------------------------------------------------------ image
    def encode_image(self, backbone_features: Sequence[Tensor],
                     image_size: tuple[int, int]) -> ImageFeatures:
        """Run the pixel decoder on the 4 backbone maps ((B, in_channels[i], H/s_i, W/s_i)) of
        images (H, W)."""
        mask_features, memories = self.pixel_decoder(list(backbone_features))
        return ImageFeatures(mask_features, list(memories), tuple(image_size))

    def decode_object_queries(self, features: ImageFeatures, num_frames: int = 1,
                              keep_steps: bool = True) -> DecodeOutput:
        """Decode the Q learned object queries of every image, with class and IoU logits at every
        step (``keep_steps=False``: the last step only, see :meth:`decode`).

        With ``num_frames`` T > 1, each row of ``features`` is a clip whose T frames are stacked
        along the height (see :meth:`decode`): every query is then a tube over the clip, with one
        class per tube (OMG-Seg spec §5.1).
        """
        B = features.mask_features.shape[0]
        content = self.query_feat.weight.unsqueeze(0).expand(B, -1, -1)  # (B, Q, C)
        pos = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)
        return self.decode(content, pos, features, own_prediction_policy, with_classes=True,
                           num_frames=num_frames, keep_steps=keep_steps)

    # ------------------------------------------------------------------ decoding
    def decode(self, content: Tensor, pos: Tensor, features: ImageFeatures,
               attn_mask_policy: AttentionMaskPolicy,
               *, with_classes: bool = False, use_llm_decoder: bool = False,
               self_attn_mask: Tensor | None = None, num_frames: int = 1,
               keep_steps: bool = True) -> DecodeOutput:
        """Masked-attention decoding of queries over the memories of their images (spec §3.3).

        Args:
            content: (N, Q, C) initial query content.
            pos: (N, Q, C) query positional embedding, used in every layer.
            features: features of the N images the queries belong to (see
                :meth:`ImageFeatures.select`).
            attn_mask_policy: turns the mask logits resized to the next level into blocked
                positions.
            with_classes: also compute class/IoU logits (object queries only).
            use_llm_decoder: use the ``_llm`` decoder copies (task finetunes).
            self_attn_mask: (Q, Q) bool, True = query i does not attend to query j (default: all
                attend).
            num_frames: T frames per row of ``features``, stacked along the height (mask features
                (N, C, T*H4, W4), memories (N, C, T*h_l, w_l)); keys then carry the 3-D sine
                position of their frame (OMG-Seg spec §5.1). Mask logits come out stacked the same
                way.
            keep_steps: keep every step's outputs (training's deep supervision, parity checks);
                ``False`` keeps only the last step's (inference: at 1024² each step's (N, 300,
                256, 256) mask logits are 79 MB per image), with the same values.
        """
        decoder = self.transformer_decoder_llm if use_llm_decoder else self.transformer_decoder
        mask_embed = self.mask_embed_llm if use_llm_decoder else self.mask_embed
        keys, key_pos = self._decoder_keys(features.memories, num_frames)
        level_sizes = [m.shape[-2:] for m in features.memories]
        out = DecodeOutput()
        query = content
        for step in range(self.num_decoder_layers + 1):
            if step > 0:
                level = (step - 1) % self.num_feature_levels
                attn_mask = out.attn_masks[-1].clone()
                # re-open blocked rows
                attn_mask[attn_mask.all(-1)] = False
                query = decoder.layers[step - 1](
                    query=query, key=keys[level], value=keys[level], query_pos=pos,
                    key_pos=key_pos[level],
                    self_attn_mask=self_attn_mask, cross_attn_mask=attn_mask,
                    query_key_padding_mask=None, key_padding_mask=None)
            normed = decoder.post_norm(query)
            mask_logits = torch.einsum('nqc,nchw->nqhw', mask_embed(normed), features.mask_features)
            next_size = level_sizes[step % self.num_feature_levels]
            resized = F.interpolate(mask_logits, size=next_size, mode='bilinear',
                                    align_corners=False)
            blocked = attn_mask_policy(step, resized).flatten(2)  # (N, Q, h*w)
            blocked = blocked.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1).detach()
            out.queries.append(query)
            out.mask_logits.append(mask_logits)
            out.attn_masks.append(blocked)
            if with_classes:
                out.class_logits.append(self._class_logits(normed, mask_logits,
                                                           features.mask_features))
            if not keep_steps:  # the next step reads only attn_masks[-1]
                for outputs in (out.queries, out.mask_logits, out.attn_masks, out.class_logits):
                    del outputs[:-1]
        return out

    def decode_alone(self, content: Tensor, pos: Tensor, image_idxs: Tensor,
                     features: ImageFeatures,
                     attn_mask_policy: AttentionMaskPolicy, *, with_classes: bool = False,
                     use_llm_decoder: bool = False) -> DecodeOutput:
        """Decode N queries each as if alone with its image (a [SEG] query, a prompt), in one
        batched pass.

        The queries of one image share a row of the batch and attend in self-attention only to
        themselves, so each result equals a :meth:`decode` of that query alone over
        ``features.select`` of its image (up to float rounding), without copying the image's
        features once per query.

        Args:
            content / pos: (N, C) initial query content and positional embedding.
            image_idxs: (N,) the image (row of ``features``) each query belongs to.
            features: features of the images.
            attn_mask_policy: as in :meth:`decode`, called on the N queries' (N, 1, h, w) logits.
            with_classes / use_llm_decoder: as in :meth:`decode`.

        Returns:
            Every decoder step in the single-query layout: ``queries`` (N, 1, C), ``mask_logits``
            (N, 1, H4, W4), ``attn_masks`` (N*heads, 1, h*w), ``class_logits`` (N, 1, K+2).
        """
        images, group = torch.unique(image_idxs, return_inverse=True)  # (G,), (N,)
        counts = torch.bincount(group, minlength=len(images))
        order = torch.argsort(group, stable=True)
        slot = torch.empty_like(group)  # rank of each query among its image's queries
        slot[order] = (
            torch.arange(len(group), device=group.device)
            - (counts.cumsum(0) - counts)[group[order]]
        )
        rows = (len(images), int(counts.max()) if len(group) else 0)

        def grouped(x: Tensor) -> Tensor:
            out = x.new_zeros(*rows, *x.shape[1:])
            out[group, slot] = x
            return out

        # (G, n, h, w) → (G, n, h, w), padding open
        def grouped_policy(step: int, logits: Tensor) -> Tensor:
            blocked = attn_mask_policy(step, logits[group, slot][:, None])[:, 0]
            return grouped(blocked)

        alone = ~torch.eye(rows[1], dtype=torch.bool, device=content.device)
        out = self.decode(
            grouped(content),
            grouped(pos),
            features.select(images),
            grouped_policy,
            with_classes=with_classes,
            use_llm_decoder=use_llm_decoder,
            self_attn_mask=alone,
        )
        heads = self.num_heads
        return DecodeOutput(
            queries=[q[group, slot][:, None] for q in out.queries],
            mask_logits=[m[group, slot][:, None] for m in out.mask_logits],
            attn_masks=[
                a.unflatten(0, (rows[0], heads))[group, :, slot].flatten(0, 1)[:, None]
                for a in out.attn_masks
            ],
            class_logits=[c[group, slot][:, None] for c in out.class_logits],
        )

    def _decoder_keys(
        self, memories: Sequence[Tensor], num_frames: int = 1
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Flattened memories + level embedding, and their 3-D sine positions, each (N, T*h_l*w_l,
        C), frame-major (memories hold T frames stacked along the height)."""
        keys, key_pos = [], []
        for level, memory in enumerate(memories):
            n, _, th, w = memory.shape
            keys.append(
                memory.flatten(2).transpose(1, 2) + self.level_embed.weight[level][None, None]
            )
            # nothing padded
            valid = memory.new_zeros((n, num_frames, th // num_frames, w), dtype=torch.bool)
            pos = self.decoder_positional_encoding(valid)  # (N, T, C, h, w)
            key_pos.append(pos.flatten(3).permute(0, 1, 3, 2).flatten(1, 2))
        return keys, key_pos

    def _class_logits(
        self, normed_query: Tensor, mask_logits: Tensor, mask_features: Tensor
    ) -> Tensor:
        """Open-vocabulary class logits and IoU logit → (N, Q, K+2) = [K classes | no-object |
        IoU]."""
        pooled = masked_average_pool(mask_features, mask_logits)  # (N, Q, C)
        embed = F.normalize(self.cls_proj(self.mask_pooling_proj(pooled) + normed_query), dim=-1)
        # (N, Q, K+1)
        cosine = torch.einsum('nqc,ckp->nqkp', embed, self.cls_embed).max(dim=-1).values
        return torch.cat([cosine * self.logit_scale.exp(), self.iou_embed(normed_query)], dim=-1)
