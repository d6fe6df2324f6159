"""The Gradio demo (spec §9.2): ask about an image with point and box prompts, see coloured phrases and masks.

``tools/app.py`` is the command line; everything here is importable so tests can drive it:

* :func:`build_demo` makes the ``gr.Blocks``; :func:`launch_demo` starts it.
* :class:`ChatApp` holds the callbacks. The UI buttons and the named API endpoints call the same methods:
  ``/ask`` (image, question, points JSON, boxes JSON, follow-up flag → answer HTML, overlay image) and
  ``/click`` (image, points JSON, boxes JSON, mode, x, y → points JSON, boxes JSON, prompt view, hint).
* :func:`answer_to_html` and :func:`overlay_masks` render an answer: the i-th ``[SEG]`` mask and the
  ``<p>…</p>`` phrase before it share colour i of :data:`PALETTE`.

Prompts. Gradio 6 has no box tool on a plain image, so boxes are drawn with two clicks: in "box" mode the
first click sets a corner (drawn as a cross), the second the opposite corner. In "point" mode a click adds a
point. The prompt view draws every prompt with its number; the points and boxes also live in two editable
JSON text boxes, in original-image pixels. The question refers to them explicitly: the k-th ``<mark>`` takes
the k-th point and the k-th ``<region>`` the k-th box. A count mismatch is reported in the answer panel.
Unlike the reference app (spec §10.11) both box corners are shifted into the padded square
(:meth:`~omg_llava.inference.image_io.SquareGeometry.boxes_to_input`).
"""
from __future__ import annotations

import colorsys
import hashlib
import html
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .chat import OMGLLaVAChat

POINT_MODE, BOX_MODE = 'point', 'box'
EMPTY_PROMPTS = '[]'


def _palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """``n`` well-separated saturated colours: hues stepped by the golden ratio."""
    colours = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.8, 0.95)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return tuple(colours)


PALETTE = _palette(19)  # 19 colours as in the reference app; mask i gets PALETTE[i % 19]
MARK_COLOUR, REGION_COLOUR = (255, 221, 0), (0, 200, 255)

_ANSWER_PARTS = re.compile(r'<p>(.*?)</p>|\s*\[SEG\]', re.S)
_STRAY_TAGS = re.compile(r'<\|im_end\|>|</s>|</?p>')


# ---------------------------------------------------------------------------------------------- rendering
def mask_colour(index: int) -> tuple[int, int, int]:
    """Overlay colour of the ``index``-th mask."""
    return PALETTE[index % len(PALETTE)]


def highlight_colour(index: int) -> tuple[int, int, int]:
    """Desaturated (half-way to white) colour for the text of the ``index``-th mask's phrase."""
    return tuple((c + 255) // 2 for c in mask_colour(index))


def answer_to_html(text: str) -> str:
    """Answer markup → HTML: ``[SEG]`` removed, each ``<p>…</p>`` phrase a highlighted ``<span>``.

    A phrase takes the colour of the first ``[SEG]`` after it when no other phrase comes first (the
    ``<p> cat </p> [SEG]`` pattern of grounded answers); a phrase without its own ``[SEG]`` is bold only.
    """
    parts: list[tuple[str, str]] = []  # (kind, text) with kind 'text', 'phrase' or 'seg'
    pos = 0
    for match in _ANSWER_PARTS.finditer(text):
        parts.append(('text', text[pos:match.start()]))
        parts.append(('phrase', match.group(1).strip()) if match.group(1) is not None else ('seg', ''))
        pos = match.end()
    parts.append(('text', text[pos:]))
    seg_ordinal = {i: n for n, i in enumerate(i for i, (kind, _) in enumerate(parts) if kind == 'seg')}
    out = []
    for i, (kind, value) in enumerate(parts):
        if kind == 'text':
            out.append(html.escape(_STRAY_TAGS.sub('', value)).replace('\n', '<br>'))
        elif kind == 'phrase':
            following = next((j for j in range(i + 1, len(parts)) if parts[j][0] != 'text'), None)
            if following is not None and parts[following][0] == 'seg':
                colour = seg_ordinal[following]
                out.append(f'<span class="omg-phrase" data-mask="{colour}" style="background-color: '
                           f'rgb{highlight_colour(colour)}; border-bottom: 2px solid rgb{mask_colour(colour)}; '
                           f'padding: 0 2px; border-radius: 3px">{html.escape(value)}</span>')
            else:
                out.append(f'<b class="omg-phrase">{html.escape(value)}</b>')
    return f'<div class="omg-answer" style="line-height: 1.6">{"".join(out).strip()}</div>'


def error_html(message: str) -> str:
    """An error shown in the answer panel."""
    return (f'<div class="omg-error" style="color: #b00020; border: 1px solid #b00020; padding: 6px; '
            f'border-radius: 4px"><b>Cannot answer:</b> {html.escape(message)}</div>')


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend mask i in :func:`mask_colour` (i) over an (H, W, 3) uint8 image; masks are (H, W) bool."""
    out = image.astype(np.float32)  # (H, W, 3)
    for i, mask in enumerate(masks):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(mask_colour(i), dtype=np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def draw_prompts(image: np.ndarray, points: Sequence[Sequence[float]], boxes: Sequence[Sequence[float]],
                 pending_corner: Sequence[float] | None = None) -> np.ndarray:
    """The image with numbered points (``<mark>`` k), boxes (``<region>`` k) and a pending box corner."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=max(12, 6 * width))
    for k, (x1, y1, x2, y2) in enumerate(boxes, 1):
        draw.rectangle((x1, y1, x2, y2), outline=REGION_COLOUR, width=width)
        draw.text((x1 + 2 * width, y1 + width), f'region {k}', fill=REGION_COLOUR, font=font,
                  stroke_width=1, stroke_fill=(0, 0, 0))
    for k, (x, y) in enumerate(points, 1):
        r = 3 * width
        draw.ellipse((x - r, y - r, x + r, y + r), fill=MARK_COLOUR, outline=(0, 0, 0), width=max(1, width // 2))
        draw.text((x + r + 2, y - r), f'mark {k}', fill=MARK_COLOUR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    if pending_corner is not None:
        x, y = pending_corner
        r = 4 * width
        draw.line((x - r, y, x + r, y), fill=REGION_COLOUR, width=width)
        draw.line((x, y - r, x, y + r), fill=REGION_COLOUR, width=width)
    return np.asarray(canvas)


# ---------------------------------------------------------------------------------------------- prompts
def parse_prompts(text: str | None, size: int, what: str) -> list[list[float]]:
    """A JSON list of ``size``-number lists (points: 2, boxes: 4) → list; ``''`` is empty. Box corners are
    ordered (x1 <= x2, y1 <= y2).

    Raises:
        ValueError: not JSON or not a list of ``size`` numbers each.
    """
    example = '[[120, 80]]' if size == 2 else '[[10, 20, 200, 180]]'
    if not text or not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{what} must be JSON such as {example}: {exc}') from exc
    if not isinstance(value, list) or not all(
            isinstance(item, list) and len(item) == size
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item) for item in value):
        raise ValueError(f'{what} must be a list of {size}-number lists such as {example}, got {text!r}')
    items = [[float(v) for v in item] for item in value]
    if size == 4:
        items = [[min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)] for x1, y1, x2, y2 in items]
    return items


def _dump(items: list[list[float]]) -> str:
    return json.dumps([[round(v) if float(v).is_integer() else v for v in item] for item in items])


# ---------------------------------------------------------------------------------------------- callbacks
@dataclass
class AppSession:
    """One browser (or API client) session: its own conversation and the key of the image it encoded."""

    chat: OMGLLaVAChat
    image_key: str | None = None
    started: bool = False


def _image_key(image: np.ndarray | None) -> str | None:
    if image is None:
        return None
    return f'{image.shape}:{hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()}'


class ChatApp:
    """The demo's callbacks around one model.

    Args:
        chat: a chat built with :meth:`OMGLLaVAChat.from_config`; each session gets its own conversation on
            the same model.
        max_new_tokens: answer length limit (reference app: 256).
        generation_kwargs: more keyword arguments for :meth:`OMGLLaVAChat.ask` (``temperature``,
            ``sequence_bias``, …).
    """

    def __init__(self, chat: OMGLLaVAChat, *, max_new_tokens: int = 256,
                 generation_kwargs: dict[str, Any] | None = None) -> None:
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = dict(generation_kwargs or {})
        self._model_lock = threading.Lock()  # one generation at a time on the shared model

    def ask(self, session: AppSession | None, image: np.ndarray | None, question: str, points_json: str,
            boxes_json: str, follow_up: bool) -> tuple[AppSession, str, np.ndarray | None]:
        """Answer ``question`` about ``image``; ``follow_up`` keeps the history (a new image always starts a
        new conversation).

        Returns:
            ``(session, answer_html, overlay)``: overlay is the image with the answer's masks, ``None`` without
            an image or after an error (then ``answer_html`` holds the message).
        """
        if session is None:
            session = AppSession(OMGLLaVAChat(self.chat.model, self.chat.image_size))
        if not question or not question.strip():
            return session, error_html('write a question first.'), None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
            with self._model_lock:
                key = _image_key(image)
                if not session.started or key != session.image_key:
                    session.chat.set_image(image)
                    session.image_key, session.started = key, True
                elif not follow_up:
                    session.chat.reset()
                answer = session.chat.ask(question.strip(), points=points, regions=boxes,
                                          max_new_tokens=self.max_new_tokens, **self.generation_kwargs)
        except ValueError as exc:  # PromptCountError, PromptTooLongError, bad coordinates or JSON
            return session, error_html(str(exc)), None
        overlay = None if image is None else overlay_masks(image, answer.masks)
        return session, answer_to_html(answer.text), overlay

    def click(self, image: np.ndarray | None, points_json: str, boxes_json: str, mode: str, x: float, y: float,
              pending: list[float] | None = None) -> tuple[str, str, np.ndarray | None, str, list[float] | None]:
        """A click at (x, y) on the prompt view: a point, or a box corner in box mode.

        Returns:
            ``(points_json, boxes_json, prompt_view, hint, pending_corner)``.
        """
        if image is None:
            return points_json, boxes_json, None, 'Upload an image first.', None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
        except ValueError as exc:
            return points_json, boxes_json, gr.skip(), f'Fix the prompt JSON first: {exc}', pending
        if mode == BOX_MODE and pending is None:
            pending = [x, y]
            hint = f'Box corner at ({x:g}, {y:g}): click the opposite corner.'
        elif mode == BOX_MODE:
            boxes.append(parse_prompts(json.dumps([pending + [x, y]]), 4, 'boxes')[0])
            pending = None
            hint = f'Box {len(boxes)} added: write `<region>` for it (the k-th `<region>` is box k).'
        else:
            points.append([x, y])
            hint = f'Point {len(points)} added: write `<mark>` for it (the k-th `<mark>` is point k).'
        return _dump(points), _dump(boxes), draw_prompts(image, points, boxes, pending), hint, pending

    def redraw(self, image: np.ndarray | None, points_json: str, boxes_json: str,
               pending: list[float] | None = None) -> tuple[np.ndarray | None, str]:
        """The prompt view after the JSON boxes were edited by hand: ``(prompt_view, hint)``."""
        if image is None:
            return None, ''
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
        except ValueError as exc:
            return gr.skip(), str(exc)
        return draw_prompts(image, points, boxes, pending), ''

    def clear(self, image: np.ndarray | None) -> tuple[str, str, np.ndarray | None, str, None]:
        """Forget all prompts: ``(points_json, boxes_json, prompt_view, hint, pending_corner)``."""
        hint = '' if image is None else 'Click on the image to add a prompt.'
        return EMPTY_PROMPTS, EMPTY_PROMPTS, image, hint, None


# ---------------------------------------------------------------------------------------------- the UI
INTRO = """# OMG-LLaVA
Upload an image, click on it to add prompts, then ask. A **point** is referred to as `<mark>` and a
**box** (two clicks on opposite corners) as `<region>` in the question, in the order they were added:
*What is <mark> doing?*, *Describe <region>.*, *Please segment the cat in this image.*"""


def build_demo(chat: OMGLLaVAChat, *, max_new_tokens: int = 256,
               generation_kwargs: dict[str, Any] | None = None,
               examples: list[tuple[str, str]] | None = None) -> gr.Blocks:
    """The Blocks app (see the module docstring); call :func:`launch_demo` to serve it.

    ``examples``: (image path, question) pairs shown under the question box; a click fills both in."""
    app = ChatApp(chat, max_new_tokens=max_new_tokens, generation_kwargs=generation_kwargs)
    with gr.Blocks(title='OMG-LLaVA', analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        session = gr.State(None)
        pending = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(label='Image', type='numpy', sources=['upload', 'clipboard'], height=220)
                prompt_view = gr.Image(label='Prompts (click to add)', type='numpy', interactive=False,
                                       format='png')
                mode = gr.Radio([('Point → <mark>', POINT_MODE), ('Box → <region> (click two corners)', BOX_MODE)],
                                value=POINT_MODE, label='A click adds')
                hint = gr.Markdown(label='hint')
                with gr.Row():
                    points = gr.Textbox(EMPTY_PROMPTS, label='Points [[x, y], …] (pixels)')
                    boxes = gr.Textbox(EMPTY_PROMPTS, label='Boxes [[x1, y1, x2, y2], …] (pixels)')
                clear = gr.Button('Clear prompts')
            with gr.Column():
                question = gr.Textbox(label='Question', lines=2,
                                      placeholder='Please segment the cat in this image. / What is <mark> doing?')
                follow_up = gr.Checkbox(False, label='Follow up (keep the conversation)')
                ask = gr.Button('Ask', variant='primary')
                answer = gr.HTML(label='Answer')
                overlay = gr.Image(label='Masks', type='numpy', interactive=False, format='png')
        if examples:
            gr.Examples([list(e) for e in examples], inputs=[image, question], label='Examples')
        # the /click endpoint: the same callback as a click on the prompt view, with explicit coordinates
        x, y = gr.Number(label='x', visible=False), gr.Number(label='y', visible=False)
        click_api = gr.Button(visible=False)

        ask_io = dict(fn=app.ask, inputs=[session, image, question, points, boxes, follow_up],
                      outputs=[session, answer, overlay])
        ask.click(**ask_io, api_name='ask')
        question.submit(**ask_io, api_visibility='private')
        click_io = dict(outputs=[points, boxes, prompt_view, hint, pending])
        click_api.click(app.click, [image, points, boxes, mode, x, y, pending], **click_io, api_name='click')

        def on_select(image, points_json, boxes_json, mode, pending, evt: gr.SelectData):
            return app.click(image, points_json, boxes_json, mode, *evt.index, pending)

        prompt_view.select(on_select, [image, points, boxes, mode, pending], **click_io, api_visibility='private')
        clear_io = dict(fn=app.clear, inputs=image, outputs=[points, boxes, prompt_view, hint, pending],
                        api_visibility='private')
        clear.click(**clear_io)
        image.change(**clear_io)
        for box in (points, boxes):
            box.input(app.redraw, [image, points, boxes, pending], [prompt_view, hint], api_visibility='private')
    return demo


def launch_demo(demo: gr.Blocks, *, host: str = '127.0.0.1', port: int = 7860, share: bool = False,
                prevent_thread_lock: bool = False) -> None:
    """Serve ``demo`` (queued, errors shown in the page); ``share`` opens a public gradio.live link."""
    demo.queue().launch(server_name=host, server_port=port, share=share, show_error=True,
                        prevent_thread_lock=prevent_thread_lock, footer_links=['api'])
