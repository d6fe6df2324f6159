"""OMG-Seg alone on tiny random weights: panoptic / instance / semantic fusion (checked against
mmdet's MaskFormerFusionHead), interactive point and box prompts, own vocabularies, and
tools/segment_image.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mmdet.models.seg_heads.panoptic_fusion_heads import MaskFormerFusionHead
from PIL import Image
from pycocotools import mask as mask_utils

from omg_llava.segmentation import embedding_cache
from omg_llava.segmentation.builder import build_segmenter
from omg_llava.segmentation.fusion import INSTANCE_OFFSET, instance_fusion, panoptic_fusion
from omg_llava.segmentation.outputs import rgb_to_ids

from conftest import TINY_CONFIG, load_tool
from tiny_clip_text import write_tiny_text_tower


def _random_logits(seed, q=12, k=6, h=20, w=24):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(q, k + 1, generator=g) * 3
    masks = torch.randn(q, h // 4, w // 4, generator=g) * 4
    masks = torch.nn.functional.interpolate(masks[None], size=(h, w), mode='bilinear')[0]
    return cls, masks


@pytest.mark.parametrize('seed,thr', [(0, 0.0), (1, 0.0), (2, 0.3), (3, 0.0)])
def test_panoptic_fusion_equals_mmdet(seed, thr):
    cls, masks = _random_logits(seed)
    ours = panoptic_fusion(cls, masks, num_things=4, score_thr=thr)
    mmdet = (
        MaskFormerFusionHead(
            num_things_classes=4,
            num_stuff_classes=2,
            test_cfg=dict(object_mask_thr=thr, iou_thr=0.8, filter_low_score=True),
        )
        .panoptic_postprocess(cls, masks)
        .sem_seg[0]
    )
    assert torch.equal(ours.labels, (mmdet % INSTANCE_OFFSET).long())
    assert ((ours.queries >= 0) == (ours.labels < 6)).all()
    for query, label, _ in ours.segments:  # every painted pixel of a query carries its class
        assert (ours.labels[ours.queries == query] == label).all()
    things = [s for s in ours.segments if s[1] < 4 and (ours.queries == s[0]).any()]
    assert len(things) == len({int(i) for i in mmdet.unique() if i >= INSTANCE_OFFSET})


def test_instance_fusion_equals_mmdet():
    cls, masks = _random_logits(5)
    ours = instance_fusion(cls, masks, num_things=4, max_per_image=20)
    ref = MaskFormerFusionHead(num_things_classes=4, num_stuff_classes=2,
                               test_cfg=dict(max_per_image=20)).instance_postprocess(cls, masks)
    expected = sorted(zip(ref.labels.tolist(), ref.scores.tolist()), key=lambda t: -t[1])
    assert [int(x) for x in ours.labels] == [lab for lab, _ in expected]
    torch.testing.assert_close(ours.scores, torch.tensor([s for _, s in expected]))
    assert (ours.labels < 4).all() and (ours.scores[:-1] >= ours.scores[1:]).all()
    assert torch.equal(ours.masks, masks[ours.queries] > 0)


@pytest.fixture(scope='module')
def segmenter():
    seg, _ = build_segmenter(str(TINY_CONFIG), seed=0)
    return seg


@pytest.fixture(scope='module')
def photo():
    from skimage import data
    return np.ascontiguousarray(data.astronaut()[100:191, 150:277])  # odd size: 91 x 127


def test_panoptic_semantic_instance_shapes_on_original_image(segmenter, photo):
    out = segmenter.encode(photo)
    head = segmenter.encoder.panoptic_head
    assert out.class_logits.shape == (20, 134) and out.mask_logits.shape == (20, 64, 64)
    assert out.query_features.shape == (20, head.feat_channels)
    pan = segmenter.panoptic(out)
    assert pan.labels.shape == (91, 127) and pan.queries.shape == (91, 127)
    assert pan.labels.min() >= 0 and pan.labels.max() <= 133 and pan.queries.max() < 20
    assert torch.equal(segmenter.semantic(out), pan.labels)
    inst = segmenter.instance(out, max_per_image=30)
    assert inst.masks.shape[1:] == (91, 127) and len(inst.masks) <= 30 and (inst.labels < 80).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    # same as fusing the full-resolution logits of every query (the segmenter upsamples only what
    # can win)
    full = out.geometry.logits_to_original(out.mask_logits)
    ref = panoptic_fusion(out.class_logits, full, 80)
    assert torch.equal(pan.labels, ref.labels) and torch.equal(pan.queries, ref.queries)


def test_interactive_points_and_boxes(segmenter, photo):
    out = segmenter.encode(photo)
    points, boxes = [[10, 20], [100, 70]], [[5, 5, 60, 80]]
    masks = segmenter.interactive(out, points=points, boxes=boxes)
    assert masks.shape == (3, 91, 127) and masks.dtype == torch.bool
    # every prompt attends only to itself: decoding each alone gives the same logits
    together = segmenter.interactive_logits(out, points, boxes)
    alone = torch.cat([segmenter.interactive_logits(out, points=[p]) for p in points]
                      + [segmenter.interactive_logits(out, boxes=boxes)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    # a point prompt is the same query as OMG-LLaVA's point prompt (pseudo box, pb_embedding[0] +
    # mask token)
    llava = segmenter.encoder.encode_point_prompts(
        out.geometry.points_to_input(torch.tensor(points[:1], dtype=torch.float)),
        torch.zeros(1, dtype=torch.long),
        out.features,
    )
    torch.testing.assert_close(llava.decode.mask_logits[-1][:, 0], together[:1], rtol=1e-4,
                               atol=1e-4)
    assert segmenter.interactive(out).shape == (0, 91, 127)
    with pytest.raises(ValueError, match='outside'):
        segmenter.interactive(out, points=[[500, 10]])


def test_own_vocabulary_embedded_once_and_cached(tmp_path, photo, monkeypatch):
    # projection 32 = the tiny head's clip_embed_dim
    weights, gz, _ = write_tiny_text_tower(tmp_path)
    cache = tmp_path / 'cache'
    seg, notes = build_segmenter(str(TINY_CONFIG), classes='cat,dog/puppy,stuff:grass',
                                 text_weights=str(weights), tokenizer=str(gz), cache_dir=str(cache))
    assert any('cached in' in n for n in notes) and len(list(cache.glob('*.pth'))) == 1
    head = seg.encoder.panoptic_head
    assert head.cls_embed.shape == (32, 4, 2) and (head.num_classes, head.num_things_classes) == (3,
                                                                                                  2)
    assert torch.equal(head.cls_embed[:, 3], torch.zeros(32, 2))  # no-object stays a zero vector
    out = seg.encode(photo)
    assert out.class_logits.shape == (20, 4)
    pan = seg.panoptic(out)
    assert pan.labels.max() <= 3 and all(label < 3 for _, label, _ in pan.segments)
    # second build: no text tower is loaded (memory cache), then from disk only
    monkeypatch.setattr(embedding_cache, 'build_text_encoder',
                        lambda *a, **k: pytest.fail('re-embedded'))
    seg2, _ = build_segmenter(str(TINY_CONFIG), classes='cat,dog/puppy,stuff:grass',
                              text_weights=str(weights), tokenizer=str(gz), cache_dir=str(cache))
    embedding_cache._MEMORY.clear()
    seg3, _ = build_segmenter(str(TINY_CONFIG), classes='cat,dog/puppy,stuff:grass',
                              text_weights=str(weights), tokenizer=str(gz), cache_dir=str(cache))
    assert torch.equal(seg2.encoder.panoptic_head.cls_embed, head.cls_embed)
    assert torch.equal(seg3.encoder.panoptic_head.cls_embed, head.cls_embed)
    with pytest.raises(ValueError, match='--tokenizer'):
        build_segmenter(str(TINY_CONFIG), classes='cat')


@pytest.mark.parametrize('task', ['panoptic', 'semantic', 'instance', 'interactive'])
def test_segment_image_tool_tasks(task, tmp_path, photo, capsys):
    image = tmp_path / 'photo.png'
    Image.fromarray(photo).save(image)
    argv = ['--config', str(TINY_CONFIG), '--image', str(image), '--out-dir', str(tmp_path),
            '--task', task]
    if task == 'interactive':
        argv += ['--point', '30,40', '--box', '10,10,90,80']
    if task == 'instance':
        argv += ['--score-thr', '0']
    assert load_tool('segment_image').main(argv) == 0
    assert np.asarray(Image.open(tmp_path / f'{task}_overlay.png')).shape == (91, 127, 3)
    if task == 'panoptic':
        ids = rgb_to_ids(np.asarray(Image.open(tmp_path / 'panoptic.png')))
        info = json.loads((tmp_path / 'panoptic.json').read_text())['segments_info']
        assert sorted(s['id'] for s in info) == sorted(int(i) for i in np.unique(ids) if i)
        assert all(s['area'] == int((ids == s['id']).sum()) for s in info)
    elif task == 'semantic':
        labels = np.asarray(Image.open(tmp_path / 'semantic.png'))
        assert (labels.shape == (91, 127) and labels.dtype == np.uint8
                and ((labels < 133) | (labels == 255)).all())
    else:
        name = 'prompts' if task == 'interactive' else 'instances'
        records = json.loads((tmp_path / f'{name}.json').read_text())[name]
        assert len(records) == (2 if task == 'interactive' else len(records)) and records
        for record in records:
            mask = mask_utils.decode(dict(size=record['segmentation']['size'],
                                          counts=record['segmentation']['counts'].encode()))
            assert mask.shape == (91, 127) and int(mask.sum()) == record['area']


def test_segment_image_tool_rejects_bad_prompts(tmp_path):
    tool = load_tool('segment_image')
    with pytest.raises(SystemExit):
        tool.main(['--config', str(TINY_CONFIG), '--task', 'interactive', '--out-dir',
                   str(tmp_path)])
    with pytest.raises(SystemExit):
        tool.main(['--config', str(TINY_CONFIG), '--task', 'interactive', '--point', '1,2,3',
                   '--out-dir', str(tmp_path)])


def test_encode_reads_float_and_grey_arrays_as_chat_does(segmenter, photo):
    """The segmenter takes images through the shared reader: a float array in [0, 1] encodes like
    its uint8 source, and an out-of-range float array is refused with the reader's message."""
    as_uint8 = segmenter.encode(photo).mask_logits
    as_float = segmenter.encode(photo.astype(np.float32) / 255).mask_logits
    torch.testing.assert_close(as_float, as_uint8)
    with pytest.raises(ValueError, match=r'values in \[0, 1\]'):
        segmenter.encode(photo.astype(np.float32))
