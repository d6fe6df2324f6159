"""Closed region questions: manifest reading, prompts, answer parsing and accuracy with injected
answers."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from omg_llava.evaluation.region_qa import QUESTIONS, first_word, question_prompt
from omg_llava.evaluation.runner import evaluate
from omg_llava.evaluation.splits import load_split, rle_of

COLOURS, KINDS = ['red', 'blue'], ['circle', 'square']


@dataclass
class Answer:
    text: str
    masks: tuple = ()


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('region_qa')
    Image.new('RGB', (16, 12)).save(root / 'a.jpg')
    left, right = np.zeros((12, 16), bool), np.zeros((12, 16), bool)
    left[2:6, 1:5], right[6:10, 9:15] = True, True
    regions = [dict(segmentation=rle_of(left), colour='red', kind='circle'),
               dict(segmentation=rle_of(right), colour='blue', kind='square')]
    manifest = dict(colours=COLOURS, kinds=KINDS,
                    chance=dict(colour=0.5, kind=0.5, colour_kind=0.25),
                    images=[dict(image='a.jpg', height=12, width=16, regions=regions)])
    (root / 'region_questions_val.json').write_text(json.dumps(manifest))
    return root


def test_samples_prompts_and_masks(root):
    split = load_split('region_qa', str(root), 'unused', 'val')
    assert len(split.samples) == 2 * len(QUESTIONS)
    first = split.samples[0]
    assert first['question'] == ('There are some regions: region1 <region>, region2 '
                                 '<region>.\nWhat is region1?')
    masks = split.region_masks(first)
    assert [m.sum() for m in masks] == [16, 24] and masks[0][2, 1] and masks[1][6, 9]
    assert question_prompt(1, 'Q?') == 'There are some regions: region1 <region>.\nQ?'


def test_first_named_word_wins():
    assert first_word('It is a small blue circle, not red.', COLOURS) == 'blue'
    assert first_word('Reddish.', COLOURS) is None  # whole words only
    assert first_word('A SQUARE', KINDS) == 'square'


def test_accuracy_against_injected_answers(root, tmp_path):
    split = load_split('region_qa', str(root), 'unused', 'val')
    truth = {1: ('red', 'circle'), 2: ('blue', 'square')}

    def predict(image_path, prompt, masks):
        assert image_path == str(root / 'a.jpg') and len(masks) == 2
        region = int(prompt.rsplit('region', 1)[1].rstrip('?'))
        colour, kind = truth[region]
        if region == 2:  # right colour, wrong shape for region 2
            kind = 'circle'
        return Answer(f'It is a {colour} {kind}.')

    metrics = evaluate(split, predict, str(tmp_path), progress=False)
    assert metrics['accuracy_colour'] == 1.0 and metrics['accuracy_shape'] == 0.5
    assert (metrics['accuracy_what'] == 0.5 and metrics['chance_what'] == 0.25
            and metrics['num_what'] == 2)
    records = [json.loads(line)
               for line in (tmp_path / 'predictions.jsonl').read_text().splitlines()]
    assert records[-1]['said_kind'] == 'circle' and records[-1]['correct'] is False


def test_bad_manifest_and_options_are_explained(root, tmp_path):
    with pytest.raises(FileNotFoundError, match='region_questions_test.json'):
        load_split('region_qa', str(root), 'unused', 'test')
    (tmp_path / 'region_questions_val.json').write_text(json.dumps({'images': []}))
    with pytest.raises(ValueError, match='missing'):
        load_split('region_qa', str(tmp_path), 'unused', 'val')
    with pytest.raises(ValueError, match='--image-folder'):
        load_split('region_qa', str(root), 'unused', 'val', image_folder=str(root))
