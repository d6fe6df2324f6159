"""MDPV point-prompted data: captions and QA about numbered marks (spec §8.3 rows 26–42, §8.4).

Each point reaches the model as a ``<mark>`` token whose embedding comes from the point
(:attr:`GroundedConversation.points`, one (x, y) per ``<mark>`` in text order); the text names the points
``Mark 1``, ``Mark 2``, ...
"""
from __future__ import annotations

import math
import os
import random
import re
from numbers import Real
from typing import Any

from omg_llava.utils.constants import DEFAULT_IMAGE_TOKEN, MARK_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .osprey import check_mentions, conversation_turns
from .sample import GroundedConversation, MalformedSample

_MARK_MENTION = re.compile(r'\bmark\s*(\d+)', re.IGNORECASE)


def marks_preamble(count: int) -> str:
    """``"There are some marks: Mark 1 <mark>, Mark 2 <mark>.\\n"`` for ``count`` points."""
    names = ', '.join(f'Mark {i} {MARK_TOKEN}' for i in range(1, count + 1))
    return f'There are some marks: {names}.\n'


class MDPVPointDataset(OMGDatasetBase):
    """Point-prompted conversations in the MDPV layout.

    Supported files (all one layout): ``gpt4v_{detailed,brief,qa}_*_point.json`` (detailed / brief captions and
    QA on ADE20k, COCO-Stuff 10k/164k, VG, LVIS images) and the multi-point captioning files
    ``Flicker30K_multi_points_to_caption.json`` and ``OpenPsgGCG_train_multi_points_to_caption.json``.

    Layout::

        annotation_file: [
            {"id": "...",                                   # optional
             "image": "ADE_train_00000001.jpg",             # relative to image_folder
             "points": [[x, y], ...],                       # original-image pixels, Mark 1 first
             "conversations": [{"from": "human", "value": "<image>\\nDescribe <Mark 1> and <Mark 2>."},
                               {"from": "gpt", "value": "<Mark 1> is a lamp ..."}, ...]},
            ...]

    The first question is prefixed with :func:`marks_preamble`; ``<image>`` is removed from the text and angle
    brackets are stripped (``<Mark 1>`` → ``Mark 1``). Rows without points, naming a mark number beyond the
    points, or with a point outside the image are skipped.
    """

    def __init__(self, annotation_file: str, image_folder: str, tokenizer: Any, image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0) -> None:
        self.annotation_file = annotation_file
        self.image_folder = image_folder
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    def load_records(self) -> list[dict]:
        return read_json_list(self.annotation_file)

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        if not isinstance(record, dict) or not isinstance(record.get('image'), str):
            raise MalformedSample('MDPV entry without an image path')
        image_path = os.path.join(self.image_folder, record['image'])
        points = _parse_points(record.get('points'), image_path)
        turns = conversation_turns(record.get('conversations'), _clean_mdpv_text, image_path)
        check_mentions(turns, _MARK_MENTION, len(points), image_path)
        turns[0] = Turn(marks_preamble(len(points)) + turns[0].question, turns[0].answer)
        return GroundedConversation(image_path, turns, points=points)

    def record_length(self, record: Any) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 100
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return 20 + chars // CHARS_PER_TOKEN + 5 * len(record.get('points') or [])


def _parse_points(points: Any, what: str) -> list[tuple[float, float]]:
    if not isinstance(points, list) or not points:
        raise MalformedSample(f'{what}: no points')
    parsed = []
    for point in points:
        if not (isinstance(point, (list, tuple)) and len(point) == 2
                and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
            raise MalformedSample(f'{what}: point {point!r} is not [x, y]')
        parsed.append((float(point[0]), float(point[1])))
    return parsed


def _clean_mdpv_text(text: str) -> str:
    return text.replace(DEFAULT_IMAGE_TOKEN, '').replace('<', '').replace('>', '').strip()


__all__ = ['MDPVPointDataset', 'marks_preamble']
