"""The visual encoder: token layout, object prior, prompts, frozen semantics, stateless decoding,
registries."""
from __future__ import annotations

import pytest
import torch

from omg_llava.inference.encoder_builder import build_visual_encoder
from omg_llava.models import OMGSegHead, OMGSegVisualEncoder
from omg_llava.models.object_tokens import object_prior, pixel_shuffle_down
from omg_llava.models.seg_heads.omg_seg_head import own_prediction_policy
from omg_llava.registry import MODELS

from conftest import TINY_CONFIG

SIZE = 128  # multiple of 64: 2x2 pixel tokens


@pytest.fixture(scope='module')
def encoder():
    model, _ = build_visual_encoder(str(TINY_CONFIG), seed=0)
    return model


@pytest.fixture(scope='module')
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE)


def test_pixel_shuffle_down_channel_order():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float).view(2, 3, 4, 6)
    y = pixel_shuffle_down(x, 2)  # (2, 12, 2, 3)
    assert y.shape == (2, 12, 2, 3)
    for dy in range(2):
        for dx in range(2):
            for c in range(3):
                assert torch.equal(y[:, (dy * 2 + dx) * 3 + c], x[:, c, dy::2, dx::2])
    with pytest.raises(ValueError, match='divisible'):
        pixel_shuffle_down(torch.zeros(1, 3, 5, 4), 2)


def test_object_prior_winners_and_mixture():
    # two queries over a 4x4 image, grid 2x2: query 0 covers the left half, query 1 the right half
    logits = torch.full((1, 2, 4, 4), -20.0)
    logits[0, 0, :, :2] = 20.0
    logits[0, 1, :, 2:] = 20.0
    class_logits = torch.tensor([[[9.0, 0.0, 0.0], [0.0, 9.0, 0.0]]])  # confident real classes
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    prior, blocked = object_prior(class_logits, logits, tokens, (2, 2))
    assert blocked.tolist() == [[[False, True, False, True], [True, False, True, False]]]
    # softmax over probabilities in [0, 1]: the winner weighs e^1 / (e^1 + e^0) at most
    p = torch.tensor(1.0).exp() / (torch.tensor(1.0).exp() + 1)
    torch.testing.assert_close(prior[0, 0], torch.stack([p, 1 - p]), atol=1e-3, rtol=0)


def test_forward_shapes_and_valid_queries(encoder, images):
    out = encoder(images)
    head = encoder.panoptic_head
    n_pixel = (SIZE // 64) ** 2
    assert out.pixel_tokens.shape == (2, n_pixel, 4 * 256 + 2 * 64)
    assert out.query_tokens.shape == (2, head.num_queries, 128)
    assert (out.query_blocked.shape == (2, head.num_queries, n_pixel)
            and out.query_blocked.dtype == torch.bool)
    # exactly one winner per cell
    assert ((~out.query_blocked).sum(1) == 1).all()
    torch.testing.assert_close(out.query_tokens[..., 64:],
                               head.query_embed.weight.expand(2, -1, -1))
    assert (out.class_logits.shape == (2, head.num_queries, 134)
            and out.iou_logits.shape == (2, head.num_queries, 1))
    assert len(out.visual_tokens()) == 3


def test_frozen_encoder_stays_in_eval_without_grad(encoder, images):
    encoder.train()
    assert not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    assert encoder(images[:1]).pixel_tokens.grad_fn is None


def test_prompt_decoding_uses_the_features_of_its_own_image(encoder, images):
    both = encoder(images).image_features
    second = encoder(images[1:]).image_features
    points = torch.tensor([[30.0, 70.0]])
    a = encoder.encode_point_prompts(points, torch.tensor([1]), both)
    b = encoder.encode_point_prompts(points, torch.tensor([0]), second)
    c = encoder.encode_point_prompts(points, torch.tensor([0]), both)
    torch.testing.assert_close(a.query_features, b.query_features, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.query_features, c.query_features, atol=1e-3)
    assert a.query_features.shape == (1, 1, 128) and len(a.decode.mask_logits) == 4


def test_box_and_region_prompts(encoder, images):
    features = encoder(images).image_features
    boxes = torch.tensor([[10.0, 20.0, 60.0, 90.0], [0.0, 0.0, 128.0, 128.0]])
    out = encoder.encode_box_prompts(boxes, torch.tensor([0, 1]), features)
    assert out.query_features.shape == (2, 1, 128)
    assert torch.equal(out.points, torch.tensor([[35.0, 55.0], [64.0, 64.0]]))
    masks = torch.zeros(1, SIZE, SIZE)
    masks[0, 50:128, 0:60] = 1
    region = encoder.encode_region_prompts(masks, torch.tensor([0]), features)
    x, y = region.points[0].tolist()
    assert 0 <= x < 60 and 50 <= y < 128  # a point inside the region
    # level 0 (stride 32) is 4x4 at 128 px; nearest resize samples rows/cols 0, 32, 64, 96
    blocked = region.decode.attn_masks[0][0, 0]  # (heads, Q=1, 16) -> head 0
    assert blocked.view(4, 4).tolist() == [[True] * 4, [True] * 4, [False, False, True, True],
                                           [False, False, True, True]]


def test_bad_prompts_are_clear_errors(encoder, images):
    features = encoder(images[:1]).image_features
    with pytest.raises(ValueError, match=r'outside the 128x128 image'):
        encoder.encode_point_prompts(torch.tensor([[130.0, 5.0]]), torch.tensor([0]), features)
    with pytest.raises(ValueError, match='box prompts'):
        encoder.encode_box_prompts(torch.tensor([[50.0, 10.0, 40.0, 20.0]]), torch.tensor([0]),
                                   features)
    with pytest.raises(ValueError, match='box prompts'):
        encoder.encode_box_prompts(torch.tensor([[0.0, 0.0, 140.0, 20.0]]), torch.tensor([0]),
                                   features)
    with pytest.raises(ValueError, match='empty'):
        encoder.encode_region_prompts(torch.zeros(1, SIZE, SIZE), torch.tensor([0]), features)
    with pytest.raises(ValueError, match='network input size'):
        encoder.encode_region_prompts(torch.ones(1, 64, 64), torch.tensor([0]), features)


def test_seg_queries_decode_to_masks(encoder, images):
    features = encoder(images).image_features
    decode = encoder.decode_seg_queries(torch.randn(3, 128), torch.tensor([0, 1, 1]), features)
    assert len(decode.mask_logits) == 4 and decode.mask_logits[-1].shape == (3, 1, SIZE // 4,
                                                                             SIZE // 4)


def test_decode_alone_equals_decoding_each_query_by_itself(encoder, images):
    from omg_llava.models.seg_heads.prompt_queries import box_policy
    head = encoder.panoptic_head
    features = encoder(torch.cat([images, images.flip(-1)])).image_features  # 4 images
    torch.manual_seed(3)
    content, pos = torch.randn(6, head.feat_channels), torch.randn(6, head.feat_channels)
    # unsorted, 1-3 queries per image, image 1 without any
    image_idxs = torch.tensor([2, 0, 2, 3, 2, 0])
    boxes = torch.tensor([[0.0, 0.0, 64.0, 128.0], [10.0, 20.0, 60.0, 90.0],
                          [64.0, 0.0, 128.0, 128.0],
                          [0.0, 0.0, 128.0, 128.0], [30.0, 30.0, 100.0, 100.0],
                          [0.0, 64.0, 128.0, 128.0]])
    for policy in (own_prediction_policy, box_policy(boxes, (SIZE, SIZE))):
        together = head.decode_alone(content, pos, image_idxs, features, policy, with_classes=True)
        for i in range(6):
            alone = head.decode(
                content[i, None, None],
                pos[i, None, None],
                features.select(image_idxs[i, None]),
                (lambda step, logits, i=i: policy(step, logits.expand(6, -1, -1, -1))[i : i + 1])
                if policy is not own_prediction_policy
                else policy,
                with_classes=True,
            )
            for name in ('queries', 'mask_logits', 'class_logits'):
                for a, b in zip(getattr(together, name), getattr(alone, name)):
                    torch.testing.assert_close(a[i:i + 1], b, atol=1e-4, rtol=1e-4)
            heads = head.num_heads
            for a, b in zip(together.attn_masks, alone.attn_masks):
                assert torch.equal(a[i * heads:(i + 1) * heads], b)
    assert together.mask_logits[-1].shape == (6, 1, SIZE // 4, SIZE // 4)
    assert together.attn_masks[0].shape == (6 * head.num_heads, 1, 16)


def test_llm_decoder_copy_starts_from_the_omg_decoder():
    head = OMGSegHead(in_channels=(32, 64, 128, 256), feat_channels=64, num_queries=4,
                      num_synonyms=2,
                      clip_embed_dim=32, num_heads=4, pixel_decoder_layers=1,
                      pixel_decoder_ffn_channels=64,
                      decoder_layers=3, decoder_ffn_channels=64, with_llm_decoder_copy=True)
    with torch.no_grad():
        head.transformer_decoder.post_norm.weight.fill_(3.0)
    head.copy_decoder_for_llm()
    assert torch.equal(head.transformer_decoder_llm.post_norm.weight,
                       head.transformer_decoder.post_norm.weight)
    assert sum(k.startswith('transformer_decoder_llm.') for k in head.state_dict()) == 3 * 18 + 2


def test_registries_and_xtuner_builder_build_components():
    from mmengine.registry import MODELS as MMENGINE_MODELS
    from xtuner.registry import BUILDER
    kwargs = dict(in_channels=(32, 64, 128, 256), feat_channels=64, num_queries=4, num_synonyms=2,
                  clip_embed_dim=32, num_heads=4, pixel_decoder_layers=1, decoder_layers=3)
    assert isinstance(MODELS.build(dict(type='OMGSegHead', **kwargs)), OMGSegHead)
    assert isinstance(BUILDER.build(dict(type=OMGSegHead, **kwargs)), OMGSegHead)
    assert isinstance(MMENGINE_MODELS.build(dict(type='omg_llava.OMGSegHead', **kwargs)),
                      OMGSegHead)
    encoder = MMENGINE_MODELS.build(dict(
        type='omg_llava.OMGSegVisualEncoder',
        backbone=dict(type='ConvNeXtCLIPBackbone', depths=(1, 1, 1, 1), dims=(32, 64, 128, 256),
                      clip_embed_dim=32),
        panoptic_head=dict(type='OMGSegHead', **kwargs)))
    assert isinstance(encoder, OMGSegVisualEncoder)


def test_last_decoder_step_only_gives_the_same_outputs(encoder, images):
    every = encoder(images)
    encoder.keep_decoder_steps = False
    try:
        last = encoder(images)
    finally:
        encoder.keep_decoder_steps = True
    steps = encoder.panoptic_head.num_decoder_layers + 1
    assert len(every.decode.mask_logits) == steps and len(last.decode.mask_logits) == 1
    for field in ('queries', 'mask_logits', 'attn_masks', 'class_logits'):
        assert len(getattr(last.decode, field)) == 1, field
        torch.testing.assert_close(getattr(last.decode, field)[0], getattr(every.decode, field)[-1])
    for field in ('pixel_tokens', 'query_tokens', 'query_blocked', 'class_logits', 'mask_logits'):
        torch.testing.assert_close(getattr(last, field), getattr(every, field))
    lean = last.without_intermediates()
    assert lean.decode is None and lean.backbone_features is None
    assert lean.image_features is last.image_features
