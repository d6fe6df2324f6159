"""MDPV point-prompted data: captions and QA about numbered marks (spec §8.3 rows 26–42, §8.4).

Each point reaches the model as a ``<mark>`` token whose embedding comes from the point
(:attr:`GroundedConversation.points`, one (x, y) per ``<mark>`` in text order); the text names the
points ``Mark 1``, ``Mark 2``, ...
"""
from __future__ import annotations

import math
import os
import random
import re
from numbers import Real
from typing import Any

from omg_llava.utils.constants import MARK_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .llava import has_turn, llava_turns
from .osprey import check_mentions
from .sample import GroundedConversation, MalformedSample

_MARK_MENTION = re.compile(r'\bmark\s*(\d+)', re.IGNORECASE)


def marks_preamble(count: int) -> str:
    """``"There are some marks: Mark 1 <mark>, Mark 2 <mark>.\\n"`` for ``count`` points."""
    names = ', '.join(f'Mark {i} {MARK_TOKEN}' for i in range(1, count + 1))
    return f'There are some marks: {names}.\n'


class MDPVPointDataset(OMGDatasetBase):
    """Point-prompted conversations in the MDPV layout.

    Supported files (all one layout):
    ``gpt4v_{ade20k,cocostuff_10k,cocostuff_164k,vg}_detailed_caption_point.json``,
    ``gpt4v_{lvis,vg,ade20k,cocostuff_10k,cocostuff_164k}_brief_caption_point.json``,
    ``gpt4v_{vg,lvis,ade20k,cocostuff_10k,cocostuff_164k}_QA_point.json`` and the multi-point
    captioning files ``Flicker30K_multi_points_to_caption.json`` and
    ``OpenPsgGCG_train_multi_points_to_caption.json``.

    Layout::

        annotation_file: [
            {"id": "...",                          # optional
             "image": "ade20k/images/training/ADE_train_00000001.jpg",
                                                   # only the file name is used
             "points": [[x, y], ...],              # original-image pixels, Mark 1 first
             "conversations": [
                 {"from": "human", "value": "<image>\nDescribe <Mark 1> and <Mark 2>."},
                 {"from": "gpt", "value": "<Mark 1> is a lamp ..."}, ...]},
            ...]

    As in the reference, the image is ``image_folder/<basename of image>`` (the files' folder
    prefixes are those of the annotators' machines), and for a Visual Genome folder (``'VG'`` in
    ``image_folder``, e.g. ``llava_images/vg/VG_100K``) an image missing there is read from the
    sibling ``VG_100K_2``. The first question is prefixed with :func:`marks_preamble`; in every
    message ``<`` and ``>`` are removed (``<Mark 1>`` → ``Mark 1``); messages become turns as
    :func:`~omg_llava.datasets.llava.llava_turns` describes. Rows without points, naming a mark
    number beyond the points, or with a point outside the image are skipped.
    """

    def __init__(self, annotation_file: str, image_folder: str, tokenizer: Any,
                 image_size: int = 1024, max_length: int = 1692, seed: int = 0) -> None:
        self.annotation_file = annotation_file
        self.image_folder = image_folder
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    @property
    def source(self) -> str:
        return self.annotation_file

    def load_records(self) -> list[dict]:
        """The file's rows, less those without a human → gpt turn (the reference leaves them out
        too)."""
        return [row for row in read_json_list(self.annotation_file)
                if not isinstance(row, dict) or has_turn(row.get('conversations'))]

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        if not isinstance(record, dict) or not isinstance(record.get('image'), str):
            raise MalformedSample('MDPV entry without an image path')
        image_path = self.image_path(record['image'])
        points = parse_points(record.get('points'), image_path)
        turns = llava_turns(record.get('conversations'), image_path, clean=_remove_angle_brackets)
        check_mentions(turns, _MARK_MENTION, len(points), image_path)
        turns[0] = Turn(marks_preamble(len(points)) + turns[0].question, turns[0].answer)
        return GroundedConversation(image_path, turns, points=points)

    def image_path(self, image: str) -> str:
        """Where the row's ``image`` is read: its basename in ``image_folder`` (or in the ``_2``
        sibling of a Visual Genome folder when missing there)."""
        name = os.path.basename(image)
        path = os.path.join(self.image_folder, name)
        if 'VG' in self.image_folder and not os.path.exists(path):
            fallback = os.path.join(self.image_folder.rstrip('/\\') + '_2', name)
            if os.path.exists(fallback):
                return fallback
        return path

    def record_length(self, record: Any) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 100
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return 20 + chars // CHARS_PER_TOKEN + 5 * len(record.get('points') or [])


def parse_points(points: Any, what: str) -> list[tuple[float, float]]:
    if not isinstance(points, list) or not points:
        raise MalformedSample(f'no points: {what}')
    parsed = []
    for point in points:
        if not (isinstance(point, (list, tuple)) and len(point) == 2
                and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
                        for v in point)):
            raise MalformedSample(f'bad point: {point!r} is not [x, y] ({what})')
        parsed.append((float(point[0]), float(point[1])))
    return parsed


def _remove_angle_brackets(text: str) -> str:
    return text.replace('<', '').replace('>', '')


__all__ = ['MDPVPointDataset', 'marks_preamble', 'parse_points']
