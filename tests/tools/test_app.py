"""The Gradio demo served for real on localhost with the tiny model and driven through
gradio_client, its callbacks called directly (prompt life cycle, drag, interactive segmentation),
its rendering helpers (mask colours, answer colouring, overlays, escaped prompt syntax) and the
command line's checks before the model build. The in-browser walk-through (Enter, drag, screenshots)
is tools/app_screenshots.py."""
from __future__ import annotations

import json
import re
import socket

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from skimage import data
from transformers import LogitsProcessorList

from omg_llava.checkpoint import CheckpointError
from omg_llava.inference import app_ui
from omg_llava.inference.app_callbacks import (BOX_MODE, NO_IMAGE, POINT_MODE, SEGMENT_MODE,
                                               ChatApp, parse_prompts)
from omg_llava.inference.app_render import (PALETTE, answer_to_html, mask_contrast, mask_outline,
                                            overlay_masks, pick_mask_colours, text_colour)
from omg_llava.inference.app_ui import build_demo, launch_demo
from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.segmentation.segmenter import UniversalSegmenter

from conftest import TINY_CONFIG, free_port, load_tool

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
def app(chat, forced_phrase) -> ChatApp:
    return ChatApp(chat, max_new_tokens=forced_phrase[0], generation_kwargs=forced_phrase[1])


@pytest.fixture(scope='module')
def client(chat, forced_phrase, tmp_path_factory):
    max_new_tokens, generation_kwargs = forced_phrase
    demo = build_demo(chat, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    launch_demo(demo, port=free_port(), prevent_thread_lock=True)
    try:
        yield Client(demo.local_url, verbose=False,
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


def _chip_colours(answer_html: str) -> list[tuple[int, ...]]:
    return [tuple(map(int, c))
            for c in re.findall(r'background-color: rgb\((\d+), (\d+), (\d+)\)', answer_html)]


def _skipped(value) -> bool:
    return value == gr.skip()  # an update that changes nothing


# ------------------------------------------------------------------------------- the served app
def test_ask_colours_the_phrase_and_its_mask_alike(client, cat_file):
    answer, overlay = client.predict(handle_file(cat_file), 'Please segment the cat in this image.',
                                     '[]', '[]', False, api_name='/ask')
    assert 'data-mask="0"' in answer and '>cat</span>' in answer and '[SEG]' not in answer
    overlay = _read(overlay)
    assert overlay.shape == CAT.shape  # cropped to the original image, not the padded square
    mask = (overlay != CAT).any(-1)
    assert mask.any()
    (colour,) = _chip_colours(answer)
    # outline in the chip's colour
    assert colour in PALETTE and (overlay[mask_outline(mask, 2)] == colour).all()
    assert [colour] == pick_mask_colours(CAT, [mask])


def test_click_then_ask_with_a_point(client, cat_file):
    points, boxes, view, hint = client.predict(handle_file(cat_file), '[]', '[]', 'point', 200, 120,
                                               api_name='/click')
    assert (json.loads(points) == [[200, 120]] and boxes == '[]' and 'Point 1' in hint
            and '`<mark>`' in hint)
    view = _read(view)
    assert view.shape == CAT.shape and (view[120, 200] != CAT[120, 200]).any()  # the point is drawn
    answer, overlay = client.predict(handle_file(cat_file), 'What is <mark> doing?', points, boxes,
                                     False, api_name='/ask')
    assert 'omg-error' not in answer and 'cat' in answer and _read(overlay).shape == CAT.shape


def test_two_clicks_make_a_box_then_ask_with_it(client, cat_file):
    points, boxes, _, hint = client.predict(handle_file(cat_file), '[]', '[]', 'box', 300, 250,
                                            api_name='/click')
    assert boxes == '[]' and 'opposite corner' in hint
    points, boxes, view, hint = client.predict(handle_file(cat_file), points, boxes, 'box', 100, 40,
                                               api_name='/click')
    assert json.loads(boxes) == [[100, 40, 300, 250]] and 'Box 1' in hint  # corners ordered
    view = _read(view)
    # outline only
    assert (view[40, 150] != CAT[40, 150]).any() and (view[150, 200] == CAT[150, 200]).all()
    answer, _ = client.predict(handle_file(cat_file), 'Describe <region>.', points, boxes, True,
                               api_name='/ask')
    assert 'omg-error' not in answer and 'cat' in answer


def test_segment_endpoint_needs_no_question(client, cat_file):
    answer, overlay = client.predict(handle_file(cat_file), '[[200, 120]]', '[[100, 40, 300, 250]]',
                                     api_name='/segment')
    assert 'OMG-Seg masks' in answer and '>point 1</span>' in answer and '>box 1</span>' in answer
    assert len(set(_chip_colours(answer))) == 2 and _read(overlay).shape == CAT.shape


def test_errors_are_shown_not_raised(client, cat_file):
    answer, overlay = client.predict(handle_file(cat_file), 'What is <region>?', '[]', '[]', False,
                                     api_name='/ask')
    assert ('omg-error' in answer and 'holds 1 &lt;region&gt; but 0 regions' in answer
            and overlay is None)
    answer, _ = client.predict(handle_file(cat_file), 'What is this?', '[[1, 2]]', '[]', False,
                               api_name='/ask')
    assert 'holds 0 &lt;mark&gt; but 1 points' in answer
    answer, _ = client.predict(handle_file(cat_file), 'What is <mark>?', '[[1, 2', '[]', False,
                               api_name='/ask')
    assert 'points must be JSON' in answer
    answer, _ = client.predict(handle_file(cat_file), 'What is <mark>?', '[[999, 2]]', '[]', False,
                               api_name='/ask')
    assert 'outside the 451x300 image' in answer
    answer, overlay = client.predict(None, 'Hello, who are you?', '[]', '[]', False,
                                     api_name='/ask')
    assert 'upload an image first' in answer and 'cat' not in answer and overlay is None


def test_api_descriptions_are_plain_text(client):
    endpoints = client.view_api(print_info=False, return_format='dict')['named_endpoints']
    assert set(endpoints) == {'/ask', '/click', '/segment'}
    for info in endpoints.values():
        assert (info['description'] and '``' not in info['description']
                and ':meth:' not in info['description'])


# ------------------------------------------------------------------------------- callbacks
def test_prompts_go_with_the_question_that_used_them(app):
    session, answer, _ = app.ask(None, CAT, 'What is <mark> doing?', '[[200, 120]]', '[]', False)
    assert 'omg-error' not in answer and session.used_prompts
    points, boxes, view, hint, pending = app.after_ask(session, CAT)
    assert ((points, boxes, pending) == ('[]', '[]', None) and (view == CAT).all()
            and 'went with' in hint)
    # the next plain question
    session, answer, _ = app.ask(session, CAT, 'What is this?', points, boxes, False)
    assert 'omg-error' not in answer and not session.used_prompts
    assert all(_skipped(v) for v in app.after_ask(session, CAT))  # nothing to clear
    # an error keeps them
    session, answer, _ = app.ask(session, CAT, 'What is this?', '[[1, 2]]', '[]', False)
    assert 'omg-error' in answer and all(_skipped(v) for v in app.after_ask(session, CAT))


def test_no_image_and_a_new_image(app):
    _, answer, overlay = app.ask(None, None, 'What is this?', '[]', '[]', False)
    assert NO_IMAGE in answer and overlay is None
    answer, overlay = app.segment(None, '[[1, 2]]', '[]')
    assert NO_IMAGE in answer and overlay is None
    points, boxes, view, hint, pending, answer, overlay = app.new_image(CAT)
    assert (points, boxes, pending, answer, overlay) == ('[]', '[]', None, '', None) and view is CAT
    assert 'drag a box' in hint


def test_follow_up_keeps_the_history_and_a_new_image_restarts(chat, app):
    session, _, _ = app.ask(None, CAT, 'Please segment the cat.', '[]', '[]', False)
    session, _, _ = app.ask(session, CAT, 'And again?', '[]', '[]', True)
    assert len(session.chat.history) == 2
    session, _, _ = app.ask(session, CAT, 'Once more.', '[]', '[]', False)
    assert len(session.chat.history) == 1
    session, _, _ = app.ask(session, CAT[:, ::-1].copy(), 'A new image.', '[]', '[]', True)
    assert [t.question for t in session.chat.history] == ['A new image.']
    assert session.chat.model is chat.model and session.chat is not chat  # per-session conversation


def test_drag_adds_a_box_in_any_mode(app):
    for mode in (POINT_MODE, BOX_MODE, SEGMENT_MODE):
        points, boxes, view, hint, pending = app.drag(CAT, '[[5, 6]]', '[]', mode,
                                                      '[300, 250, 100, 40]', [1, 2])
        assert json.loads(boxes) == [[100, 40, 300, 250]] and json.loads(points) == [[5, 6]]
        # a half-drawn box is dropped
        assert pending is None and 'Box 1' in hint and view.shape == CAT.shape
    *_, hint, pending = app.drag(CAT, '[]', '[]', BOX_MODE, '[10, 10, 10, 50]', None)
    assert 'no area' in hint
    assert app.drag(None, '[]', '[]', BOX_MODE, '[1, 2, 3, 4]')[3] == 'Upload an image first.'
    *_, hint, _ = app.click(CAT, '[["<mark>", 2]]', '[]', POINT_MODE, 1, 2)
    # the Markdown hint shows it as text
    assert 'Fix the prompt JSON first' in hint and '&lt;mark&gt;' in hint


def test_segment_gives_the_segmenter_masks_in_contrasting_colours(app, chat):
    points, boxes = [[200, 120], [30, 250]], [[100, 40, 300, 250]]
    answer, overlay = app.segment(CAT, json.dumps(points), json.dumps(boxes))
    reference = UniversalSegmenter(chat.model.visual_encoder, input_side=chat.image_size)
    masks = list(reference.interactive(CAT, points=points, boxes=boxes).numpy())
    colours = pick_mask_colours(CAT, masks)
    assert _chip_colours(answer) == colours and (overlay == overlay_masks(CAT, masks,
                                                                          colours)).all()
    for label, mask in zip(['point 1', 'point 2', 'box 1'], masks):
        assert f'>{label}</span> {int(mask.sum())} pixels' in answer
    # inside the padding
    assert 'lies outside the 451x300 image' in app.segment(CAT, '[[500, 10]]', '[]')[0]
    assert 'click on the image' in app.segment(CAT, '[]', '[]')[0]
    assert all(_skipped(v) for v in app.segment_in_mode(CAT, '[[1, 2]]', '[]', POINT_MODE))
    # switching to it
    assert all(_skipped(v) for v in app.segment_in_mode(CAT, '[]', '[]', SEGMENT_MODE))
    assert app.segment_in_mode(CAT, '[[200, 120]]', '[]', SEGMENT_MODE)[0].count('omg-phrase') == 1


# ------------------------------------------------------------------------------- rendering
def test_mask_colours_contrast_with_the_pixels_under_them():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:10], image[10:] = (255, 140, 0), (128, 128, 128)  # orange above grey
    orange, grey = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    orange[:10], grey[10:] = True, True
    first, second = pick_mask_colours(image, [orange, grey])
    assert first != second
    red, blue = (242, 24, 24), (24, 24, 242)
    # not the old fixed red
    assert mask_contrast(image, orange, first) > mask_contrast(image, orange, red)
    assert (sorted(PALETTE, key=lambda c: -mask_contrast(image, orange, c)).index(first) <= 2
            and first[2] > first[0])
    # one round, no repeats
    assert len(set(pick_mask_colours(image, [orange] * len(PALETTE)))) == len(PALETTE)
    # a blue object left of a yellow one: the yellow one's mask is not painted blue
    image[:, :10] = blue
    image[:, 10:] = (242, 242, 24)
    yellow = np.zeros((20, 20), bool)
    yellow[:, 10:] = True
    assert max(PALETTE, key=lambda c: mask_contrast(image, yellow, c)) == blue
    (colour,) = pick_mask_colours(image, [yellow])
    assert colour != blue and mask_contrast(image, yellow, colour) > 100
    assert text_colour(blue) == (255, 255, 255) and text_colour((242, 242, 24)) == (0, 0, 0)


def test_overlay_blends_and_outlines_each_mask():
    image = np.full((12, 12, 3), 100, dtype=np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    out = overlay_masks(image, [mask], [(200, 0, 50)])
    # 2-pixel outline
    assert (out[2, 2:10] == (200, 0, 50)).all() and (out[3, 3] == (200, 0, 50)).all()
    assert (out[5, 5] == np.round(0.4 * 100 + 0.6 * np.array([200, 0, 50]))).all()  # blended inside
    assert (out[~mask] == 100).all()


def test_answer_html_uses_the_mask_colours():
    colours = [(24, 24, 242), (242, 242, 24), (24, 242, 24)]
    html = answer_to_html('The <p> cat </p> [SEG] sits on <p>a sofa</p> [SEG].\nAlso <p>a '
                          'wall</p>, and <p>a <b>tag</b></p> [SEG]<|im_end|>', colours)
    spans = html.split('<span')[1:]
    assert len(spans) == 3 and _chip_colours(html) == colours
    for index, (span, phrase) in enumerate(zip(spans,
                                               ['cat', 'a sofa', 'a &lt;b&gt;tag&lt;/b&gt;'])):
        assert f'data-mask="{index}"' in span and f'>{phrase}</span>' in span
    assert 'color: rgb(255, 255, 255)' in spans[0] and 'color: rgb(0, 0, 0)' in spans[1]
    # a phrase without its own [SEG] is not coloured
    assert '<b class="omg-phrase">a wall</b>' in html
    assert '[SEG]' not in html and 'im_end' not in html and 'sofa</span>.<br>Also' in html


def test_parse_prompts():
    assert parse_prompts('', 2, 'points') == [] and parse_prompts('[[1, 2.5]]', 2,
                                                                  'points') == [[1.0, 2.5]]
    assert parse_prompts('[[30, 40, 10, 20]]', 4, 'boxes') == [[10.0, 20.0, 30.0, 40.0]]
    for bad in ('[1, 2]', '[[1, 2, 3]]', '[["a", 2]]', '{"x": 1}'):
        with pytest.raises(ValueError, match='list of 2-number lists'):
            parse_prompts(bad, 2, 'points')
    # json.loads accepts these
    for bad in ('[[NaN, 2]]', '[[1, Infinity]]', '[[0, 0, -Infinity, 4]]'):
        with pytest.raises(ValueError, match='finite numbers'):
            parse_prompts(bad, 4 if bad.count(',') == 3 else 2, 'prompts')


def test_prompt_syntax_is_shown_as_text(chat):
    """Markdown passes <mark> through as an HTML tag: every prompt token of the intro is in a code
    span."""
    outside_code = re.sub(r'`[^`]*`', '', app_ui.INTRO)
    assert '<' not in outside_code and '`<mark>`' in app_ui.INTRO and '`<region>`' in app_ui.INTRO
    demo = build_demo(chat)
    markdown = [b for b in demo.blocks.values() if type(b).__name__ == 'Markdown']
    assert markdown[0].value == app_ui.INTRO
    question = next(b for b in demo.blocks.values() if type(b).__name__ == 'Textbox'
                    and b.label.startswith('Q'))
    # Gradio: Enter submits, Shift+Enter a new line
    assert question.lines == 1 and question.max_lines > 1
    ids = {b.elem_id for b in demo.blocks.values()}
    assert {'omg-prompt-view', 'omg-drag-box', 'omg-drag-button'} <= ids
    assert all(f'#{i}' in app_ui.DRAG_JS
               for i in ('omg-prompt-view', 'omg-drag-box', 'omg-drag-button'))
    # runs
    assert app_ui.DRAG_JS.strip().startswith('(() =>') and app_ui.DRAG_JS.strip().endswith('})();')


def test_default_example_is_offered(chat):
    from omg_llava.inference.defaults import DEFAULT_IMAGE, DEFAULT_PROMPT
    demo = build_demo(chat, examples=[(DEFAULT_IMAGE, DEFAULT_PROMPT)])
    # what gr.Examples shows
    datasets = [b for b in demo.blocks.values() if type(b).__name__ == 'Dataset']
    assert len(datasets) == 1 and DEFAULT_PROMPT in str(datasets[0].samples)
    assert not [b for b in build_demo(chat).blocks.values() if type(b).__name__ == 'Dataset']


# ------------------------------------------------------------------------------- the command line
def test_cli_builds_the_chat_and_serves_locally(chat, monkeypatch):
    calls = {}
    monkeypatch.setattr(OMGLLaVAChat, 'from_config',
                        classmethod(lambda cls, path, **kw: calls.update(config=path, **kw)
                                    or (chat, ['random'])))
    monkeypatch.setattr(app_ui, 'launch_demo', lambda demo, **kw: calls.update(launch=kw))
    port = free_port()
    assert load_tool('app').main(['--port', str(port), '--max-new-tokens', '8']) == 0
    assert (calls['config'] == 'configs/tiny/omg_llava_tiny_synthetic_finetune.py'
            and calls['weights_only'])
    # the trained default
    assert calls['pth'].endswith('omg_llava/assets/tiny_synthetic/omg_llava_tiny_synthetic.pth')
    assert calls['launch'] == dict(host='127.0.0.1', port=port, share=False)


def _refuse_to_build(monkeypatch):
    def build(cls, *args, **kwargs):
        raise AssertionError('the model was built before the command line was checked')
    monkeypatch.setattr(OMGLLaVAChat, 'from_config', classmethod(build))


def test_cli_busy_port_is_one_error_line_before_the_model(monkeypatch, capsys):
    _refuse_to_build(monkeypatch)
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert load_tool('app').main(['--port', str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('error: ') and 'address already in use' in err
    assert f'--port {port + 1}' in err


@pytest.mark.parametrize('argv, message', [
    (['--pth', 'no/such/file.pth'], '--pth file not found: no/such/file.pth'),
    (['configs/no_such_config.py'], 'config file not found'),
    (['--device', 'gpu0'], "--device 'gpu0' is not a torch device"),
    (['--max-new-tokens', '0'], '--max-new-tokens must be at least 1'),
])
def test_cli_bad_arguments_are_one_error_line_before_the_model(argv, message, monkeypatch, capsys):
    _refuse_to_build(monkeypatch)
    try:
        status = load_tool('app').main(argv + ['--port', str(free_port())])
    # argparse's own one-line usage error ('app.py: error: argument config: ...')
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'error: ' in err and message in err


def test_cli_bad_checkpoint_is_one_error_line(tmp_path, monkeypatch, capsys):
    _refuse_to_build(monkeypatch)
    bad = tmp_path / 'notes.pth'
    bad.write_text('not a checkpoint')
    truncated = tmp_path / 'truncated.pth'
    torch.save({'w': torch.zeros(64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    expected = {bad: f'error: --pth {bad} is a text file (a config or a list given in place of '
                     'the weights?), not a weight file: give the .pth / .bin / .safetensors file',
                truncated: f'error: --pth {truncated} is truncated or corrupt (a truncated zip '
                           'file (its directory at the end is missing): an interrupted download '
                           'or copy?): download or copy it again'}
    for path, message in expected.items():
        assert load_tool('app').main(['--pth', str(path), '--port', str(free_port())]) == 2
        assert capsys.readouterr().err.strip() == message


def test_cli_checkpoint_the_loader_refuses_is_one_error_line(tmp_path, monkeypatch, capsys):
    wrong = tmp_path / 'wrong.pth'
    torch.save({'w': torch.zeros(4)}, wrong)

    def build(cls, path, pth=None, **kwargs):
        raise CheckpointError(f'{pth}: 0 of 46 keys loaded, e.g. missing projector.model.0.weight')
    monkeypatch.setattr(OMGLLaVAChat, 'from_config', classmethod(build))
    assert load_tool('app').main(['--pth', str(wrong), '--port', str(free_port())]) == 2
    assert capsys.readouterr().err == (f'error: {wrong}: 0 of 46 keys loaded, e.g. missing '
                                       'projector.model.0.weight\n')
