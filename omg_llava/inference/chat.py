"""The public inference API: a conversation about one image, answered with text and masks.

    chat = OMGLLaVAChat.from_config('configs/omg_llava_7b_finetune_8gpus.py',
                                    pth='omg_llava_7b_finetune_8gpus.pth')
    chat.set_image('photo.jpg')                      # encoded once per conversation
    answer = chat.ask('Please segment the cat in this image.')
    answer.text, answer.phrases, answer.masks  # masks: one (H, W) bool array per generated [SEG]
    chat.ask('What is <mark> doing?', points=[(120, 80)])   # <mark> ← point, <region> ← box or mask

Coordinates and masks are in original-image pixels; the padding/resizing of spec §1.1 is applied
here and undone for the output masks (spec §10.19). Later turns see each earlier answer as the ids
the model generated (not its decoded text re-tokenised), with BOS once at the very start
(docs/reference_differences.md).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from omg_llava.models.generation import KVCache
from omg_llava.models.multimodal_inputs import PromptCountError
from omg_llava.models.omg_llava import EncodedImages, OMGLLaVA
from omg_llava.models.visual_prompts import VisualPrompt
from omg_llava.utils.constants import IGNORE_INDEX, MARK_TOKEN, REGION_TOKEN
from omg_llava.utils.conversation import Turn, encode_conversation
from omg_llava.utils.allocator import release_free_memory

from .image_io import SquareGeometry, load_image, preprocess_image, to_rgb_image

PHRASE_PATTERN = re.compile(r'<p>(.*?)</p>', re.S)
TAG_PATTERN = re.compile(r'<\|im_end\|>|</?p>|\[SEG\]|</s>')

# Reference chat defaults (spec §9.1): greedy unless a temperature > 0 is given.
DEFAULT_MAX_NEW_TOKENS = 512


@dataclass
class ChatAnswer:
    """One answer.

    Attributes:
        text: the decoded answer with its markup (``<p> … </p> [SEG]``), stop token removed.
        clean_text: ``text`` without tags, whitespace collapsed.
        phrases: the texts inside ``<p> … </p>``, in order.
        masks: one (H, W) bool array per generated ``[SEG]`` at the original image size.
        token_ids: the generated ids.
    """

    text: str
    clean_text: str
    phrases: list[str]
    masks: list[np.ndarray]
    token_ids: list[int]


@dataclass
class _Conversation:
    image: Image.Image | None = None
    geometry: SquareGeometry | None = None
    encoded: EncodedImages | None = None
    turns: list[Turn] = field(default_factory=list)
    # the generated ids of each answer in turns
    answer_ids: list[list[int]] = field(default_factory=list)
    region_prompts: list[VisualPrompt] = field(default_factory=list)
    mark_prompts: list[VisualPrompt] = field(default_factory=list)
    kv_cache: KVCache = field(default_factory=KVCache)  # a follow-up prefills only its new tokens


class OMGLLaVAChat:
    """Multi-turn chat about one image with an :class:`~omg_llava.models.OMGLLaVA` and its
    tokenizer.

    Args:
        model: the model (eval mode), with ``model.tokenizer``.
        image_size: side of the square network input (1024 for the released models).
    """

    def __init__(self, model: OMGLLaVA, image_size: int) -> None:
        if model.tokenizer is None:
            raise ValueError('the chat needs the model built with its tokenizer (config '
                             '`tokenizer=`)')
        self.model = model
        self.tokenizer = model.tokenizer
        self.image_size = image_size
        self._conversation = _Conversation()

    @classmethod
    def from_config(cls, config_path: str, **build_kwargs) -> tuple['OMGLLaVAChat', list[str]]:
        """Build the model of a config (see :func:`omg_llava.inference.model_builder.build_model`
        for the keyword arguments: ``pth``, ``device``, ``dtype``, ``seed``, ``weights_only``,
        encoder files). ``config_path`` is a path or a built-in config's name
        (``'omg_llava_7b_finetune_8gpus'``, ``'configs/tiny/...'``), found from any working
        directory (:func:`omg_llava.config_paths.find_config`)."""
        from omg_llava.config_paths import find_config

        from .model_builder import build_model
        model, cfg, notes = build_model(find_config(config_path), **build_kwargs)
        return cls(model, int(cfg.get('image_size', 1024))), notes

    @property
    def device(self) -> torch.device:
        return next(self.model.projector.parameters()).device

    # ------------------------------------------------------------------ conversation state
    def set_image(self, image: str | os.PathLike | Image.Image | np.ndarray | None) -> None:
        """Start a new conversation about ``image`` (``None`` for a text-only conversation). The
        image is encoded once here.

        Args:
            image: a path (read upright, :func:`~omg_llava.inference.image_io.load_image`), a PIL
                image or an array: ``uint8`` or float in [0, 1], (H, W) or (H, W, 3) (see
                :func:`~omg_llava.inference.image_io.to_rgb_image`).

        Raises:
            ValueError: an unreadable file, another array type or range, an image over the size
                limits.
        """
        self._conversation = _Conversation()
        if image is None:
            return
        image = load_image(image) if isinstance(image, (str, os.PathLike)) else to_rgb_image(image)
        pixels, geometry = preprocess_image(image, self.image_size)
        with torch.no_grad():
            encoded = self.model.encode_images(pixels[None].to(self.device))
        encoded = replace(encoded,
                          encoder_output=encoded.encoder_output.without_intermediates())
        release_free_memory()  # the encoder's activations (~1 GB at 1024²) go back to the system
        self._conversation = _Conversation(image=image, geometry=geometry, encoded=encoded)

    def reset(self) -> None:
        """Forget the history, keep the image."""
        conv = self._conversation
        self._conversation = _Conversation(image=conv.image, geometry=conv.geometry,
                                           encoded=conv.encoded)

    @property
    def history(self) -> list[Turn]:
        return list(self._conversation.turns)

    # ------------------------------------------------------------------ asking
    def ask(self, question: str, *, points: Sequence[Sequence[float]] = (),
            regions: Sequence[Sequence[float] | np.ndarray] = (),
            max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
            temperature: float = 0.0, top_p: float = 0.75, top_k: int = 40,
            repetition_penalty: float = 1.0, streamer=None, **generation_kwargs) -> ChatAnswer:
        """Answer ``question`` given the history.

        Args:
            question: the text; each ``<mark>`` takes the next of ``points`` and each ``<region>``
                the next of ``regions``, in order.
            points: (x, y) in original-image pixels.
            regions: boxes (x1, y1, x2, y2) in original-image pixels or (H, W) binary masks of the
                image size.
            max_new_tokens / temperature / top_p / top_k / repetition_penalty: decoding (sampling
                iff temperature > 0; the reference chat samples with T=0.1, top-p 0.75, top-k 40).
            streamer: a transformers streamer (e.g. ``TextStreamer``) for live output.
            generation_kwargs: ``sequence_bias`` or ``logits_processor`` (see
                :class:`~omg_llava.models.generation.DecodingOptions`).

        Raises:
            PromptCountError: the numbers of ``<mark>`` / ``<region>`` and of prompts differ, or
                prompts are given without an image.
            ValueError: a point or box lies outside the image, a mask has the wrong size.
            PromptTooLongError: the conversation no longer fits; call :meth:`reset`.
            ValueError: an empty question or one holding text that is not valid Unicode.
        """
        check_question(question)
        conv = self._conversation
        marks = self._point_prompts(question, points)
        region_prompts = self._region_prompts(question, regions)
        input_ids = torch.tensor([self._prompt_ids(question)], device=self.device)
        sampling = (dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
                    if temperature > 0 else dict(do_sample=False))
        output = self.model.generate(input_ids, images=conv.encoded,
                                     region_prompts=conv.region_prompts + region_prompts,
                                     mark_prompts=conv.mark_prompts + marks,
                                     max_new_tokens=max_new_tokens,
                                     repetition_penalty=repetition_penalty, streamer=streamer,
                                     kv_cache=conv.kv_cache, **sampling, **generation_kwargs)[0]
        ids = output.token_ids.tolist()
        text = self.tokenizer.decode([i for i in ids if i not in self.model.stop_token_ids],
                                     skip_special_tokens=False).strip()
        masks = []
        if len(output.mask_logits) and conv.geometry is not None:
            masks = [m.cpu().numpy()
                     for m in conv.geometry.logits_to_original(output.mask_logits) > 0]
        conv.turns.append(Turn(question, text))
        conv.answer_ids.append(ids)
        conv.region_prompts += region_prompts
        conv.mark_prompts += marks
        return ChatAnswer(text, ' '.join(TAG_PATTERN.sub(' ', text).split()),
                          [p.strip() for p in PHRASE_PATTERN.findall(text)], masks, ids)

    def _prompt_ids(self, question: str) -> list[int]:
        """Input ids of the history plus ``question``, every earlier answer as exactly the ids
        generated for it.

        Decoding puts spaces around ``<p>``, ``</p>`` and ``[SEG]``, and re-tokenising decoded text
        can split it into other pieces than the model produced. So the history is encoded with empty
        answers, which leaves only the template's answer suffix (``<|im_end|>``) in each answered
        turn's supervised span, and each span becomes the ids generated for that turn: as generated
        when they end with the suffix's last id (the model closed its answer itself), else without
        their stop id and followed by the suffix (stopped by EOS or by ``max_new_tokens``).
        Template, BOS (once, at the very start) and the ``<image>`` rules stay those of
        :func:`~omg_llava.utils.conversation.encode_conversation`.
        """
        conv = self._conversation
        turns = [Turn(turn.question, '') for turn in conv.turns] + [Turn(question)]
        encoded = encode_conversation(self.tokenizer, turns, with_image=conv.encoded is not None)
        spans = _supervised_spans(encoded.labels)
        if len(spans) != len(conv.answer_ids):
            raise ValueError(f'the chat template gives {len(spans)} answer spans for '
                             f'{len(conv.answer_ids)} answers; use a template with an answer '
                             'suffix (internlm2_chat)')
        ids = encoded.input_ids
        for (start, end), generated in reversed(list(zip(spans, conv.answer_ids))):
            suffix = ids[start:end]
            if not generated or generated[-1] != suffix[-1]:
                generated = [i for i in generated if i not in self.model.stop_token_ids] + suffix
            ids = ids[:start] + generated + ids[end:]
        return ids

    # ------------------------------------------------------------------ visual prompts
    def _require_image(self, what: str) -> SquareGeometry:
        if self._conversation.geometry is None:
            raise PromptCountError(f'{what} given but the conversation has no image; call '
                                   'set_image() first')
        return self._conversation.geometry

    def _point_prompts(self, question: str,
                       points: Sequence[Sequence[float]]) -> list[VisualPrompt]:
        _check_count(question, MARK_TOKEN, len(points), 'points')
        if not points:
            return []
        geometry = self._require_image('point prompts')
        if any(len(p) != 2 for p in points):
            raise ValueError(f'points are (x, y) pairs, got {points}')
        xy = torch.tensor([list(map(float, p)) for p in points])
        _check_inside(xy, geometry, 'point')
        return [VisualPrompt('point', p) for p in geometry.points_to_input(xy).to(self.device)]

    def _region_prompts(self, question: str, regions: Sequence) -> list[VisualPrompt]:
        _check_count(question, REGION_TOKEN, len(regions), 'regions')
        if not len(regions):
            return []
        geometry = self._require_image('region prompts')
        prompts = []
        for region in regions:
            array = np.asarray(region)
            if array.ndim == 2:
                if tuple(array.shape) != geometry.original_size:
                    raise ValueError('a region mask must have the image size '
                                     f'{geometry.original_size} (H, W), got {array.shape}')
                mask = geometry.masks_to_input(torch.from_numpy(array > 0)[None])[0]
                prompts.append(VisualPrompt('mask', mask.to(self.device)))
            elif array.shape == (4, ):
                box = torch.tensor(array, dtype=torch.float)
                _check_inside(box.view(2, 2), geometry, 'box corner', inclusive_end=True)
                prompts.append(VisualPrompt('box',
                                            geometry.boxes_to_input(box[None])[0].to(self.device)))
            else:
                raise ValueError('a region is a box (x1, y1, x2, y2) or an (H, W) mask, got shape '
                                 f'{array.shape}')
        return prompts


def _supervised_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, end)`` of each run of supervised (not ``IGNORE_INDEX``) labels, in order."""
    spans, start = [], None
    for i, label in enumerate(list(labels) + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _check_count(question: str, token: str, given: int, what: str) -> None:
    needed = question.count(token)
    if needed != given:
        raise PromptCountError(f'the question holds {needed} {token} but {given} {what} were '
                               f'given: put one {token} in the text for each of the {what}, in the '
                               'same order')


def check_question(question: str) -> None:
    """Raise ``ValueError`` for a question that is not text, is empty or whitespace only, or holds
    lone surrogates (undecodable bytes that Python kept as ``\\udcXX``; the tokenizer cannot encode
    them)."""
    if not isinstance(question, str):
        raise ValueError(f'the question must be text, got {type(question).__name__}')
    if not question.strip():
        raise ValueError('the question is empty: ask something, e.g. "Please segment the cat in '
                         'this image."')
    bad = next((i for i, c in enumerate(question) if '\ud800' <= c <= '\udfff'), None)
    if bad is not None:
        raise ValueError(f'the question holds an invalid character at position {bad} '
                         f'({question[bad]!r}: a byte '
                         'that was not UTF-8?): give the text as UTF-8')


def _check_inside(xy: torch.Tensor, geometry: SquareGeometry, what: str,
                  inclusive_end: bool = False) -> None:
    if not torch.isfinite(xy).all():
        raise ValueError(f'{what} {xy.tolist()} is not a finite number: give pixel coordinates (x '
                         'from the left, y from the top)')
    H, W = geometry.original_size
    x, y = xy[:, 0], xy[:, 1]
    beyond = (x > W) | (y > H) if inclusive_end else (x >= W) | (y >= H)
    bad = (x < 0) | (y < 0) | beyond
    if bad.any():
        raise ValueError(f'{what} {xy[bad].tolist()} lies outside the {W}x{H} image; give '
                         'original-image pixel coordinates (x from the left, y from the top)')
