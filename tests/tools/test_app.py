"""The Gradio demo served for real on localhost with the tiny model, driven through gradio_client, and its
rendering helpers (answer colouring, mask overlay, prompt parsing)."""
from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from skimage import data
from transformers import LogitsProcessorList

from omg_llava.inference import app_ui
from omg_llava.inference.app_ui import (ChatApp, answer_to_html, build_demo, highlight_colour, launch_demo,
                                        mask_colour, overlay_masks, parse_prompts)
from omg_llava.inference.chat import OMGLLaVAChat

from conftest import TINY_CONFIG, load_tool

CAT = data.chelsea()  # 300 x 451 RGB
PHRASE = '<p> cat </p> [SEG]'


@pytest.fixture(scope='module')
def chat() -> OMGLLaVAChat:
    return OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)[0]


@pytest.fixture(scope='module')
def forced_phrase(chat) -> tuple[int, dict]:
    """Generation settings that make the random tiny model answer ``<p> cat </p> [SEG]``."""
    ids = chat.tokenizer.encode(PHRASE, add_special_tokens=False)

    def force(generated, scores):
        forced = torch.full_like(scores, -float('inf'))
        forced[:, ids[generated.shape[1]]] = 0.0
        return forced

    return len(ids), dict(logits_processor=LogitsProcessorList([force]))


@pytest.fixture(scope='module')
def client(chat, forced_phrase, tmp_path_factory):
    max_new_tokens, generation_kwargs = forced_phrase
    demo = build_demo(chat, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    launch_demo(demo, port=port, prevent_thread_lock=True)
    try:
        yield Client(f'http://127.0.0.1:{port}/', verbose=False,
                     download_files=str(tmp_path_factory.mktemp('downloads')))
    finally:
        demo.close()


@pytest.fixture(scope='module')
def cat_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('images') / 'chelsea.png'
    Image.fromarray(CAT).save(path)
    return str(path)


def _read(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


# ------------------------------------------------------------------------------- the served app
def test_ask_returns_coloured_answer_and_overlay(client, cat_file):
    answer, overlay = client.predict(handle_file(cat_file), 'Please segment the cat in this image.', '[]', '[]',
                                     False, api_name='/ask')
    assert 'data-mask="0"' in answer and f'rgb{highlight_colour(0)}' in answer and '>cat</span>' in answer
    assert '[SEG]' not in answer and '&lt;p&gt;' not in answer
    overlay = _read(overlay)
    assert overlay.shape == CAT.shape  # cropped to the original image, not the padded square
    changed = (overlay != CAT).any(-1)
    blended = np.round(0.5 * CAT.astype(float) + 0.5 * np.array(mask_colour(0))).astype(np.uint8)
    assert changed.any() and (overlay[changed] == blended[changed]).all()  # only mask 0's colour was painted


def test_click_then_ask_with_a_point(client, cat_file):
    points, boxes, view, hint = client.predict(handle_file(cat_file), '[]', '[]', 'point', 200, 120,
                                               api_name='/click')
    assert json.loads(points) == [[200, 120]] and boxes == '[]' and 'Point 1' in hint
    view = _read(view)
    assert view.shape == CAT.shape and (view[120, 200] != CAT[120, 200]).any()  # the point is drawn
    answer, overlay = client.predict(handle_file(cat_file), 'What is <mark> doing?', points, boxes, False,
                                     api_name='/ask')
    assert 'omg-error' not in answer and 'cat' in answer and _read(overlay).shape == CAT.shape


def test_two_clicks_make_a_box_then_ask_with_it(client, cat_file):
    points, boxes, _, hint = client.predict(handle_file(cat_file), '[]', '[]', 'box', 300, 250, api_name='/click')
    assert boxes == '[]' and 'opposite corner' in hint
    points, boxes, view, hint = client.predict(handle_file(cat_file), points, boxes, 'box', 100, 40,
                                               api_name='/click')
    assert json.loads(boxes) == [[100, 40, 300, 250]] and 'Box 1' in hint  # corners ordered
    view = _read(view)
    assert (view[40, 150] != CAT[40, 150]).any() and (view[150, 200] == CAT[150, 200]).all()  # outline only
    answer, _ = client.predict(handle_file(cat_file), 'Describe <region>.', points, boxes, True, api_name='/ask')
    assert 'omg-error' not in answer and 'cat' in answer


def test_prompt_count_mismatch_is_shown_not_raised(client, cat_file):
    answer, overlay = client.predict(handle_file(cat_file), 'What is <region>?', '[]', '[]', False,
                                     api_name='/ask')
    assert 'omg-error' in answer and 'holds 1 &lt;region&gt; but 0 regions' in answer and overlay is None
    answer, _ = client.predict(handle_file(cat_file), 'What is this?', '[[1, 2]]', '[]', False, api_name='/ask')
    assert 'holds 0 &lt;mark&gt; but 1 points' in answer
    answer, _ = client.predict(handle_file(cat_file), 'What is <mark>?', '[[1, 2', '[]', False, api_name='/ask')
    assert 'points must be JSON' in answer
    answer, _ = client.predict(handle_file(cat_file), 'What is <mark>?', '[[999, 2]]', '[]', False, api_name='/ask')
    assert 'outside the 451x300 image' in answer


def test_text_only_question(client):
    answer, overlay = client.predict(None, 'Hello, who are you?', '[]', '[]', False, api_name='/ask')
    assert 'cat' in answer and overlay is None


# ------------------------------------------------------------------------------- callbacks and helpers
def test_follow_up_keeps_the_history_and_a_new_image_restarts(chat, forced_phrase):
    app = ChatApp(chat, max_new_tokens=forced_phrase[0], generation_kwargs=forced_phrase[1])
    session, _, _ = app.ask(None, CAT, 'Please segment the cat.', '[]', '[]', False)
    session, _, _ = app.ask(session, CAT, 'And again?', '[]', '[]', True)
    assert len(session.chat.history) == 2
    session, _, _ = app.ask(session, CAT, 'Once more.', '[]', '[]', False)
    assert len(session.chat.history) == 1
    session, _, _ = app.ask(session, CAT[:, ::-1].copy(), 'A new image.', '[]', '[]', True)
    assert [t.question for t in session.chat.history] == ['A new image.']
    assert session.chat.model is chat.model and session.chat is not chat  # per-session conversation


def test_answer_to_html_colours_each_phrase_like_its_mask():
    html = answer_to_html('The <p> cat </p> [SEG] sits on <p>a sofa</p> [SEG].\nAlso <p>a wall</p>, and '
                          '<p>a <b>tag</b></p> [SEG]<|im_end|>')
    spans = html.split('<span')[1:]
    assert len(spans) == 3
    for index, (span, phrase) in enumerate(zip(spans, ['cat', 'a sofa', 'a &lt;b&gt;tag&lt;/b&gt;'])):
        assert f'data-mask="{index}"' in span and f'rgb{highlight_colour(index)}' in span
        assert f'>{phrase}</span>' in span
    assert '<b class="omg-phrase">a wall</b>' in html  # a phrase without its own [SEG] is not coloured
    assert '[SEG]' not in html and 'im_end' not in html and 'sofa</span>.<br>Also' in html
    assert highlight_colour(19) == highlight_colour(0) != highlight_colour(1)


def test_overlay_paints_each_mask_in_its_colour():
    image = np.full((4, 5, 3), 100, dtype=np.uint8)
    first, second = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    first[0, :2], second[3, 4] = True, True
    out = overlay_masks(image, [first, second])
    assert (out[0, 0] == np.round((100 + np.array(mask_colour(0))) / 2)).all()
    assert (out[3, 4] == np.round((100 + np.array(mask_colour(1))) / 2)).all()
    assert (out[1:3] == 100).all()


def test_parse_prompts():
    assert parse_prompts('', 2, 'points') == [] and parse_prompts('[[1, 2.5]]', 2, 'points') == [[1.0, 2.5]]
    assert parse_prompts('[[30, 40, 10, 20]]', 4, 'boxes') == [[10.0, 20.0, 30.0, 40.0]]
    for bad in ('[1, 2]', '[[1, 2, 3]]', '[["a", 2]]', '{"x": 1}'):
        with pytest.raises(ValueError, match='list of 2-number lists'):
            parse_prompts(bad, 2, 'points')


def test_cli_builds_the_chat_and_serves_locally(chat, monkeypatch):
    calls = {}
    monkeypatch.setattr(OMGLLaVAChat, 'from_config',
                        classmethod(lambda cls, path, **kw: calls.update(config=path, **kw) or (chat, ['random'])))
    monkeypatch.setattr(app_ui, 'launch_demo', lambda demo, **kw: calls.update(launch=kw))
    assert load_tool('app').main(['--port', '7999', '--max-new-tokens', '8']) == 0
    assert calls['config'] == 'configs/tiny/omg_llava_tiny_synthetic_finetune.py' and calls['weights_only']
    assert calls['pth'].endswith('omg_llava/assets/tiny_synthetic/omg_llava_tiny_synthetic.pth')  # the trained default
    assert calls['launch'] == dict(host='127.0.0.1', port=7999, share=False)


def test_default_example_is_offered(chat):
    from omg_llava.inference.defaults import DEFAULT_IMAGE, DEFAULT_PROMPT
    demo = app_ui.build_demo(chat, examples=[(DEFAULT_IMAGE, DEFAULT_PROMPT)])
    datasets = [b for b in demo.blocks.values() if type(b).__name__ == 'Dataset']  # what gr.Examples shows
    assert len(datasets) == 1 and DEFAULT_PROMPT in str(datasets[0].samples)
    assert not [b for b in app_ui.build_demo(chat).blocks.values() if type(b).__name__ == 'Dataset']
