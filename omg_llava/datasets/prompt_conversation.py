"""Conversations whose questions hold the visual-prompt placeholders themselves ("What colour is
<region>?"), as the chat API, ``tools/chat.py`` and the app take them. Spec §8.4 has no such source:
the released data name their prompts ``region1`` / ``Mark 1`` after a ``There are some ...`` line;
this one teaches the inline form (the tiny synthetic model trains on both).

Each ``<region>`` in the text takes the next region mask and each ``<mark>`` the next point, in text
order, as :class:`~omg_llava.datasets.sample.GroundedConversation` defines them.
"""
from __future__ import annotations

import os
import random
from typing import Any

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .llava import has_turn, llava_turns
from .mask_decoding import decode_segmentation
from .mdpv import parse_points
from .sample import GroundedConversation, MalformedSample


class PromptConversationDataset(OMGDatasetBase):
    """Questions about prompted objects, ``<region>`` / ``<mark>`` written where each prompt goes.

    Layout::

        annotation_file: [
            {"file_name": "COCO_train2014_000000000009.jpg",          # relative to image_folder
             "height": H, "width": W,
             "regions": [{"segmentation": RLE or polygons}, ...],  # per <region>, text order
             "points": [[x, y], ...],                              # per <mark>, text order
             "conversations": [
                 {"from": "human", "value": "<image>\\nWhat colour is <region>?"},
                 {"from": "gpt", "value": "It is blue."}, ...]},
            ...]

    Texts are kept as written (only ``<image>`` is moved,
    :func:`~omg_llava.datasets.llava.llava_turns`); rows whose placeholder counts differ from their
    regions / points are skipped when drawn.
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
        """The file's rows, less those without a human → gpt turn."""
        return [row for row in read_json_list(self.annotation_file)
                if not isinstance(row, dict) or has_turn(row.get('conversations'))]

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        if not isinstance(record, dict) or not isinstance(record.get('file_name'), str):
            raise MalformedSample('prompt conversation without a file_name')
        image_path = os.path.join(self.image_folder, record['file_name'])
        try:
            H, W = int(record['height']), int(record['width'])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedSample('bad height/width: a prompt conversation lacks them') from exc
        regions = record.get('regions') or []
        if not isinstance(regions, list) or not all(isinstance(r, dict) and 'segmentation' in r
                                                    for r in regions):
            raise MalformedSample('bad regions: not a list of entries with a segmentation')
        masks = [decode_segmentation(r['segmentation'], H, W) for r in regions]
        points = parse_points(record['points'], image_path) if record.get('points') else []
        turns = llava_turns(record.get('conversations'), image_path)
        return GroundedConversation(image_path, turns, regions=masks, points=points)

    def record_length(self, record: Any) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 100
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return 20 + chars // CHARS_PER_TOKEN


__all__ = ['PromptConversationDataset']
