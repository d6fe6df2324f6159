"""OMGSegTrainer: overfits two synthetic images, exports files the OMG-LLaVA loaders read back."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import load_project_module
from omg_llava.inference.image_io import preprocess_image
from omg_llava.models import OMGSegTrainer, OMGSegVisualEncoder
from omg_llava.models.weights import load_visual_encoder_weights
from omg_llava.registry import MODELS

S = 64


def tiny_encoder_cfg() -> dict:
    """The visual encoder of configs/tiny/omg_llava_tiny_finetune.py (fewer queries for speed)."""
    return dict(
        type='OMGSegVisualEncoder',
        backbone=dict(type='ConvNeXtCLIPBackbone', depths=(1, 1, 2, 1), dims=(32, 64, 128, 256),
                      clip_embed_dim=32),
        panoptic_head=dict(type='OMGSegHead', in_channels=(32, 64, 128, 256),
                           strides=(4, 8, 16, 32),
                           feat_channels=64, num_queries=10, num_things_classes=80,
                           num_stuff_classes=53,
                           num_synonyms=2, clip_embed_dim=32, num_heads=4, pixel_decoder_layers=1,
                           pixel_decoder_ffn_channels=128, decoder_layers=3,
                           decoder_ffn_channels=128, num_feature_levels=3),
        pixel_shuffle_ratio=2, frozen=True)


@pytest.fixture(scope='module')
def gen():
    return load_project_module('synthetic_shapes')


@pytest.fixture(scope='module')
def batch(gen):
    pixels, labels, masks = [], [], []
    for k in range(2):
        scene = gen.sample_scene(np.random.default_rng([3, k]), S)
        pixel_values, _ = preprocess_image(Image.fromarray(scene.image), S)
        pixels.append(pixel_values)
        labels.append(torch.tensor([gen.KINDS.index(o.kind) for o in scene.objects]))
        masks.append(torch.from_numpy(np.stack([o.mask for o in scene.objects])).to(torch.uint8))
    return dict(pixel_values=torch.stack(pixels), gt_labels=labels, gt_masks=masks)


def test_overfits_two_images(batch):
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256))
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals, mask_totals = [], []
    for _ in range(15):
        losses = model(batch, mode='loss')
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
        mask_totals.append((losses['loss_mask'] + losses['loss_dice']).item())
    print('total loss', [round(t, 2) for t in totals])
    assert min(totals[-3:]) < 0.7 * totals[0]
    # not only the class loss (cosine x 100 logits)
    assert min(mask_totals[-3:]) < 0.9 * mask_totals[0]
    model.eval()
    with torch.no_grad():
        preds = model(batch, mode='predict')
    assert len(preds) == 2
    assert preds[0]['masks'].shape == (10, S, S) and preds[0]['masks'].dtype == torch.bool
    assert (preds[0]['labels'].max() < 4
            and (preds[0]['scores'][:-1] >= preds[0]['scores'][1:]).all())


def test_random_mask_points_fall_inside_their_masks():
    from omg_llava.models.omg_seg_trainer import random_mask_points
    masks = torch.zeros(3, 20, 30, dtype=torch.uint8)
    masks[0, 2:5, 7:9] = 1
    masks[1, 15, 29] = 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        points = random_mask_points(masks, generator)
        assert points.shape == (3, 2)
        for k in range(2):
            x, y = points[k].long().tolist()
            assert masks[k, y, x] == 1
        assert points[2].tolist() == [15.0, 10.0]  # empty mask: the image centre


def test_single_query_losses_train_the_decoder_to_decode_one_query(batch):
    torch.manual_seed(0)
    plain = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256))
    assert set(plain(batch, mode='loss')) == {'loss_cls', 'loss_mask', 'loss_dice'}
    with pytest.raises(ValueError, match='single_query_weight'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, single_query_weight=-1.0)
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256),
                          single_query_weight=2.0, single_query_points=256)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    single = []
    for _ in range(15):
        losses = model(batch, mode='loss')
        assert set(losses) == {'loss_cls', 'loss_mask', 'loss_dice', 'loss_single_dice',
                               'loss_single_mask'}
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        single.append((losses['loss_single_dice'] + losses['loss_single_mask']).item())
    print('single-query loss', [round(t, 2) for t in single])
    assert min(single[-3:]) < 0.8 * single[0]
    # gradients reach the decoder and the prompt modules through the single-query path
    head = model.visual_encoder.panoptic_head
    optimizer.zero_grad()
    _, features, decode = model.encode(batch['pixel_values'])
    _, matches = model.criterion.losses_and_matches(decode, batch['gt_labels'], batch['gt_masks'])
    losses = model.single_query_losses(features, decode, batch['gt_masks'], matches)
    sum(losses.values()).backward()
    assert (head.pos_linear.weight.grad.abs().sum() > 0
            and head.mask_tokens.weight.grad.abs().sum() > 0)
    # queries detached
    assert head.query_feat.weight.grad is None or head.query_feat.weight.grad.abs().sum() == 0


def test_save_encoder_round_trip(tmp_path):
    torch.manual_seed(1)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4)
    with torch.no_grad():  # move every parameter away from its initial value
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    paths = tmp_path / 'omg_seg.pth', tmp_path / 'trunk.safetensors', tmp_path / 'class_embed.pth'
    model.save_encoder(*paths[:2])
    model.save_class_embeddings(paths[2])
    head_file = torch.load(paths[0], weights_only=True)
    assert set(head_file) == {'state_dict'} and all(k.startswith('panoptic_head.')
                                                    for k in head_file['state_dict'])
    fresh: OMGSegVisualEncoder = MODELS.build(tiny_encoder_cfg())
    reports = load_visual_encoder_weights(fresh, omg_seg=str(paths[0]), clip=str(paths[1]),
                                          class_embed=str(paths[2]))
    assert all(r.ok for r in reports)
    trained = model.visual_encoder.eval()
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        a, b = trained(x), fresh(x)
    for name in ('pixel_tokens', 'query_tokens', 'class_logits', 'mask_logits'):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_export_hook_writes_the_files_the_encoder_loaders_read(tmp_path):
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from omg_llava.engine.hooks import ExportStageOutputHook
    from omg_llava.models.omg_seg_trainer import ENCODER_FILES
    torch.manual_seed(2)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4)
    runner = SimpleNamespace(model=model, work_dir=str(tmp_path),
                             logger=MMLogger.get_instance('export_hook_test'))
    ExportStageOutputHook().after_train(runner)
    paths = {k: str(tmp_path / name) for k, name in ENCODER_FILES.items()}
    fresh: OMGSegVisualEncoder = MODELS.build(tiny_encoder_cfg())
    assert all(r.ok for r in load_visual_encoder_weights(fresh, **paths))
    expected = model.visual_encoder.panoptic_head.state_dict()
    for key, value in fresh.panoptic_head.state_dict().items():
        assert torch.equal(value, expected[key]), key
    # no referring term, no encoder of it
    assert sorted(os.listdir(tmp_path)) == sorted(ENCODER_FILES.values())
    with pytest.raises(TypeError, match='export'):
        ExportStageOutputHook().after_train(SimpleNamespace(model=torch.nn.Linear(1, 1),
                                                            work_dir=str(tmp_path)))


def test_mask_pooled_features_average_each_mask_over_the_map_cells():
    from omg_llava.models.omg_seg_trainer import mask_pooled_features
    feature_map = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(2, 2, 2)  # (C=2, h=2, w=2)
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[0, :2, :2] = 1  # exactly cell (0, 0)
    masks[1, :2, :] = 1  # cells (0, 0) and (0, 1), fully
    masks[1, 2, 2] = 1  # a quarter of cell (1, 1)
    pooled = mask_pooled_features(feature_map, masks)
    assert pooled.shape == (2, 2)
    torch.testing.assert_close(pooled[0], feature_map[:, 0, 0])
    expected = (feature_map[:, 0, 0] + feature_map[:, 0, 1] + 0.25 * feature_map[:, 1, 1]) / 2.25
    torch.testing.assert_close(pooled[1], expected)


def test_region_class_loss_trains_the_trunk_stage_it_reads(batch):
    plain = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256))
    assert plain.region_classifier is None and 'loss_region_cls' not in plain(batch, mode='loss')
    with pytest.raises(ValueError, match='region_class_stage'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, region_class_weight=1.0,
                      region_class_stage=4)
    with pytest.raises(ValueError, match='region_class_weight'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, region_class_weight=-1.0)
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256),
                          region_class_weight=1.0, region_class_stage=2)
    assert 'loss_region_cls' in model(batch, mode='loss')
    backbone = model.visual_encoder.backbone
    optimizer = torch.optim.AdamW(
        list(backbone.parameters()) + list(model.region_classifier.parameters()), lr=3e-3
    )
    losses = []
    for _ in range(20):
        maps = backbone(batch['pixel_values'])
        loss = model.region_class_loss(maps[2], batch['gt_labels'], batch['gt_masks'])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print('region class loss', [round(x, 3) for x in losses])
    assert min(losses[-3:]) < 0.5 * losses[0]
    assert backbone.layer3.blocks[0].conv_dw.weight.grad.abs().sum() > 0
    assert backbone.layer4.blocks[0].conv_dw.weight.grad is None  # stage 3 is after the one read
    # the classifier belongs to the trainer: the exported encoder files do not hold it
    assert not any('region_classifier' in k for k in model.visual_encoder.state_dict())


def test_word_bag_class_embeddings_share_a_direction_per_word():
    from omg_llava.models.omg_seg_trainer import word_bag_class_embeddings
    names = ['red', 'star', 'red star', 'blue star', 'blue circle']
    embeds = word_bag_class_embeddings(names, num_synonyms=3, dim=64, seed=0)
    assert embeds.shape == (5, 3, 64)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(5, 3))
    assert torch.equal(embeds[:, 0], embeds[:, 2])  # synonyms repeat the name's embedding
    e = embeds[:, 0]
    # a name is the normalised sum of its words' vectors (a one-word name is its word's vector)
    torch.testing.assert_close(e[2], F.normalize(e[0] + e[1], dim=0))
    # a shared word relates names (random 64-d: ~0.5)
    assert e[2] @ e[3] > 0.2 and abs(float(e[2] @ e[4])) < 0.5
    # reproducible, independent of the order the names come in
    torch.testing.assert_close(word_bag_class_embeddings(names[::-1], 1, 64, seed=0)[:, 0],
                               e.flip(0))
    assert not torch.allclose(word_bag_class_embeddings(names, 1, 64, seed=1)[:, 0], e)
    with pytest.raises(ValueError, match='empty class name'):
        word_bag_class_embeddings(['red star', ' '], 1, 64)


def test_class_names_set_the_head_class_embeddings():
    names = ['red star', 'blue star', 'red circle', 'blue circle']
    from omg_llava.models.omg_seg_trainer import word_bag_class_embeddings
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, class_names=names)
    cls_embed = model.visual_encoder.panoptic_head.cls_embed  # (clip_dim, K_head + 1, synonyms)
    torch.testing.assert_close(cls_embed[:, :4].permute(1, 2, 0),
                               word_bag_class_embeddings(names, 2, 32))
    with pytest.raises(ValueError, match='class_names'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=3, class_names=names)


def test_mask_boxes_are_tight_normalised_centre_size_boxes():
    from omg_llava.models.omg_seg_trainer import mask_boxes
    masks = torch.zeros(3, 8, 10, dtype=torch.uint8)
    masks[0, 2:4, 5:9] = 1  # rows 2-3, columns 5-8
    masks[1, 7, 0] = 1  # one corner pixel
    boxes = mask_boxes(masks)
    torch.testing.assert_close(boxes[0], torch.tensor([7 / 10, 3 / 8, 4 / 10, 2 / 8]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.5 / 10, 7.5 / 8, 1 / 10, 1 / 8]))
    assert boxes[2].tolist() == [0.0, 0.0, 0.0, 0.0] and mask_boxes(masks[:0]).shape == (0, 4)


def test_box_loss_teaches_the_final_queries_where_their_object_is(batch):
    plain = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256))
    assert plain.box_head is None and 'loss_box' not in plain(batch, mode='loss')
    with pytest.raises(ValueError, match='box_weight'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, box_weight=-1.0)
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256),
                          box_weight=5.0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    boxes = []
    for _ in range(20):
        losses = model(batch, mode='loss')
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        boxes.append(losses['loss_box'].item())
    print('box loss', [round(b, 3) for b in boxes])
    assert min(boxes[-3:]) < 0.7 * boxes[0]
    # the gradient reaches the decoder through the final queries; the head is not part of the
    # exported encoder
    assert model.visual_encoder.panoptic_head.query_feat.weight.grad.abs().sum() > 0
    assert not any('box_head' in k for k in model.visual_encoder.state_dict())


@pytest.fixture(scope='module')
def referring_batch(gen, batch):
    """``batch`` plus each image's referring expressions (the generator's grammar) and their
    instances."""
    sentences, targets = [], []
    for k in range(2):
        scene = gen.sample_scene(np.random.default_rng([3, k]), S)
        pairs = gen.referring_expressions(scene)
        sentences.append([sentence for _, sentence in pairs])
        targets.append(torch.tensor([index for index, _ in pairs]))
    return dict(batch, ref_sentences=sentences, ref_targets=targets)


def test_referring_losses_teach_the_decoder_text_derived_queries(referring_batch, tmp_path):
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256),
                          referring_weight=2.0, referring_per_image=3, single_query_points=256)
    assert model.referring_queries is not None
    assert not any(name.startswith('referring_queries')
                   for name in model.visual_encoder.state_dict())  # not exported
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    referring = []
    for _ in range(15):
        losses = model(referring_batch, mode='loss')
        assert {'loss_ref_dice', 'loss_ref_mask'} <= set(losses)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        referring.append((losses['loss_ref_dice'] + losses['loss_ref_mask']).item())
    print('referring loss', [round(t, 2) for t in referring])
    assert min(referring[-3:]) < 0.8 * referring[0]
    # the term reaches the text side and the decoder; at most referring_per_image expressions per
    # image
    optimizer.zero_grad()
    _, features, _ = model.encode(referring_batch['pixel_values'])
    losses = model.referring_losses(features, referring_batch['ref_sentences'],
                                    referring_batch['ref_targets'], referring_batch['gt_masks'])
    sum(losses.values()).backward()
    head = model.visual_encoder.panoptic_head
    assert model.referring_queries.embed.weight.grad.abs().sum() > 0
    assert head.mask_embed[0].weight.grad.abs().sum() > 0
    no_sentences = model.referring_losses(features, [[], []],
                                          [torch.zeros(0, dtype=torch.long)] * 2,
                                          referring_batch['gt_masks'])
    assert no_sentences['loss_ref_dice'].item() == 0 and no_sentences['loss_ref_dice'].requires_grad
    # the export keeps the expression encoder beside the encoder files, for evaluating the
    # pre-stage's lookups
    from omg_llava.models.omg_seg_trainer import REFERRING_QUERIES_FILE
    written = model.export(tmp_path)
    saved = torch.load(tmp_path / REFERRING_QUERIES_FILE, weights_only=True)
    assert str(tmp_path / REFERRING_QUERIES_FILE) in written
    assert saved.keys() == model.referring_queries.state_dict().keys()
    assert all(torch.equal(v, model.referring_queries.state_dict()[k]) for k, v in saved.items())
    decode = model.decode_referring(features, ['the circle', 'the star'], [1, 0])
    assert decode.mask_logits[-1].shape[:2] == (2, 1)


def test_referring_weight_needs_expressions_in_the_batch(batch):
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, referring_weight=1.0)
    with pytest.raises(ValueError, match='refs_file'):
        model(batch, mode='loss')
    with pytest.raises(ValueError, match='referring_weight'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, referring_weight=-1.0)
    with pytest.raises(ValueError, match='referring_per_image'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, referring_weight=1.0,
                      referring_per_image=0)
    with pytest.raises(ValueError, match='referring_weight > 0'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4).decode_referring(None, ['the circle'], [0])


def test_prompt_class_loss_makes_prompt_contents_tell_classes_apart(batch, monkeypatch):
    plain = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256))
    assert plain.prompt_classifier is None and 'loss_prompt_cls' not in plain(batch, mode='loss')
    with pytest.raises(ValueError, match='prompt_class_weight'):
        OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, prompt_class_weight=-1.0)
    torch.manual_seed(0)
    model = OMGSegTrainer(tiny_encoder_cfg(), num_classes=4, criterion=dict(num_points=256),
                          prompt_class_weight=1.0)
    assert 'loss_prompt_cls' in model(batch, mode='loss')
    encoder = model.visual_encoder
    # every instance is prompted once, each kind through the encoder's own prompt encoder
    calls = {}
    for name in ('encode_point_prompts', 'encode_box_prompts', 'encode_region_prompts'):
        original = getattr(encoder, name)

        def counted(values, idxs, features, name=name, original=original):
            calls[name] = calls.get(name, 0) + len(values)
            return original(values, idxs, features)

        monkeypatch.setattr(encoder, name, counted)
    with torch.no_grad():
        features = model.encode(batch['pixel_values'])[1]
        model.prompt_class_loss(features, batch['gt_labels'], batch['gt_masks'])
    assert sum(calls.values()) == sum(len(m) for m in batch['gt_masks'])
    monkeypatch.undo()
    head = encoder.panoptic_head
    optimizer = torch.optim.AdamW(
        list(head.parameters()) + list(model.prompt_classifier.parameters()), lr=3e-3)
    losses = []
    for _ in range(20):
        with torch.no_grad():
            features = model.encode(batch['pixel_values'])[1]
        loss = model.prompt_class_loss(features, batch['gt_labels'], batch['gt_masks'])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print('prompt class loss', [round(x, 3) for x in losses])
    assert min(losses[-3:]) < 0.5 * losses[0]
    # the gradient reaches the decoder layers that make the prompt feature, and the prompt's
    # initial content
    assert head.transformer_decoder.layers[-1].ffn.layers[1].weight.grad.abs().sum() > 0
    assert head.pb_embedding.weight.grad.abs().sum() > 0
    # the classifier belongs to the trainer: the exported encoder files do not hold it
    assert not any('prompt_classifier' in k for k in encoder.state_dict())
