"""tools/test.py in-process with the tiny random model on the tiny REFER data, and ModelPredictor's two paths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_CONFIG, load_project_module, load_tool
from omg_llava.evaluation.runner import REGION_CAPTION_PROMPT, ModelPredictor, evaluate
from omg_llava.evaluation.splits import load_split
from omg_llava.inference.chat import OMGLLaVAChat

from voc_fixtures import MASKS, write_region_captions


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny') / 'data'
    load_project_module('build_tiny_data').build_tiny_data(str(root))
    return root


@pytest.fixture(scope='module')
def chat():
    return OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)[0]


def test_tool_on_tiny_refcoco_val(tiny_data, tmp_path, capsys):
    tool = load_tool('test')
    out_dir = tmp_path / 'out'
    metrics = tool.main([str(TINY_CONFIG), '--task', 'refseg', '--data-root', str(tiny_data / 'ref_seg'),
                         '--dataset', 'refcoco', '--split', 'val', '--max-samples', '3', '--device', 'cpu',
                         '--out-dir', str(out_dir), '--no-progress'])
    assert {'cIoU', 'gIoU', 'num_expressions', 'num_without_seg'} <= metrics.keys()
    assert metrics['num_expressions'] == 3 and 0 <= metrics['cIoU'] <= 1
    assert json.loads((out_dir / 'metrics.json').read_text()) == metrics
    records = [json.loads(line) for line in (out_dir / 'predictions.jsonl').read_text().splitlines()]
    assert len(records) == 3
    assert {'sentence', 'answer', 'has_seg', 'pred_mask', 'intersection', 'union', 'iou'} <= records[0].keys()
    assert '"cIoU"' in capsys.readouterr().out


def test_predictor_masks_reach_the_metrics(chat, tiny_data):
    split = load_split('refseg', str(tiny_data / 'ref_seg'), 'refcoco', 'val')  # the reference image folder
    seg = chat.model.token_ids.seg
    predictor = ModelPredictor(chat, max_new_tokens=2, generation_kwargs=dict(sequence_bias={(seg, ): 100.0}))
    metrics = evaluate(split, predictor, None, max_samples=2, progress=False)
    assert metrics['num_without_seg'] == 0 and 0 <= metrics['cIoU'] <= 1
    answer = predictor(split.image_path(split.samples[0]), 'Please segment the camera in this image.')
    assert len(answer.masks) == 2 and answer.masks[0].shape == (split.samples[0]['height'],
                                                                  split.samples[0]['width'])


def test_predictor_puts_the_region_at_mark(chat, tmp_path):
    write_region_captions(tmp_path)
    split = load_split('region_caption', str(tmp_path), 'refcocog', 'val', image_folder=str(tmp_path / 'images'))
    predictor = ModelPredictor(chat, max_new_tokens=3)
    answer = predictor.describe_region(split.image_path(split.samples[0]), REGION_CAPTION_PROMPT,
                                       split.region_mask(split.samples[0]))
    assert len(answer.token_ids) <= 3 and isinstance(answer.text, str)
    with pytest.raises(ValueError, match='does not match the image size'):
        predictor.describe_region(split.image_path(split.samples[0]), REGION_CAPTION_PROMPT, np.ones((3, 3), bool))
    metrics = evaluate(split, predictor.describe_region, None, progress=False, java=None)
    assert metrics['num_regions'] == 2 and 'CIDEr' in metrics
    assert MASKS[0].shape == split.region_mask(split.samples[1]).shape
