"""``encoder_dtype='bf16'`` (``--encoder-dtype bf16``): the trained built-in model's answers and
masks agree with the reference's fp32 encoder within bf16 rounding; fp32 stays the default."""
import numpy as np
import pytest
import torch

from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.defaults import (DEFAULT_CONFIG, DEFAULT_IMAGE, DEFAULT_PROMPT,
                                          checkpoint_for)
from omg_llava.inference.model_builder import estimate_memory

QUESTIONS = (DEFAULT_PROMPT, 'Please segment the smallest shape in this image.')


@pytest.fixture(scope='module')
def answers():
    results = {}
    for encoder_dtype in ('fp32', 'bf16'):
        chat, notes = OMGLLaVAChat.from_config(DEFAULT_CONFIG,
                                               pth=checkpoint_for(DEFAULT_CONFIG, None),
                                               dtype='bf16', encoder_dtype=encoder_dtype)
        assert next(chat.model.visual_encoder.parameters()).dtype == getattr(
            torch, {'fp32': 'float32', 'bf16': 'bfloat16'}[encoder_dtype]
        )
        assert any('visual encoder: bf16' in n for n in notes) == (encoder_dtype == 'bf16')
        chat.set_image(str(DEFAULT_IMAGE))
        results[encoder_dtype] = [chat.ask(q, max_new_tokens=24) for q in QUESTIONS]
        for _ in QUESTIONS[1:]:
            chat.reset()
    return results


def test_bf16_encoder_gives_the_same_answers_and_masks(answers):
    for full, half in zip(answers['fp32'], answers['bf16']):
        assert half.text == full.text
        assert len(half.masks) == len(full.masks) >= 1
        for a, b in zip(full.masks, half.masks):
            a, b = np.asarray(a, bool), np.asarray(b, bool)
            iou = (a & b).sum() / max((a | b).sum(), 1)
            assert iou > 0.95, iou


def test_memory_estimate_counts_the_encoder_dtype():
    full = estimate_memory(DEFAULT_CONFIG, 'bf16')
    half = estimate_memory(DEFAULT_CONFIG, 'bf16', encoder_dtype='bf16')
    assert full.encoder_bytes == 2 * half.encoder_bytes > 0
