"""The frozen encoder's output cache: same results as encoding, the encoder runs only on unseen
pixels."""
from __future__ import annotations

import pytest
import torch

from omg_llava.inference.encoder_builder import build_visual_encoder
from omg_llava.models.encoder_output_cache import ImageOutputCache, image_key
from omg_llava.models.omg_seg_trainer import OMGSegTrainer

from conftest import TINY_CONFIG

SIZE = 128


@pytest.fixture()
def cached_encoder():
    encoder, _ = build_visual_encoder(str(TINY_CONFIG), seed=0)
    encoder.output_cache = ImageOutputCache(max_images=3)
    encoded_batches = []
    plain_encode = encoder.encode

    def counting_encode(pixel_values):
        encoded_batches.append(len(pixel_values))
        return plain_encode(pixel_values)

    encoder.encode = counting_encode
    return encoder, plain_encode, encoded_batches


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _assert_same_output(cached, plain):
    """Equal up to float rounding: another batch composition sums in another order (logits ~50: 2e-5
    apart)."""
    close = dict(rtol=1e-5, atol=1e-4)
    for name in ('pixel_tokens', 'query_tokens', 'query_blocked', 'class_logits', 'iou_logits',
                 'mask_logits'):
        torch.testing.assert_close(getattr(cached, name), getattr(plain, name), msg=name, **close)
    torch.testing.assert_close(cached.image_features.mask_features,
                               plain.image_features.mask_features, **close)
    assert len(cached.image_features.memories) == len(plain.image_features.memories)
    for c, p in zip(cached.image_features.memories, plain.image_features.memories):
        torch.testing.assert_close(c, p, **close)
    assert cached.image_features.image_size == plain.image_features.image_size


def test_image_key_follows_pixels_not_storage():
    image = _images(1, 0)[0]
    assert image_key(image) == image_key(image.clone())
    other_strides = image.transpose(1, 2).contiguous().transpose(1, 2)  # same values
    assert image_key(image) == image_key(other_strides)
    changed = image.clone()
    changed[0, 0, 0] += 1e-3
    assert image_key(changed) != image_key(image)
    assert image_key(image.double()) != image_key(image)


def test_cache_answers_like_the_encoder_and_skips_seen_images(cached_encoder):
    encoder, plain_encode, encoded_batches = cached_encoder
    first, second = _images(2, 1), _images(1, 2)
    _assert_same_output(encoder(first), plain_encode(first))
    assert encoded_batches == [2]
    # one seen image, one new one and the seen one again: only the new image is encoded
    mixed = torch.cat([first[1:], second, first[1:]])
    out = encoder(mixed)
    assert encoded_batches == [2, 1]
    _assert_same_output(out, plain_encode(mixed))
    assert out.backbone_features is None and out.decode is None
    assert (encoder.output_cache.hits, encoder.output_cache.misses) == (2, 3)


def test_cache_drops_the_least_recently_used_image(cached_encoder):
    encoder, _, encoded_batches = cached_encoder
    a, b, c, d = _images(4, 3)
    encoder(torch.stack([a, b, c]))
    encoder(a[None])  # a is now the most recent; b the least
    encoder(d[None])  # evicts b
    assert len(encoder.output_cache) == 3
    encoder(torch.stack([a, c, d]))
    assert encoded_batches == [3, 1]
    encoder(b[None])
    assert encoded_batches == [3, 1, 1]


def test_a_batch_larger_than_the_cache_is_still_answered_whole():
    encoder, _ = build_visual_encoder(str(TINY_CONFIG), seed=0)
    encoder.output_cache = ImageOutputCache(max_images=1)
    images = _images(3, 4)
    _assert_same_output(encoder(images), encoder.encode(images))
    assert len(encoder.output_cache) == 1


def test_cache_refuses_a_training_encoder():
    with pytest.raises(ValueError, match='max_images'):
        ImageOutputCache(0)
    encoder, _ = build_visual_encoder(str(TINY_CONFIG), seed=0)
    encoder.output_cache = ImageOutputCache(2)
    encoder.frozen = False
    with pytest.raises(RuntimeError, match='frozen encoder only'):
        encoder(_images(1, 5))
    config = dict(type='OMGSegVisualEncoder', backbone=encoder.backbone,
                  panoptic_head=encoder.panoptic_head)
    with pytest.raises(ValueError, match='needs frozen=True'):
        from omg_llava.registry import MODELS
        MODELS.build(dict(config, frozen=False, cache_images=4))
    # the OMG-Seg pre-stage trains the encoder: it drops a configured cache
    trainer = OMGSegTrainer(dict(config, cache_images=4), num_classes=2)
    assert trainer.visual_encoder.output_cache is None
