"""LLaVA conversations: the pretrain captions and the instruction-tuning mixture (spec §8.2, §8.3 row 1)."""
from __future__ import annotations

import json
import os
import random
from typing import Any

from omg_llava.utils.constants import DEFAULT_IMAGE_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase
from .sample import GroundedConversation, MalformedSample

ROLES = ('human', 'gpt')


class LLaVADataset(OMGDatasetBase):
    """LLaVA-format conversations about one image (or none).

    On disk::

        data_path                 # JSON list of rows
            [{"id": "000000033471",
              "image": "coco/train2017/000000033471.jpg",      # optional: text-only rows have none
              "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                                {"from": "gpt", "value": "The bus is ..."}, ...]}, ...]
        image_folder/<row["image"]>

    Used for the pretrain captions (``LLaVA-Pretrain/blip_laion_cc_sbu_558k.json`` + ``LLaVA-Pretrain/images``,
    one turn) and the instruction data (``llava_v1_5_mix665k.json`` + ``llava_images``, multi-turn). Human/gpt
    messages are paired into turns; ``<image>`` is removed from the text (the encoder puts it in front of the
    first question of an image row). Rows with roles out of order, an odd number of messages, empty text or a
    missing image are skipped.

    Args:
        data_path: the JSON file.
        image_folder: root that the rows' ``image`` paths are relative to.
        tokenizer, image_size, max_length, seed: see :class:`OMGDatasetBase`.
    """

    def __init__(self, data_path: str, image_folder: str, tokenizer: Any, image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0) -> None:
        self.data_path = data_path
        self.image_folder = image_folder
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    def load_records(self) -> list[dict]:
        with open(self.data_path, encoding='utf-8') as f:
            rows = json.load(f)
        if not isinstance(rows, list):
            raise ValueError(f'{self.data_path}: expected a JSON list of LLaVA rows, got {type(rows).__name__}')
        return rows

    def build_conversation(self, record: dict, rng: random.Random) -> GroundedConversation:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages or len(messages) % 2:
            raise MalformedSample(f'conversation is not human/gpt pairs: row {_row_id(record)}')
        turns = []
        for i in range(0, len(messages), 2):
            question, answer = (_message_text(messages[i + k], ROLES[k], record) for k in (0, 1))
            turns.append(Turn(question, answer))
        image = record.get('image')
        if image is not None and not isinstance(image, str):
            raise MalformedSample(f'image field is not a path: {image!r} in row {_row_id(record)}')
        return GroundedConversation(os.path.join(self.image_folder, image) if image else None, turns)

    def record_length(self, record: dict) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 1
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return max(1, chars // CHARS_PER_TOKEN)

    def record_has_image(self, record: dict) -> bool:
        return isinstance(record, dict) and bool(record.get('image'))


def _message_text(message: Any, role: str, record: dict) -> str:
    if not isinstance(message, dict) or message.get('from') != role:
        raise MalformedSample(f'message out of order: expected {role!r}, got {str(message)[:60]!r} '
                              f'in row {_row_id(record)}')
    value = message.get('value')
    text = value.replace(DEFAULT_IMAGE_TOKEN, '').strip() if isinstance(value, str) else ''
    if not text:
        raise MalformedSample(f'empty message: {role} in row {_row_id(record)}')
    return text


def _row_id(record: Any) -> str:
    return str(record.get('id')) if isinstance(record, dict) else '?'


__all__ = ['LLaVADataset']
