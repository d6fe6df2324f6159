"""``encoder_dtype='bf16'`` (``--encoder-dtype bf16``): the trained built-in model's answers and
masks agree with the reference's fp32 encoder within bf16 rounding; ``auto`` (the default) picks
bf16 only for a bf16 model on a CPU."""
import numpy as np
import pytest
import torch

from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.inference.defaults import (DEFAULT_CONFIG, DEFAULT_IMAGE, DEFAULT_PROMPT,
                                          checkpoint_for)
from omg_llava.inference.model_builder import estimate_memory, resolve_encoder_dtype

QUESTIONS = (DEFAULT_PROMPT, 'Please segment the smallest shape in this image.')


@pytest.fixture(scope='module')
def answers():
    results = {}
    for encoder_dtype in ('fp32', 'bf16'):
        chat, notes = OMGLLaVAChat.from_config(DEFAULT_CONFIG,
                                               pth=checkpoint_for(DEFAULT_CONFIG, None),
                                               dtype='bf16', encoder_dtype=encoder_dtype)
        # every weight of each part in its dtype after the checkpoint's in-place loads
        model = chat.model
        wanted = {'fp32': torch.float32, 'bf16': torch.bfloat16}[encoder_dtype]
        assert {p.dtype for p in model.visual_encoder.parameters()} == {wanted}
        for part in (model.projector, model.projector_text2vision, model.llm):
            assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
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


def test_auto_encoder_dtype_is_bf16_only_for_a_bf16_model_on_a_cpu():
    assert resolve_encoder_dtype('auto', 'cpu', 'bf16') == 'bf16'
    assert resolve_encoder_dtype('auto', 'cpu', 'fp32') == 'fp32'
    assert resolve_encoder_dtype('auto', 'cpu', 'fp16') == 'fp32'
    assert resolve_encoder_dtype('auto', 'cuda', 'bf16') == 'fp32'  # the reference's fp32 on GPUs
    assert resolve_encoder_dtype('auto', 'cuda:1', 'fp16') == 'fp32'
    for explicit in ('fp32', 'fp16', 'bf16'):
        assert resolve_encoder_dtype(explicit, 'cpu', 'bf16') == explicit


def test_tools_default_to_the_auto_encoder_dtype():
    import argparse

    from omg_llava.cli_errors import add_precision_options
    parser = argparse.ArgumentParser()
    add_precision_options(parser)
    assert parser.parse_args([]).encoder_dtype == 'auto'
    assert parser.parse_args(['--encoder-dtype', 'fp32']).encoder_dtype == 'fp32'


def test_bf16_encoder_takes_point_box_and_mask_prompts():
    """The prompt queries' positional layer runs under the encoder's autocast too (a float32 point
    encoding met bf16 weights before)."""
    pth = checkpoint_for(DEFAULT_CONFIG, None)
    chats = {d: OMGLLaVAChat.from_config(DEFAULT_CONFIG, pth=pth, dtype='bf16', encoder_dtype=d)[0]
             for d in ('fp32', 'bf16')}
    mask = np.zeros((128, 128), bool)
    mask[35:93, 51:110] = True
    embeds = {}
    for dtype, chat in chats.items():
        chat.set_image(str(DEFAULT_IMAGE))
        answer = chat.ask('There are some regions: region1 <region>, region2 <region>.\n'
                          'What is at <mark>?', regions=[(51, 35, 110, 93), mask],
                          points=[(80, 60)], max_new_tokens=8)
        assert answer.text
        from omg_llava.models.visual_prompts import VisualPrompt
        prompts = [VisualPrompt('box', torch.tensor([51.0, 35.0, 110.0, 93.0])),
                   VisualPrompt('point', torch.tensor([80.0, 60.0])),
                   VisualPrompt('mask', torch.from_numpy(mask))]
        with torch.no_grad():
            embeds[dtype] = chat.model.prompt_embeddings(
                prompts, chat._conversation.encoded).float()
    cosine = torch.nn.functional.cosine_similarity(embeds['fp32'], embeds['bf16'], dim=-1)
    assert (cosine > 0.98).all(), cosine
