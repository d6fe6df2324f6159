"""DatasetInfoHook and EvaluateChatHook on the tiny model, a real dataset sample and a real photo.

The hooks are driven the way mmengine's Runner calls them, through a small stand-in exposing what
they read (``model``, ``logger``, ``work_dir``, ``iter``, ``cfg``, ``train_dataloader.dataset``).
"""
from __future__ import annotations

import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from PIL import Image
from skimage import data

from omg_llava.datasets import CombinedDataset, GroundedConversation, OMGDatasetBase
from omg_llava.engine.hooks import DatasetInfoHook, EvaluateChatHook, decode_input_ids
from omg_llava.engine.utils import unwrap_model
from omg_llava.registry import build_component
from omg_llava.utils.conversation import Turn, encode_conversation

from conftest import TINY_CONFIG

CAT = data.chelsea()  # 300 x 451 RGB


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ''
        self.lines.append(record.getMessage() + trace)

    @property
    def text(self) -> str:
        return '\n'.join(self.lines)


class OneCatConversation(OMGDatasetBase):
    """One real training sample: a photo, a [SEG] answer, a <mark> point and a <region> mask."""

    def __init__(self, image_path: str, **kwargs) -> None:
        self.image_path = image_path
        super().__init__(**kwargs)

    def load_records(self) -> list[int]:
        return [0]

    def build_conversation(self, record: int, rng: random.Random) -> GroundedConversation:
        mask = np.zeros(CAT.shape[:2], dtype=bool)
        mask[50:250, 100:350] = True
        turns = [Turn('Please segment the cat next to <mark>.', '<p> cat </p> [SEG]'),
                 Turn('And <region>?', 'A <p> cat </p> [SEG] too.')]
        return GroundedConversation(self.image_path, turns, masks=[mask, mask], regions=[mask],
                                    points=[(200.0, 150.0)])


@pytest.fixture(scope='module')
def tiny_cfg() -> Config:
    return Config.fromfile(str(TINY_CONFIG))


@pytest.fixture(scope='module')
def model(tiny_cfg):
    torch.manual_seed(0)
    return build_component(tiny_cfg.model)


@pytest.fixture(scope='module')
def cat_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('images') / 'chelsea.png'
    Image.fromarray(CAT).save(path)
    return str(path)


@pytest.fixture
def runner(model, tmp_path, request):
    logger = MMLogger.get_instance(f'test_hooks_{request.node.name}', log_level='INFO')
    handler = ListHandler()
    logger.addHandler(handler)
    model.train()
    yield SimpleNamespace(model=torch.nn.DataParallel(model), logger=logger, log=handler,
                          work_dir=str(tmp_path), iter=0, cfg=Config(dict(image_size=256)))
    logger.removeHandler(handler)


def test_dataset_info_logs_size_and_decoded_first_sample(runner, tiny_cfg, cat_path):
    dataset = OneCatConversation(cat_path, tokenizer=tiny_cfg.tokenizer, image_size=256)
    runner.train_dataloader = SimpleNamespace(dataset=dataset)
    DatasetInfoHook().before_train(runner)  # no tokenizer given: the dataset's is used
    text = runner.log.text
    assert 'train dataset: 1 samples (OneCatConversation)' in text
    sample = dataset[0]
    assert (sample['input_ids'] == -200).sum() == 1
    decoded = decode_input_ids(dataset.tokenizer, sample['input_ids'])
    assert decoded in text
    assert decoded.count('<image>') == 1 and decoded.count('[SEG]') == 2
    for token in ('<p>', '</p>', '<mark>', '<region>',
                  '<|im_start|>user\n<image>\nPlease segment the cat'):
        assert token in decoded
    # the same ids as the shared conversation encoder produces
    expected = encode_conversation(dataset.tokenizer,
                                   dataset.build_conversation(0, random.Random(0)).turns)
    assert sample['input_ids'].tolist() == expected.input_ids


def test_dataset_info_finds_the_tokenizer_of_a_mixture_and_accepts_a_config(runner, tiny_cfg,
                                                                            cat_path):
    mixture = CombinedDataset([OneCatConversation(cat_path, tokenizer=tiny_cfg.tokenizer,
                                                  image_size=256)] * 2)
    runner.val_dataloader = SimpleNamespace(dataset=mixture)
    DatasetInfoHook().before_val(runner)
    runner.test_dataloader = SimpleNamespace(dataset=mixture)
    DatasetInfoHook(tokenizer=tiny_cfg.tokenizer).before_test(runner)
    text = runner.log.text
    assert 'val dataset: 2 samples (CombinedDataset)' in text and 'test dataset: 2 samples' in text
    assert text.count('<|im_start|>user\n<image>\nPlease segment the cat next to <mark>') == 2


def test_hooks_are_registered():
    from mmengine.registry import HOOKS as MMENGINE_HOOKS

    from omg_llava.registry import HOOKS
    assert isinstance(MMENGINE_HOOKS.build(dict(type='omg_llava.DatasetInfoHook')), DatasetInfoHook)
    hook = HOOKS.build(dict(type='EvaluateChatHook', evaluation_images='a.png',
                            evaluation_inputs=['q'], every_n_iters=5))
    assert hook.pairs == [('a.png', 'q')]


def test_evaluate_chat_logs_answers_and_writes_overlays(runner, model, cat_path, tmp_path):
    seg = model.token_ids.seg
    hook = EvaluateChatHook(cat_path, ['Please segment the cat.', 'Segment everything.'],
                            every_n_iters=2,
                            max_new_tokens=3,
                            generation_kwargs=dict(sequence_bias={(seg, ): 100.0}))
    assert unwrap_model(runner.model) is model
    rng_state = torch.get_rng_state()
    answers = hook.evaluate(runner, 0)  # what before_train does at iteration 0
    assert torch.equal(torch.get_rng_state(), rng_state)  # training randomness untouched
    assert model.training  # train mode restored
    assert [a.text.count('[SEG]') for a in answers] == [3, 3] and [len(a.masks)
                                                                   for a in answers] == [3, 3]
    assert f'{cat_path} | Please segment the cat.\n{answers[0].text}\n(3 masks)' in runner.log.text
    out = tmp_path / 'eval_chat' / 'iter_0'
    overlay = np.asarray(Image.open(out / 'answer_00.png'))
    union = np.any(answers[0].masks, axis=0)
    changed = (overlay != CAT).any(-1)
    assert overlay.shape == CAT.shape and not changed[~union].any()
    # a colour equal to the pixel leaves it unchanged (rare)
    assert changed.sum() >= 0.9 * union.sum()
    rows = json.loads((out / 'answers.json').read_text())
    assert [r['num_masks'] for r in rows] == [3, 3] and rows[1]['answer'] == answers[1].text

    for it in range(3):  # iterations 1..3 finish; every 2nd evaluates
        runner.iter = it
        hook.after_train_iter(runner, batch_idx=it)
    runner.iter = 3
    hook.after_train(runner)
    assert sorted(p.name for p in (tmp_path / 'eval_chat').iterdir()) == ['iter_0', 'iter_2',
                                                                          'iter_3']
    again = json.loads((tmp_path / 'eval_chat' / 'iter_2' / 'answers.json').read_text())
    assert again == rows  # same weights, same seed: same answers
    hook.after_train(runner)  # the same step twice is evaluated once
    assert runner.log.text.count('[eval chat, iter 3]') == 2


def test_evaluate_chat_logs_failures_and_goes_on(runner, cat_path, tmp_path):
    pairs = [(str(tmp_path / 'missing.png'), 'Describe the image.'),
             (cat_path, 'What is at <mark>?'), (cat_path, 'Describe the image.')]
    hook = EvaluateChatHook([p[0] for p in pairs], [p[1] for p in pairs], every_n_iters=1,
                            max_new_tokens=2)
    hook.before_train(runner)
    answers = hook.evaluate(runner, 7)
    assert answers[:2] == [None, None] and answers[2] is not None
    text = runner.log.text
    assert 'FileNotFoundError: image not found' in text and 'PromptCountError' in text
    assert f'{cat_path} | Describe the image.\n{answers[2].text}' in text
    assert runner.model.module.training


def test_evaluate_chat_without_image_size_logs_the_error(runner, cat_path):
    runner.cfg = Config(dict())
    hook = EvaluateChatHook(cat_path, 'Describe the image.', every_n_iters=1, max_new_tokens=2,
                            save_overlays=False)
    assert hook.evaluate(runner, 0) == [None]
    assert 'no image_size' in runner.log.text and runner.model.module.training


def test_evaluate_chat_checks_its_arguments():
    with pytest.raises(ValueError, match='one image for all questions or one per question'):
        EvaluateChatHook(['a.png', 'b.png'], ['q1', 'q2', 'q3'], every_n_iters=1)
    with pytest.raises(ValueError, match='every_n_iters'):
        EvaluateChatHook('a.png', 'q', every_n_iters=0)
