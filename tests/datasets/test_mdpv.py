"""MDPV point datasets on skimage's coffee photo (400 x 600, so the square padding shifts y)."""
from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.mdpv import MDPVPointDataset, marks_preamble
from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, MARK_TOKEN
from omg_llava.utils.conversation import Turn

S = 128
COFFEE = skdata.coffee()
H, W = COFFEE.shape[:2]
POINTS = [[300.0, 120.5], [45, 390], [599, 0]]


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture
def coffee_image(tmp_path):
    Image.fromarray(COFFEE).save(tmp_path / 'coffee.jpg')
    return 'coffee.jpg'


def entry(image: str, **changes) -> dict:
    row = {'id': 'a1', 'image': image, 'points': POINTS,
           'conversations': [{'from': 'human',
                              'value': '<image>\nDescribe <Mark 1>, <Mark 2> and <Mark 3>.'},
                             {'from': 'gpt',
                              'value': '<Mark 1> is a cup of coffee; <Mark 2> and <Mark 3> are '
                                                      'parts of the table.'},
                             {'from': 'human', 'value': 'What colour is <Mark 1>?'},
                             {'from': 'gpt', 'value': 'It is white.'}]}
    return dict(row, **changes)


def dump(path, rows) -> str:
    path.write_text(json.dumps(rows))
    return str(path)


def test_marks_preamble():
    assert marks_preamble(2) == 'There are some marks: Mark 1 <mark>, Mark 2 <mark>.\n'


def test_point_sample_content(tmp_path, coffee_image, tokenizer):
    ds = MDPVPointDataset(dump(tmp_path / 'gpt4v_brief_point.json', [entry(coffee_image)]),
                          str(tmp_path), tokenizer, image_size=S)
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    assert conversation.turns == [
        Turn('There are some marks: Mark 1 <mark>, Mark 2 <mark>, Mark 3 <mark>.\nDescribe Mark 1, '
             'Mark 2 and Mark 3.',
             'Mark 1 is a cup of coffee; Mark 2 and Mark 3 are parts of the table.'),
        Turn('What colour is Mark 1?', 'It is white.')]
    item = ds[0]
    expected = SquareGeometry((H, W), S).points_to_input(torch.tensor(POINTS, dtype=torch.float))
    assert torch.allclose(item['points'], expected)
    # 100 rows of padding on top
    assert torch.allclose(expected[0], torch.tensor([300.0, 120.5 + 100]) * S / 600)
    mark = ds.tokenizer.convert_tokens_to_ids(MARK_TOKEN)
    assert (item['input_ids'] == mark).sum() == 3 and (item['labels'] == mark).sum() == 0
    answers = [i for t in conversation.turns
               for i in ds.tokenizer.encode(t.answer + '<|im_end|>', add_special_tokens=False)]
    assert item['labels'][item['labels'] != IGNORE_INDEX].tolist() == answers
    assert item['masks'].shape == (0, S, S) and item['regions'].shape == (0, S, S)
    assert torch.equal(ds[0]['input_ids'], item['input_ids'])


def test_point_dataset_skips_malformed_rows(tmp_path, coffee_image, tokenizer):
    rows = [entry(coffee_image),
            # x == W is outside the image
            entry(coffee_image, points=[[300, 120], [45, 390], [600, 10]]),
            entry(coffee_image, points=[]),
            entry(coffee_image, points=POINTS[:2]),  # the text names Mark 3
            entry(coffee_image, points=[[1, 2, 3], [4, 5], [6, 7]]),
            entry('missing.jpg')]
    ds = MDPVPointDataset(dump(tmp_path / 'gpt4v_qa_point.json', rows), str(tmp_path), tokenizer,
                          image_size=S)
    assert len(ds.modality_length) == 6 and min(ds.modality_length) > 0
    assert torch.equal(ds[1]['input_ids'], ds[0]['input_ids'])
    assert sum(ds.skipped.values()) == 5
    assert any('outside' in reason for reason in ds.skipped)


# Rows as the MDPV files ship them: `image` carries the annotators' folders, marks are written
# `<Mark k>`.
def real_row(image: str) -> dict:
    return {'id': 'gpt4v_vg_QA_point_17', 'image': image, 'points': [[300.0, 120.0], [45.0, 390.0]],
            'conversations': [{'from': 'human', 'value': '<image>\nWhat is at <Mark 1>? '},
                              {'from': 'gpt', 'value': '<Mark 1> is a cup of coffee. '},
                              {'from': 'human', 'value': ' And <Mark 2>?'},
                              {'from': 'gpt', 'value': 'The <table> edge at <Mark 2>.'}]}


def test_image_basename_and_text_rewriting(tmp_path, tokenizer):
    folder = tmp_path / 'coco2014' / 'train2014'
    folder.mkdir(parents=True)
    Image.fromarray(COFFEE).save(folder / 'COCO_train2014_000000000042.jpg')
    row = real_row('/mnt/data/cocostuff-10k/images/COCO_train2014_000000000042.jpg')
    ds = MDPVPointDataset(dump(tmp_path / 'gpt4v_cocostuff_10k_QA_point.json', [row]), str(folder),
                          tokenizer, image_size=S)
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    assert conversation.image_path == str(folder / 'COCO_train2014_000000000042.jpg')
    # first question: marks preamble + text without brackets (stripped); later texts lose brackets
    # only
    assert conversation.turns == [
        Turn('There are some marks: Mark 1 <mark>, Mark 2 <mark>.\nWhat is at Mark 1?',
             'Mark 1 is a cup of coffee. '),
        Turn(' And Mark 2?', 'The table edge at Mark 2.')]
    assert ds[0]['points'].shape == (2, 2) and not ds.skipped


def test_visual_genome_images_fall_back_to_vg_100k_2(tmp_path, tokenizer):
    vg = tmp_path / 'llava_images' / 'vg'
    (vg / 'VG_100K').mkdir(parents=True)
    (vg / 'VG_100K_2').mkdir()
    Image.fromarray(COFFEE).save(vg / 'VG_100K' / '1.jpg')
    Image.fromarray(COFFEE).save(vg / 'VG_100K_2' / '2.jpg')
    rows = [real_row('vg/VG_100K/1.jpg'), real_row('VG_100K_2/2.jpg'), real_row('vg/3.jpg')]
    ds = MDPVPointDataset(dump(tmp_path / 'gpt4v_vg_QA_point.json', rows), str(vg / 'VG_100K'),
                          tokenizer, image_size=S)
    paths = [ds.build_conversation(r, random.Random(0)).image_path for r in ds.records]
    assert paths == [str(vg / 'VG_100K' / '1.jpg'), str(vg / 'VG_100K_2' / '2.jpg'),
                     str(vg / 'VG_100K' / '3.jpg')]
    assert ds[1]['points'].shape == (2, 2)
    ds[2]
    assert ds.skipped == {'image not found': 1}  # named at its VG_100K path
    other = MDPVPointDataset(dump(tmp_path / 'gpt4v_ade20k_QA_point.json', rows[1:2]),
                             str(vg / 'VG_100K').replace(
        'VG_100K', 'images'), tokenizer, image_size=S)
    # no fallback outside a VG folder
    assert other.image_path('VG_100K_2/2.jpg').endswith('images/2.jpg')


def test_rows_without_a_turn_are_left_out(tmp_path, coffee_image, tokenizer):
    no_answer = entry(coffee_image,
                      conversations=[{'from': 'human', 'value': '<image>\nDescribe <Mark 1>.'}])
    ds = MDPVPointDataset(dump(tmp_path / 'gpt4v_brief_point.json',
                               [entry(coffee_image), no_answer]),
                          str(tmp_path), tokenizer, image_size=S)
    assert len(ds) == 1
