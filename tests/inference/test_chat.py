"""The public chat API end to end on a real photo with the tiny model, and its input validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from transformers import LogitsProcessorList

from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.models.multimodal_inputs import PromptCountError
from omg_llava.utils.conversation import Turn, encode_conversation

from conftest import TINY_CONFIG

CAT = data.chelsea()  # 300 x 451 RGB


@pytest.fixture(scope='module')
def chat() -> OMGLLaVAChat:
    chat, notes = OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)
    assert any('random' in n for n in notes)  # the tiny config says what is random
    return chat


def test_answer_with_one_mask_per_generated_seg(chat):
    chat.set_image(CAT)
    seg = chat.model.token_ids.seg
    answer = chat.ask('Please segment the cat in this image.', max_new_tokens=3,
                      sequence_bias={(seg, ): 100.0})
    assert answer.token_ids.count(seg) == 3 and len(answer.masks) == 3
    for mask in answer.masks:
        assert mask.shape == CAT.shape[:2] and mask.dtype == bool
    assert answer.text.count('[SEG]') == 3 and '[SEG]' not in answer.clean_text
    assert len(chat.history) == 1 and chat.history[0].answer == answer.text


def test_phrases_are_parsed_from_the_answer(chat):
    chat.set_image(CAT)
    ids = chat.tokenizer.encode('<p> cat </p> [SEG]', add_special_tokens=False)

    # steer decoding through the phrase (a random model would not)
    def force_phrase(generated, scores):
        forced = torch.full_like(scores, -float('inf'))
        forced[:, ids[generated.shape[1]]] = 0.0
        return forced

    answer = chat.ask('Please segment the cat in this image.', max_new_tokens=len(ids),
                      logits_processor=LogitsProcessorList([force_phrase]))
    assert answer.token_ids[:len(ids)] == ids
    assert answer.phrases == ['cat'] and len(answer.masks) == 1


def _forcing(ids):
    """A logits processor that makes generation emit ``ids`` (a random model would not)."""
    def force(generated, scores):
        forced = torch.full_like(scores, -float('inf'))
        forced[:, ids[min(generated.shape[1], len(ids) - 1)]] = 0.0
        return forced
    return LogitsProcessorList([force])


def _recording_prompts(chat, monkeypatch) -> list[list[int]]:
    prompts, generate = [], chat.model.generate
    monkeypatch.setattr(chat.model, 'generate',
                        lambda input_ids, **kw: prompts.append(input_ids[0].tolist())
                        or generate(input_ids, **kw))
    return prompts


def test_later_turns_see_exactly_the_generated_ids(chat, monkeypatch):
    chat.set_image(CAT)
    tok = chat.tokenizer
    p, p_end, seg, at, im_end = tok.convert_tokens_to_ids(['<p>', '</p>', '[SEG]', 'at',
                                                           '<|im_end|>'])
    # 'at' without the word-start mark: decoded as '<p> at </p> [SEG]', it re-tokenises into '▁at',
    # not 'at'
    generated = [p, at, p_end, seg, im_end]
    prompts = _recording_prompts(chat, monkeypatch)
    q1, q2, q3 = 'Please segment the cat in this image.', 'What is it doing?', 'And then?'
    first = chat.ask(q1, max_new_tokens=8, logits_processor=_forcing(generated))
    assert first.token_ids == generated and first.text == '<p> at </p> [SEG]'
    # cut by max_new_tokens
    second = chat.ask(q2, max_new_tokens=2, logits_processor=_forcing([at, at]))
    chat.ask(q3, max_new_tokens=1)
    turn1, turn2, turn3 = prompts

    # turn 2 = turn-1 prompt + the turn-1 ids as generated (closing <|im_end|> included) + the
    # template's separator and next prompt, as encode_conversation lays them out after a first
    # answer
    layout = encode_conversation(tok, [Turn(q1, 'x'), Turn(q2)], with_image=True)
    after_answer = layout.input_ids[max(i for i, label in enumerate(layout.labels)
                                        if label != -100) + 1:]
    assert turn2 == turn1 + generated + after_answer
    # BOS once (the reference drops it)
    assert turn2[0] == tok.bos_token_id and turn2.count(tok.bos_token_id) == 1
    # what the history held before (the decoded text, re-tokenised) is not what the model produced
    retokenised = encode_conversation(tok, [Turn(q1, first.text), Turn(q2)],
                                      with_image=True).input_ids
    assert retokenised[len(turn1):len(turn1) + 3] == [p, tok.convert_tokens_to_ids('▁at'), p_end]

    # an answer cut by max_new_tokens is closed by the template's suffix (encode('<|im_end|>'))
    assert second.token_ids == [at, at]
    suffix = encode_conversation(tok, [Turn(q2, '')], with_image=False).labels
    suffix = [i for i in suffix if i != -100]
    assert turn3[:len(turn2) + 2 + len(suffix)] == turn2 + [at, at] + suffix
    assert turn3.count(tok.bos_token_id) == 1 and len(chat.history) == 3


def test_visual_prompts_across_turns(chat):
    chat.set_image(CAT)
    chat.ask('What is at <mark>?', points=[(200, 120)], max_new_tokens=2)
    region = np.zeros(CAT.shape[:2], dtype=bool)
    region[50:150, 100:300] = True
    chat.ask('Compare <region> with <region>.', regions=[(10, 20, 200, 280), region],
             max_new_tokens=2)
    # the history still holds 1 <mark> and 2 <region>: prompts are kept
    chat.ask('And now?', max_new_tokens=2)
    assert len(chat.history) == 3
    chat.reset()
    assert chat.history == []
    chat.ask('Describe the image.', max_new_tokens=2)  # the image survives a reset


def test_bad_visual_prompts_are_refused(chat):
    chat.set_image(CAT)
    with pytest.raises(PromptCountError, match='holds 1 <region> but 2 regions'):
        chat.ask('What is <region>?', regions=[(0, 0, 10, 10), (5, 5, 20, 20)])
    with pytest.raises(PromptCountError, match='holds 0 <mark> but 1 points'):
        chat.ask('What is this?', points=[(3, 3)])
    with pytest.raises(ValueError, match=r'outside the 451x300 image'):
        chat.ask('What is at <mark>?', points=[(451, 10)])
    with pytest.raises(ValueError, match='outside'):
        chat.ask('What is <region>?', regions=[(10, 10, 500, 100)])
    with pytest.raises(ValueError, match='image size'):
        chat.ask('What is <region>?', regions=[np.ones((10, 10), dtype=bool)])
    assert chat.history == []  # nothing half-done was recorded


def test_text_only_conversation(chat):
    chat.set_image(None)
    answer = chat.ask('Hello, who are you?', max_new_tokens=3)
    assert answer.masks == []
    with pytest.raises(PromptCountError, match='no image'):
        chat.ask('What is at <mark>?', points=[(1, 1)])


def test_unreadable_image(tmp_path, chat):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not an image')
    with pytest.raises(ValueError, match='cannot read'):
        chat.set_image(bad)
    with pytest.raises(FileNotFoundError):
        chat.set_image(tmp_path / 'missing.png')


@pytest.mark.parametrize('points, regions',
                         [([(float('nan'), 10.0)], []), ([(5.0, float('inf'))], []),
                                             ([], [(10.0, 10.0, float('nan'), 50.0)])])
def test_non_finite_coordinates_are_refused(chat, points, regions):
    chat.set_image(CAT)
    question = '<mark>?' if points else '<region>?'
    with pytest.raises(ValueError, match='is not a finite number'):
        chat.ask(question, points=points, regions=regions, max_new_tokens=1)
    assert chat.history == []


@pytest.mark.parametrize('question, message',
                         [('', 'the question is empty'), (' \n\t', 'the question is empty'),
                                               ('caf\udce9?', 'invalid character at position 3')])
def test_empty_and_undecodable_questions_are_refused(chat, question, message):
    chat.set_image(CAT)
    with pytest.raises(ValueError, match=message):
        chat.ask(question, max_new_tokens=1)
    assert chat.history == []


def test_float_image_arrays_read_like_their_uint8_and_bad_arrays_are_refused(chat):
    chat.set_image(CAT)
    as_bytes = chat._conversation.encoded
    chat.set_image(CAT / 255.0)
    as_floats = chat._conversation.encoded
    assert all(torch.equal(a, b)
               for a, b in zip(as_bytes.visual_sequences, as_floats.visual_sequences))
    assert chat._conversation.geometry.original_size == CAT.shape[:2]
    with pytest.raises(ValueError, match='must be uint8'):
        chat.set_image(CAT.astype(np.int64))
    with pytest.raises(ValueError, match=r'values in \[0, 1\]'):
        chat.set_image(CAT.astype(np.float32))
