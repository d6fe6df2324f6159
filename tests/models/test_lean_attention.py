"""Lean inference attention: the same outputs as mmcv's / torch's modules, same parameters."""
import copy

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from torch import nn

from omg_llava.models.seg_heads import lean_attention
from omg_llava.models.seg_heads.lean_attention import (LeanMultiScaleDeformableAttention,
                                                        WeightlessMultiheadAttention,
                                                        use_lean_attention_)


def deformable_inputs(B=2, C=32, shapes=((8, 8), (4, 4), (2, 2)), seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes)
    S = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    query = torch.randn(B, S, C, generator=g)
    reference = torch.rand(B, S, len(shapes), 2, generator=g)
    level_start = torch.cat([spatial_shapes.new_zeros(1),
                             (spatial_shapes[:, 0] * spatial_shapes[:, 1]).cumsum(0)[:-1]])
    return dict(query=query, query_pos=torch.randn(B, S, C, generator=g),
                reference_points=reference, spatial_shapes=spatial_shapes,
                level_start_index=level_start)


@pytest.mark.parametrize('batch_first', [True, False])
def test_lean_deformable_attention_equals_mmcv(monkeypatch, batch_first):
    torch.manual_seed(0)
    reference = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3,
                                              num_points=4, dropout=0.0,
                                              batch_first=batch_first).eval()
    # trained-looking offsets and weights (mmcv initialises weights to zero)
    for p in reference.parameters():
        nn.init.normal_(p, std=0.3)
    lean = copy.deepcopy(reference)
    assert use_lean_attention_(lean) == 1 and type(lean) is LeanMultiScaleDeformableAttention
    assert lean.state_dict().keys() == reference.state_dict().keys()
    monkeypatch.setattr(lean_attention, 'DEFORMABLE_QUERY_CHUNK', 7)  # several uneven chunks
    inputs = deformable_inputs()
    if not batch_first:
        inputs['query'] = inputs['query'].transpose(0, 1)
        inputs['query_pos'] = inputs['query_pos'].transpose(0, 1)
    with torch.no_grad():
        expected = reference(**inputs)
        got = lean(**inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # differentiable like the original
    inputs['query'].requires_grad_(True)
    lean(**inputs).sum().backward()
    assert inputs['query'].grad.abs().sum() > 0


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('mask_kind', ['bool', 'float', 'none'])
def test_weightless_attention_equals_torch_with_a_mask(batch_first, mask_kind):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    lean = copy.deepcopy(reference)
    assert use_lean_attention_(lean) == 1 and type(lean) is WeightlessMultiheadAttention
    q, k = torch.randn(2, 5, 32), torch.randn(2, 40, 32)
    if not batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    mask = torch.rand(2 * 4, 5, 40) > 0.6
    mask[:, :, 0] = False  # every row attends somewhere
    mask = {'bool': mask, 'float': torch.randn(2 * 4, 5, 40), 'none': None}[mask_kind]
    with torch.no_grad():
        expected, weights = reference(q, k, k, attn_mask=mask)
        got, none = lean(q, k, k, attn_mask=mask)
    assert weights is not None and none is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_encoder_outputs_unchanged_by_lean_attention():
    """The whole tiny encoder: object queries, masks and prompt features as before the switch."""
    from omg_llava.models.visual_prompts import VisualPrompt, encode_visual_prompts
    from omg_llava.registry import MODELS
    from test_omg_seg_trainer import tiny_encoder_cfg
    torch.manual_seed(0)
    encoder = MODELS.build(dict(tiny_encoder_cfg(), weights={})).eval()
    for module in encoder.modules():  # mmcv initialises the offsets / weights to constants
        if isinstance(module, MultiScaleDeformableAttention):
            for p in module.parameters():
                nn.init.normal_(p, std=0.2)
    lean = copy.deepcopy(encoder)
    assert use_lean_attention_(lean.panoptic_head) > 0
    pixels = torch.randn(1, 3, 64, 64)
    prompts = [VisualPrompt('point', torch.tensor([10.0, 20.0])),
               VisualPrompt('box', torch.tensor([5.0, 5.0, 40.0, 30.0]))]
    with torch.no_grad():
        a, b = encoder(pixels), lean(pixels)
        for name in ('pixel_tokens', 'query_tokens', 'query_blocked', 'class_logits',
                     'mask_logits'):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            encode_visual_prompts(lean, prompts, b.image_features),
            encode_visual_prompts(encoder, prompts, a.image_features), rtol=1e-4, atol=1e-4)
