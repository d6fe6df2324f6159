"""Numerical parity with reference fixtures (format: ``shared/fixtures/README.md``).

A fixture is a ``.pt`` flat dict (``input/*``, ``state_dict/*``, ``out/*``) plus a JSON sidecar
whose ``config`` holds every size. :func:`build_visual_encoder` builds this project's modules from
that config, :func:`compute_outputs` runs the recorded inputs and returns this project's value for
every ``out/*`` name it can produce, and :func:`compare` turns both into one :class:`CheckResult`
per recorded output. Outputs of parts not implemented yet are reported as ``SKIP`` with the reason.
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
from omg_llava.models import ConvNeXtCLIPBackbone, OMGLLaVA, OMGSegHead, OMGSegVisualEncoder
from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.multimodal_inputs import placeholder_batch_indices
from omg_llava.models.seg_heads.prompt_queries import region_center_points
from omg_llava.models.visual_prompts import prompts_from_tensors

DEFAULT_TOLERANCE = (1e-4, 1e-4)
CLASS_LOGIT_TOLERANCE = (5e-4, 1e-4)
# output-name prefix -> why this project does not compute it yet
PENDING_PREFIXES: dict[str, str] = {}


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
        raise FileNotFoundError(f'fixture sidecar {sidecar!r} not found: a fixture is X.pt plus '
                                'X.json')
    tensors = read_weights(path, weights_only=True)
    with open(sidecar) as f:
        meta = json.load(f)
    return tensors, meta


def build_visual_encoder(config: dict[str, Any],
                         with_llm_decoder_copy: bool = False) -> OMGSegVisualEncoder:
    """Build the visual encoder described by a fixture ``config`` (sizes only, random weights);
    ``with_llm_decoder_copy`` adds the task-finetune decoder copies (spec §3.7), absent from the
    fixture."""
    bb, head, pd, td = config['backbone'], config['head'], config['head']['pixel_decoder'], \
        config['head']['transformer_decoder']
    num_classes, num_synonyms, clip_dim = head['ov_class_embed_shape']
    backbone = ConvNeXtCLIPBackbone(depths=tuple(bb['depths']), dims=tuple(bb['dims']),
                                    clip_embed_dim=bb['clip_embed_dim'],
                                    kernel_size=bb.get('kernel_size', 7),
                                    mlp_ratio=bb.get('mlp_ratio', 4))
    panoptic_head = OMGSegHead(
        in_channels=tuple(head['in_channels']), strides=tuple(head['strides']),
        feat_channels=head['feat_channels'],
        num_queries=head['num_queries'], num_things_classes=head['num_things_classes'],
        num_stuff_classes=head['num_stuff_classes'], num_synonyms=num_synonyms,
        clip_embed_dim=clip_dim,
        num_heads=td['num_heads'], pixel_decoder_heads=pd['num_heads'],
        pixel_decoder_layers=pd['encoder_num_layers'],
        pixel_decoder_ffn_channels=pd['ffn_dim'], deform_points=pd['num_points'],
        decoder_layers=td['num_layers'],
        decoder_ffn_channels=td['ffn_dim'], num_feature_levels=head['num_transformer_feat_level'],
        logit_scale=head['logit_scale'], with_llm_decoder_copy=with_llm_decoder_copy)
    assert num_classes == panoptic_head.num_classes, ('ov_class_embed_shape disagrees with things '
                                                      '+ stuff')
    ve = config.get('visual_encoder', {})
    return OMGSegVisualEncoder(backbone, panoptic_head,
                               pixel_shuffle_ratio=ve.get('pixel_shuffle_down_ratio', 2),
                               object_prior_smooth=ve.get('object_prior_smooth_ratio', 0.5))


def build_llm(config: dict[str, Any]) -> InternLM2ForCausalLM:
    """The InternLM2 described by a fixture ``config['llm']`` (base vocabulary; the model resizes
    it)."""
    llm = config['llm']
    scaling = llm.get('rope_scaling')
    return InternLM2ForCausalLM(InternLM2Config(
        vocab_size=llm['vocab_size_base'], hidden_size=llm['hidden_size'],
        intermediate_size=llm['intermediate_size'],
        num_hidden_layers=llm['num_hidden_layers'], num_attention_heads=llm['num_attention_heads'],
        num_key_value_heads=llm['num_key_value_heads'], rms_norm_eps=llm['rms_norm_eps'],
        rope_theta=llm['rope_theta'],
        rope_scaling=dict(scaling) if scaling else None,
        max_position_embeddings=llm['max_position_embeddings'],
        bias=llm['bias'], tie_word_embeddings=llm['tie_word_embeddings']))


def build_model(config: dict[str, Any]) -> OMGLLaVA:
    """The whole OMG-LLaVA (finetune form, LoRA on the LLM) described by a fixture ``config``."""
    ids = config['special_tokens']
    lora = config['lora']
    return OMGLLaVA(
        llm=build_llm(config), visual_encoder=build_visual_encoder(config), stage='finetune',
        llm_lora=dict(r=lora['r'], lora_alpha=lora['lora_alpha'], lora_dropout=lora['lora_dropout'],
                      bias=lora['bias'], target_modules=list(lora['target_modules']),
                      task_type='CAUSAL_LM'),
        projector_depth=config['projector']['depth'], use_activation_checkpointing=False,
        special_token_ids=dict(seg=ids['[SEG]'], phrase_start=ids['<p>'], phrase_end=ids['</p>'],
                               region=ids['<region>'], mark=ids['<mark>']))


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
def compute_outputs(model: OMGLLaVA, tensors: dict[str, Tensor],
                    config: dict[str, Any]) -> dict[str, Tensor]:
    """This project's value of every fixture output, under the fixture's names (end to end: each
    stage runs on this project's own upstream results)."""
    encoder = model.visual_encoder
    x = tensors['input/pixel_values']
    head = encoder.panoptic_head
    got: dict[str, Tensor] = {}
    handle = _encoder_memory_hook(encoder, got)
    try:
        images = model.encode_images(x)
    finally:
        handle.remove()
    out = images.encoder_output
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
        got[f'out/decoder/key_pos{i}'] = head.decoder_positional_encoding(
            src.new_zeros((1, 1, mh, mw), dtype=torch.bool)
        )
        got[f'out/pixel_decoder/memory{i}'] = out.image_features.memories[i]
    got['out/pixel_decoder/mask_features'] = out.image_features.mask_features
    for j, (q, c, m, a) in enumerate(zip(out.decode.queries, out.decode.class_logits,
                                         out.decode.mask_logits, out.decode.attn_masks)):
        got.update({f'out/decoder/layer{j}/query': q, f'out/decoder/layer{j}/cls_logits': c,
                    f'out/decoder/layer{j}/mask_logits': m, f'out/decoder/layer{j}/attn_mask': a})
    full = F.interpolate(out.mask_logits, size=x.shape[-2:], mode='bilinear', align_corners=False)
    got.update({
        'out/predict/mask_cls_results': out.class_logits, 'out/predict/iou_results': out.iou_logits,
        'out/predict/mask_pred_results_every4': full[:, :, ::4, ::4],
        'out/predict/query_feat': out.decode.queries[-1],
        'out/predict/query_pos': out.query_tokens[..., head.feat_channels:],
        'out/visual_encoder/pixel_feats': out.pixel_tokens,
        'out/visual_encoder/query_pos_feat': out.query_tokens,
        'out/visual_encoder/attn_mask': out.query_blocked,
        'out/misc/cls_embed_buffer': head.cls_embed,
    })
    for b, tokens in enumerate(images.visual_sequences):
        got[f'out/projector/visual_tokens{b}'] = tokens
    got.update(_prompt_outputs(model, images, tensors))
    got.update(_llm_outputs(model, images, tensors))
    return got


def _prompt_inputs(model: OMGLLaVA, tensors: dict[str, Tensor]):
    """``<region>`` mask prompts and ``<mark>`` point prompts, assigned to samples in placeholder
    order."""
    ids, mask = tensors['input/input_ids'], tensors['input/attention_mask']
    regions = prompts_from_tensors('mask', tensors.get('input/regions'),
                                   placeholder_batch_indices(ids, mask, model.token_ids.region))
    marks = prompts_from_tensors('point', tensors.get('input/points'),
                                 placeholder_batch_indices(ids, mask, model.token_ids.mark))
    return regions, marks


def _prompt_outputs(model: OMGLLaVA, images, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-step internals of the region, point and box prompt paths."""
    encoder, features = model.visual_encoder, images.features
    ids, mask = tensors['input/input_ids'], tensors['input/attention_mask']
    got, prompts = {}, {}
    if 'input/regions' in tensors:
        regions = tensors['input/regions']
        prompts['region'] = encoder.encode_region_prompts(
            regions, placeholder_batch_indices(ids, mask, model.token_ids.region), features)
        points, distance = region_center_points(regions)
        got['out/prompt/region/center_point'] = points
        got['out/prompt/region/distance_transform'] = distance
    if 'input/points' in tensors:
        prompts['point'] = encoder.encode_point_prompts(
            tensors['input/points'], placeholder_batch_indices(ids, mask, model.token_ids.mark),
            features)
    if 'input/boxes' in tensors:
        prompts['box'] = encoder.encode_box_prompts(tensors['input/boxes'],
                                                    tensors['input/box_batch_idxs'], features)
    for kind, prompt in prompts.items():
        got[f'out/prompt/{kind}/query_pos_feat'] = prompt.query_features
        got[f'out/prompt/{kind}/llm_embedding'] = model.projector.project_queries(
            prompt.query_features[:, 0]
        )
        for j, (m, a) in enumerate(zip(prompt.decode.mask_logits, prompt.decode.attn_masks)):
            got[f'out/prompt/{kind}/layer{j}/mask_logits'] = m
            got[f'out/prompt/{kind}/layer{j}/attn_mask'] = a
    return got


def _llm_outputs(model: OMGLLaVA, images, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Spliced inputs, LLM logits / hidden states / loss, and the [SEG] path from this project's
    hidden states."""
    from omg_llava.models.omg_llava import shifted_cross_entropy
    region_prompts, mark_prompts = _prompt_inputs(model, tensors)
    spliced = model.splice(tensors['input/input_ids'], tensors['input/attention_mask'],
                           tensors['input/labels'], images, region_prompts, mark_prompts)
    out = model.run_llm(spliced)
    got = {'out/llm/inputs_embeds': spliced.inputs_embeds,
           'out/llm/attention_mask': spliced.attention_mask,
           'out/llm/position_ids': spliced.position_ids, 'out/llm/labels': spliced.labels,
           'out/llm/logits': out.logits,
           'out/llm/loss': shifted_cross_entropy(out.logits, spliced.labels)}
    for i, hidden in enumerate(out.hidden_states):
        got[f'out/llm/hidden_states{i}'] = hidden
    with model.llm.disable_adapter():
        got['out/llm/logits_without_lora'] = model.run_llm(spliced).logits
    seg = spliced.labels == model.token_ids.seg
    batch_idxs = seg.nonzero()[:, 0]
    hidden = out.hidden_states[-1][seg]
    queries = model.projector_text2vision(hidden)
    got.update({'out/seg/batch_idxs': batch_idxs, 'out/seg/hidden_states': hidden,
                'out/seg/text2vision': queries})
    decoded = model.visual_encoder.decode_seg_queries(queries, batch_idxs, images.features)
    for j, (m, a) in enumerate(zip(decoded.mask_logits, decoded.attn_masks)):
        got[f'out/seg/mask_logits{j}'] = m
        got[f'out/seg/layer{j}/attn_mask'] = a
    return got


def compare(expected: dict[str, Tensor], got: dict[str, Tensor],
            meta: dict[str, Any]) -> list[CheckResult]:
    """One result per ``out/*`` entry of the fixture."""
    tolerances = meta.get('recommended_tolerances', {})
    default = tolerances.get('float_default', {})
    default = (default.get('atol', DEFAULT_TOLERANCE[0]), default.get('rtol', DEFAULT_TOLERANCE[1]))
    cls_tol = tolerances.get('cls_logits_and_mask_cls_results', {})
    cls_tol = (cls_tol.get('atol', CLASS_LOGIT_TOLERANCE[0]),
               cls_tol.get('rtol', CLASS_LOGIT_TOLERANCE[1]))
    results = []
    for name, want in expected.items():
        if not name.startswith('out/'):
            continue
        if name not in got:
            reason = next((why for p, why in PENDING_PREFIXES.items() if name.startswith(p)),
                          'not computed')
            results.append(CheckResult(name, 'SKIP', note=reason))
            continue
        have = got[name].detach().cpu()
        if tuple(have.shape) != tuple(want.shape):
            results.append(CheckResult(name, 'FAIL',
                                       note=f'shape {list(have.shape)} != {list(want.shape)}'))
            continue
        if want.dtype in (torch.bool, torch.int64, torch.int32):
            diff = (have.to(want.dtype) != want).sum().item()
            results.append(CheckResult(name, 'PASS' if diff == 0 else 'FAIL', float(diff), 'exact',
                                       '' if diff == 0 else f'{diff} elements differ'))
            continue
        atol, rtol = cls_tol if ('cls_logits' in name or 'mask_cls_results' in name) else default
        have, want = _valid_llm_rows(name, have, want, expected)
        err = (have.float() - want.float()).abs()
        ok = bool((err <= atol + rtol * want.float().abs()).all())
        results.append(CheckResult(name, 'PASS' if ok else 'FAIL',
                                   err.max().item() if err.numel() else 0.0,
                                   f'atol={atol:g} rtol={rtol:g}'))
    return results


def _valid_llm_rows(name: str, have: Tensor, want: Tensor,
                    expected: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-token LLM outputs (B, T, ...) are compared on real tokens only: padding rows are
    unspecified."""
    mask = expected.get('out/llm/attention_mask')
    if (name.startswith('out/llm/') and mask is not None and want.dim() >= 3
            and want.shape[:2] == mask.shape):
        return have[mask.bool()], want[mask.bool()]
    return have, want


def run_fixture(path: str | os.PathLike, lean_attention: bool = False) -> list[CheckResult]:
    """Build the whole model from the fixture config, load every ``state_dict/*`` tensor strictly,
    run the recorded inputs end to end and compare every output. ``lean_attention``: with the
    OMG-Seg head's inference attention
    (:func:`~omg_llava.models.seg_heads.lean_attention.use_lean_attention_`, what every inference
    build runs) instead of mmcv's and torch's modules."""
    tensors, meta = load_fixture(path)
    model = build_model(meta['config'])
    if lean_attention:
        from omg_llava.models.seg_heads.lean_attention import use_lean_attention_
        use_lean_attention_(model.visual_encoder.panoptic_head)
    load_fixture_weights(model, tensors, '')
    model.visual_encoder.panoptic_head.set_class_embeddings(tensors['input/ov_class_embed'])
    got = compute_outputs(model.eval(), tensors, meta['config'])
    return compare({k: v for k, v in tensors.items() if k.startswith('out/')}, got, meta)
