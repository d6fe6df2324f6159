"""The Gradio demo's callbacks: asking, adding prompts by click or drag, interactive segmentation.

Every method takes and returns plain values (arrays, JSON strings, HTML), so tests call them
directly and the page and the named API endpoints share them. Prompt state lives in the page: two
JSON text boxes (points ``[[x, y], …]`` and boxes ``[[x1, y1, x2, y2], …]`` in original-image
pixels) and a pending box corner. Prompts belong to one question: after a question that was answered
they are cleared.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import gradio as gr
import numpy as np

from .app_render import (answer_to_html, draw_prompts, error_html, masks_html, overlay_masks,
                         pick_mask_colours)
from .chat import OMGLLaVAChat

POINT_MODE, BOX_MODE, SEGMENT_MODE = 'point', 'box', 'segment'
EMPTY_PROMPTS = '[]'
NO_IMAGE = 'upload an image first.'


# -------------------------------------------------------------------------------------- prompt JSON
def parse_prompts(text: str | None, size: int, what: str) -> list[list[float]]:
    """A JSON list of ``size``-number lists (points: 2, boxes: 4) → list; ``''`` is empty. Box
    corners are ordered (x1 <= x2, y1 <= y2).

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
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)
            for item in value):
        raise ValueError(f'{what} must be a list of {size}-number lists such as {example}, got '
                         f'{text!r}')
    items = [[float(v) for v in item] for item in value]
    if not all(math.isfinite(v) for item in items for v in item):
        raise ValueError(f'{what} must hold finite numbers (no NaN or Infinity), got {text!r}')
    if size == 4:
        items = [[min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)] for x1, y1, x2, y2 in items]
    return items


def dump_prompts(items: Sequence[Sequence[float]]) -> str:
    """The JSON of :func:`parse_prompts`, whole numbers without ``.0``."""
    return json.dumps([[round(v) if float(v).is_integer() else v for v in item] for item in items])


def check_inside(points: Sequence[Sequence[float]], boxes: Sequence[Sequence[float]], width: int,
                 height: int) -> None:
    """Raise ``ValueError`` for a point outside [0, W) x [0, H) or an empty box or one leaving the
    image."""
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f'the point ({x:g}, {y:g}) lies outside the {width}x{height} image')
    for x1, y1, x2, y2 in boxes:
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height or x2 <= x1 or y2 <= y1:
            raise ValueError(f'the box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty or leaves the '
                             f'{width}x{height} '
                             'image')


# ---------------------------------------------------------------------------------------- callbacks
@dataclass
class AppSession:
    """One browser (or API client) session: its own conversation, the key of the image it encoded
    and whether the last question was answered using prompts (then they are cleared)."""

    chat: OMGLLaVAChat
    image_key: str | None = None
    started: bool = False
    used_prompts: bool = False


def image_key(image: np.ndarray | None) -> str | None:
    """A content key of an image array (``None`` for no image)."""
    if image is None:
        return None
    return f'{image.shape}:{hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()}'


class ChatApp:
    """The demo's callbacks around one model.

    Args:
        chat: a chat built with :meth:`OMGLLaVAChat.from_config`; each session gets its own
            conversation on the same model.
        max_new_tokens: answer length limit (reference app: 256).
        generation_kwargs: more keyword arguments for :meth:`OMGLLaVAChat.ask` (``temperature``,
            ``sequence_bias``, …).
    """

    def __init__(self, chat: OMGLLaVAChat, *, max_new_tokens: int = 256,
                 generation_kwargs: dict[str, Any] | None = None) -> None:
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = dict(generation_kwargs or {})
        self._model_lock = threading.Lock()  # one model call at a time on the shared model
        self._segmenter = None
        # (image key, ImageOutput) of the last segmented image
        self._encoded: tuple[str, Any] | None = None

    # ------------------------------------------------------------------ asking
    def ask(self, session: AppSession | None, image: np.ndarray | None, question: str,
            points_json: str, boxes_json: str,
            follow_up: bool) -> tuple[AppSession, str, np.ndarray | None]:
        """Answer ``question`` about ``image``; ``follow_up`` keeps the history (a new image always
        starts a new conversation).

        Returns:
            ``(session, answer_html, overlay)``: overlay is the image with the answer's masks;
            ``None`` after an error (then ``answer_html`` holds the message).
            ``session.used_prompts`` says whether an answered question used points or boxes.
        """
        if session is None:
            session = AppSession(OMGLLaVAChat(self.chat.model, self.chat.image_size))
        session.used_prompts = False
        if image is None:
            return session, error_html(NO_IMAGE), None
        if not question or not question.strip():
            return session, error_html('write a question first.'), None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
            with self._model_lock:
                key = image_key(image)
                if not session.started or key != session.image_key:
                    session.chat.set_image(image)
                    session.image_key, session.started = key, True
                elif not follow_up:
                    session.chat.reset()
                answer = session.chat.ask(question.strip(), points=points, regions=boxes,
                                          max_new_tokens=self.max_new_tokens,
                                          **self.generation_kwargs)
        except ValueError as exc:  # PromptCountError, PromptTooLongError, bad coordinates or JSON
            return session, error_html(str(exc)), None
        session.used_prompts = bool(points or boxes)
        colours = pick_mask_colours(image, answer.masks)
        return session, answer_to_html(answer.text, colours), overlay_masks(image, answer.masks,
                                                                            colours)

    def after_ask(self, session: AppSession | None, image: np.ndarray | None):
        """After :meth:`ask`: clear the prompts an answered question used (:meth:`clear`'s outputs);
        change nothing after an error, so the prompts can be fixed, or after a question without
        prompts."""
        if session is None or not session.used_prompts:
            return (gr.skip(),) * 5
        points_json, boxes_json, view, _, pending = self.clear(image)
        return (points_json, boxes_json, view,
                'The prompts went with that question; click to add new ones.', pending)

    # ------------------------------------------------------------------ prompts
    def click(self, image: np.ndarray | None, points_json: str, boxes_json: str, mode: str,
              x: float, y: float, pending: list[float] | None = None
              ) -> tuple[str, str, np.ndarray | None, str, list[float] | None]:
        """A click at (x, y) on the prompt view: a box corner in box mode, else a point.

        Returns:
            ``(points_json, boxes_json, prompt_view, hint, pending_corner)``.
        """
        if image is None:
            return points_json, boxes_json, None, 'Upload an image first.', None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
        except ValueError as exc:
            return (points_json, boxes_json, gr.skip(),
                    f'Fix the prompt JSON first: {html.escape(str(exc))}', pending)
        if mode == BOX_MODE and pending is None:
            pending = [x, y]
            hint = (f'Box corner at ({x:g}, {y:g}): click the opposite corner (or drag a box '
                    'instead).')
        elif mode == BOX_MODE:
            boxes.append(parse_prompts(json.dumps([pending + [x, y]]), 4, 'boxes')[0])
            pending = None
            hint = _added_hint('box', len(boxes), mode)
        else:
            points.append([x, y])
            hint = _added_hint('point', len(points), mode)
        return (dump_prompts(points), dump_prompts(boxes),
                draw_prompts(image, points, boxes, pending), hint, pending)

    def drag(self, image: np.ndarray | None, points_json: str, boxes_json: str, mode: str,
             drag_json: str, pending: list[float] | None = None
             ) -> tuple[str, str, np.ndarray | None, str, list[float] | None]:
        """A rectangle dragged on the prompt view, ``drag_json`` = ``[x1, y1, x2, y2]`` (image
        pixels, corners in any order): a box, in any mode; a half-drawn two-click box is dropped.
        Outputs as :meth:`click`."""
        if image is None:
            return points_json, boxes_json, None, 'Upload an image first.', None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
            box = parse_prompts(f'[{drag_json}]', 4, 'the dragged box')[0]
        except ValueError as exc:
            return (points_json, boxes_json, gr.skip(),
                    f'Fix the prompt JSON first: {html.escape(str(exc))}', pending)
        if box[2] <= box[0] or box[3] <= box[1]:
            return (points_json, boxes_json, gr.skip(), 'That box has no area: drag further.',
                    pending)
        boxes.append(box)
        hint = _added_hint('box', len(boxes), mode)
        return (dump_prompts(points), dump_prompts(boxes), draw_prompts(image, points, boxes),
                hint, None)

    def redraw(self, image: np.ndarray | None, points_json: str, boxes_json: str,
               pending: list[float] | None = None) -> tuple[np.ndarray | None, str]:
        """The prompt view after the JSON boxes were edited by hand: ``(prompt_view, hint)``."""
        if image is None:
            return None, ''
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
        except ValueError as exc:
            return gr.skip(), html.escape(str(exc))  # the hint is Markdown
        return draw_prompts(image, points, boxes, pending), ''

    def clear(self, image: np.ndarray | None) -> tuple[str, str, np.ndarray | None, str, None]:
        """Forget all prompts: ``(points_json, boxes_json, prompt_view, hint, pending_corner)``."""
        hint = '' if image is None else 'Click on the image to add a prompt, or drag a box.'
        return EMPTY_PROMPTS, EMPTY_PROMPTS, image, hint, None

    def new_image(self, image: np.ndarray | None
                  ) -> tuple[str, str, np.ndarray | None, str, None, str, None]:
        """A new (or removed) image: :meth:`clear`'s outputs, then an empty answer and no
        overlay."""
        return (*self.clear(image), '', None)

    # ------------------------------------------------------------------ interactive segmentation
    @property
    def segmenter(self):
        """OMG-Seg alone on the chat model's visual encoder (same weights, built on first use)."""
        if self._segmenter is None:
            from omg_llava.segmentation.segmenter import UniversalSegmenter
            self._segmenter = UniversalSegmenter(self.chat.model.visual_encoder,
                                                 input_side=self.chat.image_size)
        return self._segmenter

    def segment(self, image: np.ndarray | None, points_json: str,
                boxes_json: str) -> tuple[str, np.ndarray | None]:
        """One mask per prompt (points, then boxes) from the OMG-Seg head alone, no question and no
        LLM.

        Returns:
            ``(answer_html, overlay)``: the masks listed with their colours and areas, and painted
            on the image; an error message and ``None`` without an image or prompts.
        """
        if image is None:
            return error_html(NO_IMAGE), None
        try:
            points = parse_prompts(points_json, 2, 'points')
            boxes = parse_prompts(boxes_json, 4, 'boxes')
            check_inside(points, boxes, image.shape[1], image.shape[0])
        except ValueError as exc:
            return error_html(str(exc)), None
        if not points and not boxes:
            return (error_html('click on the image (a point) or drag a box to segment something.'),
                    None)
        with self._model_lock:
            key = image_key(image)
            if self._encoded is None or self._encoded[0] != key:
                self._encoded = (key, self.segmenter.encode(image))
            masks = self.segmenter.interactive(self._encoded[1], points=points, boxes=boxes)
        masks = list(masks.cpu().numpy())  # (N, H, W) bool → N arrays
        labels = ([f'point {k}' for k in range(1, len(points) + 1)]
                  + [f'box {k}' for k in range(1, len(boxes) + 1)])
        colours = pick_mask_colours(image, masks)
        return masks_html(labels, colours, masks), overlay_masks(image, masks, colours)

    def segment_in_mode(self, image: np.ndarray | None, points_json: str, boxes_json: str,
                        mode: str):
        """:meth:`segment` in segment mode (after a click, a drag or switching to it) when there are
        an image and prompts; nothing otherwise."""
        if mode != SEGMENT_MODE or image is None or points_json.strip() in ('', EMPTY_PROMPTS) and \
                boxes_json.strip() in ('', EMPTY_PROMPTS):
            return gr.skip(), gr.skip()
        return self.segment(image, points_json, boxes_json)


def _added_hint(kind: str, number: int, mode: str) -> str:
    if mode == SEGMENT_MODE:
        return f'{kind.capitalize()} {number} added; its mask is shown under **Masks**.'
    token = '<mark>' if kind == 'point' else '<region>'
    return (f'{kind.capitalize()} {number} added: write `{token}` for it (the k-th `{token}` is '
            f'{kind} k).')
