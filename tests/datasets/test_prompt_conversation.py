"""Conversations with ``<region>`` / ``<mark>`` inline (PromptConversationDataset), on skimage's
coffee photo."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.prompt_conversation import PromptConversationDataset
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import MARK_TOKEN, REGION_TOKEN

S = 128
COFFEE = skdata.coffee()
H, W = COFFEE.shape[:2]


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [H, W], 'counts': encoded['counts'].decode('ascii')}


def cup_and_table() -> tuple[np.ndarray, np.ndarray]:
    cup = np.zeros((H, W), bool)
    cup[80:300, 150:450] = True
    return cup, ~cup


def row(tmp_path, **changes) -> dict:
    Image.fromarray(COFFEE).save(tmp_path / 'coffee.jpg')
    cup, table = cup_and_table()
    base = {'file_name': 'coffee.jpg', 'height': H, 'width': W,
            'regions': [{'segmentation': rle(cup)}, {'segmentation': rle(table)}],
            'points': [[300, 120]],
            'conversations': [{'from': 'human', 'value': '<image>\nWhat colour is <region>?'},
                              {'from': 'gpt', 'value': 'It is white.'},
                              {'from': 'human', 'value': 'And <mark>? Compare it with <region>.'},
                              {'from': 'gpt', 'value': 'The mark is on the coffee; the table is '
                                                       'grey.'}]}
    return dict(base, **changes)


def dataset(tmp_path, rows, tokenizer) -> PromptConversationDataset:
    path = tmp_path / 'prompt_conversation.json'
    path.write_text(json.dumps(rows))
    return PromptConversationDataset(str(path), str(tmp_path), tokenizer, image_size=S)


def test_placeholders_stay_inline_and_take_the_prompts_in_text_order(tmp_path, tokenizer):
    ds = dataset(tmp_path, [row(tmp_path)], tokenizer)
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    assert conversation.turns[0].question == f'What colour is {REGION_TOKEN}?'
    assert conversation.turns[1].question == f'And {MARK_TOKEN}? Compare it with {REGION_TOKEN}.'
    cup, table = cup_and_table()
    assert len(conversation.regions) == 2 and (conversation.regions[0] == cup).all()
    assert (conversation.regions[1] == table).all() and conversation.points == [(300.0, 120.0)]
    item = ds[0]
    ids = item['input_ids'].tolist()
    region_id, mark_id = (tokenizer.convert_tokens_to_ids(t) for t in (REGION_TOKEN, MARK_TOKEN))
    assert ids.count(region_id) == 2 and ids.count(mark_id) == 1
    assert item['regions'].shape == (2, S, S) and item['points'].shape == (1, 2)


def test_rows_without_points_and_mismatched_rows(tmp_path, tokenizer):
    no_marks = row(tmp_path, points=[], regions=[{'segmentation': rle(cup_and_table()[0])}],
                   conversations=[{'from': 'human', 'value': 'What is <region>?'},
                                  {'from': 'gpt', 'value': 'A cup.'}])
    two_marks = row(tmp_path, conversations=[{'from': 'human', 'value': '<mark> and <mark>?'},
                                             {'from': 'gpt', 'value': 'Coffee.'}])
    ds = dataset(tmp_path, [no_marks, two_marks], tokenizer)
    assert len(ds[0]['regions']) == 1 and len(ds[0]['points']) == 0
    ds[1]  # the mismatched row is skipped (the next usable one is served) and counted
    assert sum(ds.skipped.values()) == 1
    assert 'placeholder count mismatch' in next(iter(ds.skipped))
