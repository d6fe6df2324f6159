"""Chat with the model on fixed (image, question) pairs while it trains (the reference's
``EvaluateChatHook_withSpecialTokens``, spec §8.1): before training, every ``every_n_iters``
iterations and after training. Answers and mask counts go to the log; optionally one overlay PNG per
answer under ``<work_dir>/eval_chat/iter_<n>/``. A failing generation is logged and never stops
training.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from PIL import Image

from omg_llava.inference.chat import ChatAnswer, OMGLLaVAChat
from omg_llava.inference.image_io import load_image
from omg_llava.inference.segmentation import Segment, overlay
from omg_llava.registry import HOOKS

from ..utils import unwrap_model

DEFAULT_OUTPUT_SUBDIR = 'eval_chat'


@HOOKS.register_module()
class EvaluateChatHook(Hook):
    """Generate answers to fixed questions during training.

    Args:
        evaluation_images: one image path for every question, or one path per question (``None``
            entries ask without an image).
        evaluation_inputs: the questions.
        every_n_iters: evaluate after every this many training iterations (also before and after
            training).
        max_new_tokens / temperature / top_p / top_k: decoding, the reference's sampling settings by
        default
            (greedy when ``temperature`` is 0).
        generation_kwargs: further ``generate`` arguments (e.g. ``repetition_penalty``,
            ``sequence_bias``).
        image_size: network input side; default the config's top-level ``image_size``.
        seed: the sampling seed of every evaluation (answers are comparable across iterations, and
            the training random streams are left untouched).
        save_overlays: write one PNG per answer with its masks blended over the image, and
            ``answers.json``.
        save_masks_to: folder of the PNGs (an ``iter_<n>`` subfolder per evaluation); default
            ``<work_dir>/eval_chat``.
    """

    priority = 'LOW'

    def __init__(self, evaluation_images: str | Sequence[str | None] | None,
                 evaluation_inputs: str | Sequence[str],
                 every_n_iters: int, max_new_tokens: int = 600, temperature: float = 0.1,
                 top_p: float = 0.75,
                 top_k: int = 40, generation_kwargs: dict | None = None,
                 image_size: int | None = None, seed: int = 0,
                 save_overlays: bool = True, save_masks_to: str | None = None) -> None:
        questions = ([evaluation_inputs] if isinstance(evaluation_inputs, str)
                     else list(evaluation_inputs))
        if evaluation_images is None or isinstance(evaluation_images, (str, os.PathLike)):
            images = [evaluation_images] * len(questions)
        else:
            images = list(evaluation_images)
            if len(images) == 1:
                images = images * len(questions)
        if not questions or len(images) != len(questions):
            raise ValueError('EvaluateChatHook needs one image for all questions or one per '
                             f'question; got {len(images)} images for {len(questions)} questions')
        if every_n_iters < 1:
            raise ValueError(f'every_n_iters must be at least 1, got {every_n_iters}')
        self.pairs = list(zip(images, questions))
        self.every_n_iters = every_n_iters
        self.decoding = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             top_k=top_k, **(generation_kwargs or {}))
        self.image_size = image_size
        self.seed = seed
        self.save_overlays = save_overlays
        self.save_masks_to = save_masks_to
        self._last_step: int | None = None

    # ------------------------------------------------------------------ runner events
    def before_train(self, runner) -> None:
        self.evaluate(runner, runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        if self.every_n_train_iters(runner, self.every_n_iters):
            self.evaluate(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        self.evaluate(runner, runner.iter)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, runner, step: int) -> list[ChatAnswer | None]:
        """Answer every pair with the model in eval mode; ``step`` is the number of finished
        iterations.

        Returns:
            One answer per pair (``None`` where it failed; the error is logged). Nothing is re-run
            for a step already evaluated (the last iteration and ``after_train`` coincide).
        """
        if step == self._last_step:
            return []
        self._last_step = step
        model = unwrap_model(runner.model)
        was_training = model.training
        answers: list[ChatAnswer | None] = [None] * len(self.pairs)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        model.eval()
        try:
            out_dir = self._output_dir(runner, step)
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(self.seed)
                chat = OMGLLaVAChat(model, self._image_size(runner))
                current, image = object(), None  # nothing encoded yet
                for i, (image_path, question) in enumerate(self.pairs):
                    try:
                        if image_path == current:
                            chat.reset()  # same image: keep its encoding, start a new conversation
                        else:
                            image = (None if image_path is None
                                     else np.asarray(load_image(image_path)))
                            chat.set_image(image)
                            current = image_path
                        answers[i] = answer = chat.ask(question, **self.decoding)
                        runner.logger.info(f'[eval chat, iter {step}] {image_path} | '
                                           f'{question}\n{answer.text}\n({len(answer.masks)} '
                                           'masks)')
                        if out_dir is not None and image is not None:
                            self._save_overlay(out_dir, i, image, answer)
                    except Exception as exc:  # a bad sample must not stop training
                        current = object()
                        runner.logger.error(f'[eval chat, iter {step}] question {i} ({image_path}: '
                                            f'{question!r}) failed: {type(exc).__name__}: {exc}',
                                            exc_info=True)
            if out_dir is not None:
                self._save_answers(out_dir, answers)
        except Exception as exc:
            runner.logger.error(f'[eval chat, iter {step}] evaluation failed: '
                                f'{type(exc).__name__}: {exc}',
                                exc_info=True)
        finally:
            model.train(was_training)
        return answers

    def _image_size(self, runner) -> int:
        size = self.image_size
        if size is None and getattr(runner, 'cfg', None) is not None:
            size = runner.cfg.get('image_size')
        if size is None:
            raise ValueError('EvaluateChatHook: no image_size; pass image_size= or define '
                             'image_size in the config')
        return int(size)

    def _output_dir(self, runner, step: int) -> str | None:
        if not (self.save_overlays and is_main_process()):
            return None
        root = self.save_masks_to or os.path.join(runner.work_dir, DEFAULT_OUTPUT_SUBDIR)
        out_dir = os.path.join(root, f'iter_{step}')
        os.makedirs(out_dir, exist_ok=True)
        return out_dir

    @staticmethod
    def _save_overlay(out_dir: str, index: int, image: np.ndarray, answer: ChatAnswer) -> None:
        names = answer.phrases + ['[SEG]'] * max(0, len(answer.masks) - len(answer.phrases))
        segments = [Segment(label=k, name=name, is_thing=True, score=1.0, mask=mask)
                    for k, (name, mask) in enumerate(zip(names, answer.masks))]
        Image.fromarray(overlay(image, segments)).save(os.path.join(out_dir,
                                                                    f'answer_{index:02d}.png'))

    def _save_answers(self, out_dir: str, answers: list[ChatAnswer | None]) -> None:
        rows = [dict(image=image, question=question, answer=None if a is None else a.text,
                     num_masks=None if a is None else len(a.masks))
                for (image, question), a in zip(self.pairs, answers)]
        with open(os.path.join(out_dir, 'answers.json'), 'w') as f:
            json.dump(rows, f, indent=1, ensure_ascii=False)
