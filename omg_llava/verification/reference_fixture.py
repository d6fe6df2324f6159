"""Numerical parity with reference fixtures (format: ``shared/fixtures/README.md``).

A fixture is a ``.pt`` flat dict (``input/*``, ``state_dict/*``, ``out/*``) plus a JSON sidecar whose
``config`` holds every size. :func:`build_visual_encoder` builds this project's modules from that config,
:func:`compute_outputs` runs the recorded inputs and returns this project's value for every ``out/*`` name
it can produce, and :func:`compare` turns both into one :class:`CheckResult` per recorded output.
Outputs of parts not implemented yet are reported as ``SKIP`` with the reason.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omg_llava.checkpoint import load_into, read_weights
from omg_llava.models import (ConvNeXtCLIPBackbone, OMGSegHead, OMGSegVisualEncoder, OMGVisualProjector,
                              Text2VisionProjector)
from omg_llava.models.seg_heads.prompt_queries import region_center_points

DEFAULT_TOLERANCE = (1e-4, 1e-4)
CLASS_LOGIT_TOLERANCE = (5e-4, 1e-4)
PENDING_PREFIXES = {
    'out/llm/': 'LLM (model issue)',
    'out/seg/batch_idxs': 'LLM (model issue)',
    'out/seg/hidden_states': 'LLM (model issue)',
}


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | FAIL | SKIP
    max_abs_diff: float | None = None
    tolerance: str = ''
    note: str = ''

    def line(self) -> str:
        diff = '-' if self.max_abs_diff is None else f'{self.max_abs_diff:.3e}'
        note = f'  ({self.note})' if self.note else ''
        return f'{self.name:<44} {diff:>10}  {self.tolerance:<18} {self.status}{note}'


def load_fixture(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``X.pt`` and its sidecar ``X.json`` (same stem)."""
    path = os.fspath(path)
    sidecar = os.path.splitext(path)[0] + '.json'
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(f'fixture sidecar {sidecar!r} not found: a fixture is X.pt plus X.json')
    tensors = read_weights(path, weights_only=True)
    with open(sidecar) as f:
        meta = json.load(f)
    return tensors, meta


def build_visual_encoder(config: dict[str, Any]) -> OMGSegVisualEncoder:
    """Build the visual encoder described by a fixture ``config`` (sizes only, random weights)."""
    bb, head, pd, td = config['backbone'], config['head'], config['head']['pixel_decoder'], \
        config['head']['transformer_decoder']
    num_classes, num_synonyms, clip_dim = head['ov_class_embed_shape']
    backbone = ConvNeXtCLIPBackbone(depths=tuple(bb['depths']), dims=tuple(bb['dims']),
                                    clip_embed_dim=bb['clip_embed_dim'], kernel_size=bb.get('kernel_size', 7),
                                    mlp_ratio=bb.get('mlp_ratio', 4))
    panoptic_head = OMGSegHead(
        in_channels=tuple(head['in_channels']), strides=tuple(head['strides']), feat_channels=head['feat_channels'],
        num_queries=head['num_queries'], num_things_classes=head['num_things_classes'],
        num_stuff_classes=head['num_stuff_classes'], num_synonyms=num_synonyms, clip_embed_dim=clip_dim,
        num_heads=td['num_heads'], pixel_decoder_heads=pd['num_heads'], pixel_decoder_layers=pd['encoder_num_layers'],
        pixel_decoder_ffn_channels=pd['ffn_dim'], deform_points=pd['num_points'], decoder_layers=td['num_layers'],
        decoder_ffn_channels=td['ffn_dim'], num_feature_levels=head['num_transformer_feat_level'],
        logit_scale=head['logit_scale'])
    assert num_classes == panoptic_head.num_classes, 'ov_class_embed_shape disagrees with things + stuff'
    ve = config.get('visual_encoder', {})
    return OMGSegVisualEncoder(backbone, panoptic_head, pixel_shuffle_ratio=ve.get('pixel_shuffle_down_ratio', 2),
                               object_prior_smooth=ve.get('object_prior_smooth_ratio', 0.5))


def build_projector(config: dict[str, Any]) -> OMGVisualProjector:
    """The visual projector described by a fixture ``config``."""
    proj = config['projector']
    return OMGVisualProjector(query_channels=2 * proj['query_channels'],
                              clip_channels=proj['feat_channels_after_shuffle'],
                              llm_hidden_size=proj['llm_hidden_size'], depth=proj['depth'])


def build_text2vision(config: dict[str, Any]) -> Text2VisionProjector:
    """The [SEG] → query projector described by a fixture ``config``."""
    t2v = config['projector_text2vision']
    return Text2VisionProjector(llm_hidden_size=t2v['in_features'], query_channels=t2v['out_features'],
                                depth=t2v['depth'])


def load_fixture_weights(module: torch.nn.Module, tensors: dict[str, Tensor], prefix: str) -> None:
    """Strictly load every ``state_dict/<prefix>*`` tensor into ``module``."""
    head = 'state_dict/' + prefix
    weights = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    load_into(module, weights, source=f'fixture state_dict/{prefix}*')


def _encoder_memory_hook(encoder: OMGSegVisualEncoder, store: dict[str, Tensor]):
    def hook(module, args, output):
        store['out/pixel_decoder/encoder_memory'] = output
    return encoder.panoptic_head.pixel_decoder.encoder.register_forward_hook(hook)


@torch.no_grad()
def compute_outputs(encoder: OMGSegVisualEncoder, projector: OMGVisualProjector, text2vision: Text2VisionProjector,
                    tensors: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """This project's value of every fixture output it implements, under the fixture's names."""
    mark_id = config['special_tokens']['<mark>']
    x = tensors['input/pixel_values']
    head = encoder.panoptic_head
    got: dict[str, Tensor] = {}
    handle = _encoder_memory_hook(encoder, got)
    try:
        out = encoder(x)
    finally:
        handle.remove()
    feats = out.backbone_features
    for i, f in enumerate(feats):
        got[f'out/backbone/feat{i}'] = f
    levels = len(out.image_features.memories)
    for i in range(levels):
        src = feats[len(feats) - 1 - i]
        got[f'out/pixel_decoder/input_proj{i}'] = head.pixel_decoder.input_convs[i](src)
        h, w = src.shape[-2:]
        got[f'out/pixel_decoder/sine_pos{i}'] = head.pixel_decoder.postional_encoding(
            src.new_zeros((1, h, w), dtype=torch.bool))
        mh, mw = out.image_features.memories[i].shape[-2:]
        got[f'out/decoder/key_pos{i}'] = head.decoder_positional_encoding(src.new_zeros((1, 1, mh, mw),
                                                                                        dtype=torch.bool))
        got[f'out/pixel_decoder/memory{i}'] = out.image_features.memories[i]
    got['out/pixel_decoder/mask_features'] = out.image_features.mask_features
    for j, (q, c, m, a) in enumerate(zip(out.decode.queries, out.decode.class_logits, out.decode.mask_logits,
                                         out.decode.attn_masks)):
        got.update({f'out/decoder/layer{j}/query': q, f'out/decoder/layer{j}/cls_logits': c,
                    f'out/decoder/layer{j}/mask_logits': m, f'out/decoder/layer{j}/attn_mask': a})
    full = F.interpolate(out.mask_logits, size=x.shape[-2:], mode='bilinear', align_corners=False)
    got.update({
        'out/predict/mask_cls_results': out.class_logits, 'out/predict/iou_results': out.iou_logits,
        'out/predict/mask_pred_results_every4': full[:, :, ::4, ::4],
        'out/predict/query_feat': out.decode.queries[-1],
        'out/predict/query_pos': out.query_tokens[..., head.feat_channels:],
        'out/visual_encoder/pixel_feats': out.pixel_tokens, 'out/visual_encoder/query_pos_feat': out.query_tokens,
        'out/visual_encoder/attn_mask': out.query_blocked, 'out/misc/cls_embed_buffer': head.cls_embed,
    })
    features = out.image_features
    prompts = {}
    if 'input/regions' in tensors:
        regions = tensors['input/regions']
        prompts['region'] = encoder.encode_region_prompts(regions, torch.zeros(len(regions), dtype=torch.long),
                                                          features)
        points, distance = region_center_points(regions)
        got['out/prompt/region/center_point'] = points
        got['out/prompt/region/distance_transform'] = distance
    if 'input/points' in tensors:
        prompts['point'] = encoder.encode_point_prompts(tensors['input/points'], _mark_batch_idxs(tensors, mark_id), features)
    if 'input/boxes' in tensors:
        prompts['box'] = encoder.encode_box_prompts(tensors['input/boxes'], tensors['input/box_batch_idxs'], features)
    for b, tokens in enumerate(projector(*out.visual_tokens())):
        got[f'out/projector/visual_tokens{b}'] = tokens
    for kind, prompt in prompts.items():
        got[f'out/prompt/{kind}/query_pos_feat'] = prompt.query_features
        got[f'out/prompt/{kind}/llm_embedding'] = projector.project_queries(prompt.query_features[:, 0])
        for j, (m, a) in enumerate(zip(prompt.decode.mask_logits, prompt.decode.attn_masks)):
            got[f'out/prompt/{kind}/layer{j}/mask_logits'] = m
            got[f'out/prompt/{kind}/layer{j}/attn_mask'] = a
    if 'out/seg/hidden_states' in tensors:  # fed with the recorded LLM hidden states
        got['out/seg/text2vision'] = text2vision(tensors['out/seg/hidden_states'])
    if 'out/seg/text2vision' in tensors:  # [SEG] decoding fed with the recorded projector output
        seg = encoder.decode_seg_queries(tensors['out/seg/text2vision'], tensors['out/seg/batch_idxs'], features)
        for j, (m, a) in enumerate(zip(seg.mask_logits, seg.attn_masks)):
            got[f'out/seg/mask_logits{j}'] = m
            got[f'out/seg/layer{j}/attn_mask'] = a
    return got


def _mark_batch_idxs(tensors: dict[str, Tensor], mark_id: int) -> Tensor:
    """Image index of every ``<mark>`` in batch-then-position order (one point each)."""
    ids = tensors['input/input_ids']
    return torch.cat([torch.full((int((row == mark_id).sum()), ), b, dtype=torch.long) for b, row in enumerate(ids)])


def compare(expected: dict[str, Tensor], got: dict[str, Tensor], meta: dict[str, Any]) -> list[CheckResult]:
    """One result per ``out/*`` entry of the fixture."""
    tolerances = meta.get('recommended_tolerances', {})
    default = tolerances.get('float_default', {})
    default = (default.get('atol', DEFAULT_TOLERANCE[0]), default.get('rtol', DEFAULT_TOLERANCE[1]))
    cls_tol = tolerances.get('cls_logits_and_mask_cls_results', {})
    cls_tol = (cls_tol.get('atol', CLASS_LOGIT_TOLERANCE[0]), cls_tol.get('rtol', CLASS_LOGIT_TOLERANCE[1]))
    results = []
    for name, want in expected.items():
        if not name.startswith('out/'):
            continue
        if name not in got:
            reason = next((why for p, why in PENDING_PREFIXES.items() if name.startswith(p)), 'not computed')
            results.append(CheckResult(name, 'SKIP', note=reason))
            continue
        have = got[name].detach().cpu()
        if tuple(have.shape) != tuple(want.shape):
            results.append(CheckResult(name, 'FAIL', note=f'shape {list(have.shape)} != {list(want.shape)}'))
            continue
        if want.dtype in (torch.bool, torch.int64, torch.int32):
            diff = (have.to(want.dtype) != want).sum().item()
            results.append(CheckResult(name, 'PASS' if diff == 0 else 'FAIL', float(diff), 'exact',
                                       '' if diff == 0 else f'{diff} elements differ'))
            continue
        atol, rtol = cls_tol if ('cls_logits' in name or 'mask_cls_results' in name) else default
        err = (have.float() - want.float()).abs()
        ok = bool((err <= atol + rtol * want.float().abs()).all())
        results.append(CheckResult(name, 'PASS' if ok else 'FAIL', err.max().item() if err.numel() else 0.0,
                                   f'atol={atol:g} rtol={rtol:g}'))
    return results


def run_fixture(path: str | os.PathLike) -> list[CheckResult]:
    """Build, load, run and compare one fixture."""
    tensors, meta = load_fixture(path)
    encoder, projector = build_visual_encoder(meta['config']), build_projector(meta['config'])
    load_fixture_weights(encoder, tensors, 'visual_encoder.')
    encoder.panoptic_head.set_class_embeddings(tensors['input/ov_class_embed'])
    text2vision = build_text2vision(meta['config'])
    load_fixture_weights(projector, tensors, 'projector.')
    load_fixture_weights(text2vision, tensors, 'projector_text2vision.')
    got = compute_outputs(encoder.eval(), projector.eval(), text2vision.eval(), tensors, meta['config'])
    return compare({k: v for k, v in tensors.items() if k.startswith('out/')}, got, meta)
