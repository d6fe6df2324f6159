"""Semantic segmentation (ADE20K, COCO-Stuff) as one-question conversations (spec §8.3 rows 6–11,
§8.4).

Unlike the reference, whose length list for these datasets enumerated the conversation templates
instead of the images (spec §10.14), there is one record, and one ``modality_length`` entry, per
image.
"""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from statistics import mean
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase
from .sample import GroundedConversation, MalformedSample
from .templates import SEG_ANSWERS, SEMANTIC_SEG_QUESTIONS, seg_answer, seg_question

#: Per-kind defaults: ``label_offset`` (pixel value of class index 0) and whether names with '-' are
#: skipped.
KIND_DEFAULTS = {
    # ADEChallengeData2016: 0 = "other", 1..150 = the 150 classes of the JSON list.
    'ade20k': dict(label_offset=1, skip_hyphenated=False),
    # stuffthingmaps: pixel = COCO id − 1; the class txt lists "0: unlabeled", "1: person", ... by
    # COCO id. The "-other" stuff classes (e.g. "wall-other") are ambiguous and not asked for.
    'cocostuff': dict(label_offset=-1, skip_hyphenated=True),
}

_NUMBERED_LINE = re.compile(r'^\s*(\d+)\s*:\s*(.*?)\s*$')


def read_class_names(source: Sequence[str] | str | os.PathLike) -> list[str | None]:
    """Class names by class index.

    Args:
        source: a list of names; a JSON file holding a list of names or a ``{"index": name}``
            object; or a text file with one name per line, optionally numbered ``"index: name"``
            (numbers give the index).

    Returns:
        ``names[i]`` is the name of class i (``None`` where a numbered file skips an index).
    """
    if not isinstance(source, (str, os.PathLike)):
        return [str(n) for n in source]
    path = Path(source)
    if path.suffix == '.json':
        data = json.loads(path.read_text(encoding='utf-8'))
        if isinstance(data, list):
            return [str(n) for n in data]
        if isinstance(data, dict) and all(str(k).isdigit() for k in data):
            return _by_index({int(k): str(v) for k, v in data.items()})
        raise ValueError(f'{path}: expected a JSON list of class names or an {{"index": name}} '
                         'object')
    lines = [line for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    numbered = [_NUMBERED_LINE.match(line) for line in lines]
    if all(numbered):
        return _by_index({int(m.group(1)): m.group(2) for m in numbered})
    return [line.strip() for line in lines]


def _by_index(names: dict[int, str]) -> list[str | None]:
    table: list[str | None] = [None] * (max(names) + 1 if names else 0)
    for i, name in names.items():
        table[i] = name
    return table


class SemanticSegDataset(OMGDatasetBase):
    """One conversation per label map: "segment the {class}" → ``"<p> {Class} </p> [SEG]."`` with
    its mask.

    On disk::

        ADE20K
        image_folder = ADEChallengeData2016/images/training
            ADE_train_00000001.jpg
        label_folder = ADEChallengeData2016/annotations/training
            ADE_train_00000001.png  (0 = other, c + 1 = class c)
        class_names = ade20k_classes.json (150 names)

        COCO-Stuff
        image_folder = coco2017/train2017
            000000000009.jpg
        label_folder = stuffthingmaps_trainval2017/train2017
            000000000009.png  (COCO id − 1, 255 = unlabeled)
        class_names = cocostuff_classes.txt ("0: unlabeled", "1: person", ...)

    Images and label maps are paired by file stem (one record per label PNG). Each item picks one
    class present in the label map and one question template from
    :data:`~omg_llava.datasets.templates.SEMANTIC_SEG_QUESTIONS`, both at random but fixed per row
    by the seed; the question names the class lower-cased, the answer ``.lower().capitalize()``d, as
    the reference does. Pixels equal to ``ignore_label`` or below ``label_offset`` are ignored, as
    are hyphenated class names for COCO-Stuff. A label map with a value outside the class list
    (unknown class), none usable, or no image is a malformed row (skipped).

    Args:
        image_folder: folder of the ``<stem><image_suffix>`` images.
        label_folder: folder of the ``<stem>.png`` label maps.
        class_names: names by class index, or a JSON / text file of them (see
            :func:`read_class_names`).
        kind: ``'ade20k'`` or ``'cocostuff'``: sets the defaults of ``label_offset`` and the hyphen
            rule.
        ignore_label: pixel value that marks unlabeled pixels.
        label_offset: pixel value of class index 0 (class = pixel − offset); ``None`` takes the
            kind's default (1 for ADE20K, −1 for COCO-Stuff with the reference's class file).
        image_suffix: file extension of the images.
        gcg_format: answer ``"<p> {Class} </p> [SEG]."`` (the released mixture) instead of a random
            plain :data:`~omg_llava.datasets.templates.SEG_ANSWERS` answer.
        tokenizer, image_size, max_length, seed: see :class:`OMGDatasetBase`.
    """

    def __init__(self, image_folder: str, label_folder: str, class_names: Sequence[str] | str,
                 tokenizer: Any, kind: str = 'ade20k', ignore_label: int = 255,
                 label_offset: int | None = None,
                 image_suffix: str = '.jpg', gcg_format: bool = True, image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0) -> None:
        if kind not in KIND_DEFAULTS:
            raise ValueError(f'kind must be one of {sorted(KIND_DEFAULTS)}, got {kind!r}')
        defaults = KIND_DEFAULTS[kind]
        self.image_folder = image_folder
        self.label_folder = label_folder
        self.kind = kind
        self.class_names = read_class_names(class_names)
        self.ignore_label = ignore_label
        self.label_offset = defaults['label_offset'] if label_offset is None else label_offset
        self.skip_hyphenated = defaults['skip_hyphenated']
        self.image_suffix = image_suffix
        self.gcg_format = gcg_format
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    @property
    def source(self) -> str:
        return self.label_folder

    def load_records(self) -> list[str]:
        if not os.path.isdir(self.label_folder):
            raise FileNotFoundError(f'label folder {self.label_folder!r} not found')
        stems = sorted(name[:-4] for name in os.listdir(self.label_folder) if name.endswith('.png'))
        if not stems:
            raise ValueError(f'no .png label map in {self.label_folder!r}')
        names = [n for n in self.class_names if n] or ['']
        # question + class name in question and answer + "<p> </p> [SEG]." markup
        self._length_estimate = max(
            1,
            int(
                mean(len(q) for q in SEMANTIC_SEG_QUESTIONS)
                - len('{class_name}')
                + 2 * mean(len(n) for n in names)
                + 20
            )
            // CHARS_PER_TOKEN,
        )
        return stems

    def build_conversation(self, record: str, rng: random.Random) -> GroundedConversation:
        label = self._read_label(os.path.join(self.label_folder, record + '.png'))
        values = [int(v) for v in np.unique(label)]
        usable = [v for v in values if self._class_of(v) is not None]
        if not usable:
            raise MalformedSample(f'no usable class: {record}.png has only the values {values}')
        value = rng.choice(usable)
        name = self._class_of(value)
        question = seg_question(rng.choice(SEMANTIC_SEG_QUESTIONS), name)
        answer = seg_answer(name) if self.gcg_format else rng.choice(SEG_ANSWERS)
        return GroundedConversation(os.path.join(self.image_folder, record + self.image_suffix),
                                    [Turn(question, answer)], masks=[label == value])

    def _class_of(self, value: int) -> str | None:
        """Name of the class a pixel value denotes, ``None`` for ignored values.

        Raises:
            MalformedSample: the value lies beyond the class list (wrong class file or corrupt label
                map).
        """
        index = value - self.label_offset
        if value == self.ignore_label or index < 0:
            return None
        if index >= len(self.class_names) or not self.class_names[index]:
            raise MalformedSample(f'unknown class: label value {value} has no name in the class '
                                  f'list ({len(self.class_names)} names, label_offset '
                                  f'{self.label_offset})')
        name = self.class_names[index]
        return None if self.skip_hyphenated and '-' in name else name

    @staticmethod
    def _read_label(path: str) -> np.ndarray:
        try:
            with Image.open(path) as image:
                label = np.asarray(image)
        except FileNotFoundError as exc:
            raise MalformedSample(f'label map not found: {path!r}') from exc
        except (UnidentifiedImageError, OSError) as exc:
            raise MalformedSample(f'unreadable label map: {path!r} ({exc})') from exc
        if label.ndim != 2:
            raise MalformedSample(f'label map is not single-channel: {path!r} has shape '
                                  f'{label.shape}')
        return label

    def record_length(self, record: str) -> int:
        return self._length_estimate


__all__ = ['SemanticSegDataset', 'read_class_names', 'KIND_DEFAULTS']
