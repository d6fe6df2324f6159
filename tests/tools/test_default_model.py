"""The built-in default: the committed tiny synthetic model segments what it is asked for, on the
demo image (`make demo`'s command) and on freshly generated held-out images."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_project_module, load_tool
from omg_llava.assets import TINY_SYNTHETIC_ENCODER, TINY_SYNTHETIC_PTH
from omg_llava.evaluation.runner import ModelPredictor, evaluate
from omg_llava.evaluation.splits import load_split
from omg_llava.inference import defaults
from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.chat_outputs import decode_rle

#: held-out cIoU the committed model must keep on the first 40 val expressions (it scores 0.79
#: there; 0.78 on the whole val split, docs/tiny_model.md; the previous defaults scored 0.70, 0.75,
#: 0.73, 0.66, 0.60, 0.54, 0.57, 0.59 and 0.32 there). The untrained pipeline never answers [SEG]
#: (cIoU 0).
MIN_HELD_OUT_CIOU = 0.6
#: prompt_qa.py on the first 10 held-out images, one-prompt wordings (120 questions): the committed
#: model scores 0.90-0.97 per wording and attribute and gives two differing prompted objects
#: different answers in 88% of cases (0.91-0.94 and 62% over the 50-image split with two-prompt
#: questions included, docs/tiny_model.md); the previous default 0.04-0.58 and 3%
PROMPT_QA_IMAGES = 10
MIN_ONE_PROMPT_ACCURACY = 0.75
MIN_DISTINCT_ANSWERS = 0.7


@pytest.fixture(scope='module')
def shapes():
    return load_project_module('synthetic_shapes')


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_committed_files_are_small_and_named_by_the_config():
    import os
    sizes = {k: os.path.getsize(p)
             for k, p in dict(TINY_SYNTHETIC_ENCODER, pth=TINY_SYNTHETIC_PTH).items()}
    assert sum(sizes.values()) < 12 * 2 ** 20, sizes
    assert defaults.checkpoint_for(defaults.DEFAULT_CONFIG, None) == TINY_SYNTHETIC_PTH
    assert defaults.checkpoint_for('configs/tiny/omg_llava_tiny_finetune.py', None) is None
    assert defaults.checkpoint_for(defaults.DEFAULT_CONFIG, 'mine.pth') == 'mine.pth'


def test_make_demo_command_segments_the_largest_shape(shapes, tmp_path, capsys):
    code = load_tool('chat').main(['--prompt', defaults.DEFAULT_PROMPT, '--out-dir', str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    record = json.loads((tmp_path / 'answer.json').read_text())
    assert record['text'].count('[SEG]') == 1 and len(record['masks']) == 1, record['text']
    scene = shapes.sample_scene(np.random.default_rng([0, 1, defaults.DEMO_VAL_INDEX]), 128)
    demo = np.asarray(Image.open(defaults.DEFAULT_IMAGE).convert('RGB')).astype(int)
    # that val image, JPEG-compressed (another one: ~40)
    assert np.abs(demo - scene.image.astype(int)).mean() < 6
    index = next(i for i, sentence in shapes.referring_expressions(scene)
                 if sentence == 'the largest shape')
    assert iou(decode_rle(record['masks'][0]), scene.objects[index].mask) > 0.7


def test_held_out_referring_segmentation(shapes, tmp_path):
    shapes.write_dataset(str(tmp_path), num_train=1, num_val=12, num_test=0)
    chat, _ = OMGLLaVAChat.from_config(defaults.DEFAULT_CONFIG, pth=TINY_SYNTHETIC_PTH)
    split = load_split('refseg', str(tmp_path / 'ref_seg'), 'refcoco', 'val',
                       image_folder=str(tmp_path / 'glamm_data/images/coco2014/train2014'))
    metrics = evaluate(split, ModelPredictor(chat, max_new_tokens=24), None, max_samples=40,
                       progress=False)
    assert metrics['num_expressions'] == 40 and metrics['cIoU'] >= MIN_HELD_OUT_CIOU, metrics


def test_built_in_model_answers_about_its_visual_prompts():
    """Colour and shape questions about a point, a box or a mask on held-out images
    (``prompt_qa.py``), in the inline wording the docs and the app suggest and in the released
    one-prompt templates: the answers follow the prompted object (the previous default scored
    0.13 / 0.04 inline and 0.49 / 0.58 in the templates on the 50-image split, and gave two
    prompted objects the same answer in 97% of cases)."""
    prompt_qa = load_project_module('prompt_qa')
    cases = prompt_qa.make_cases(PROMPT_QA_IMAGES, wordings=('inline', 'template'))
    metrics = prompt_qa.summary(prompt_qa.ask_cases(prompt_qa.build_chat(None), cases))
    assert metrics['num_questions'] == 12 * PROMPT_QA_IMAGES
    for wording, row in metrics['by_wording'].items():
        for attribute, accuracy in row.items():
            assert accuracy >= MIN_ONE_PROMPT_ACCURACY, (wording, attribute, metrics)
    assert metrics['distinct'] >= MIN_DISTINCT_ANSWERS, metrics
