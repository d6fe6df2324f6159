"""LLaVA conversations: the pretrain captions and the instruction-tuning mixture (spec §8.2, §8.3
row 1).

:func:`llava_turns` is also the message reader of the Osprey and MDPV datasets: it turns LLaVA-style
messages into turns the way the released code's map functions (xtuner's ``llava_map_fn``) do.
"""
from __future__ import annotations

import os
import random
from typing import Any, Callable

from omg_llava.utils.constants import DEFAULT_IMAGE_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .sample import GroundedConversation, MalformedSample


def remove_image_token(text: str) -> str:
    """``text`` without ``<image>``: a message holding the token is stripped as well (the reference
    moves the token to the front and strips that message only); any other message is returned
    unchanged."""
    return text.replace(DEFAULT_IMAGE_TOKEN, '').strip() if DEFAULT_IMAGE_TOKEN in text else text


def llava_turns(messages: Any, what: str, clean: Callable[[str], str] | None = None) -> list[Turn]:
    """LLaVA-style ``[{"from": "human"|"gpt", "value": str}, ...]`` → turns, as the reference's
    map functions.

    Leading ``gpt`` messages are dropped; consecutive ``human`` messages are joined (no separator)
    into one question, which the next ``gpt`` message answers; a final question without answer is
    dropped. ``<image>`` is removed from the questions (:func:`remove_image_token`; the encoder puts
    it before the first question). Texts are otherwise kept as they are: answers and questions are
    not stripped.

    Args:
        messages: the row's ``conversations``.
        what: the row, for error messages.
        clean: rewrites every message's text (Osprey / MDPV bracket removal), after ``<image>`` is
            removed from the questions.

    Raises:
        MalformedSample: not a list of messages with text values and a known role, or no turn.
    """
    if not isinstance(messages, list):
        raise MalformedSample(f'conversations is not a list: {what}')
    start = 0
    while (start < len(messages) and isinstance(messages[start], dict)
               and messages[start].get('from') == 'gpt'):
        start += 1
    turns, question = [], ''
    for k, message in enumerate(messages[start:]):
        role = message.get('from') if isinstance(message, dict) else None
        value = message.get('value') if isinstance(message, dict) else None
        if role not in ('human', 'gpt') or not isinstance(value, str):
            raise MalformedSample(f'message is not human/gpt with a text value: {what}, message '
                                  f'{start + k}')
        if role == 'human':
            value = remove_image_token(value)
        if clean is not None:
            value = clean(value)
        if role == 'human':
            question += value
        else:
            turns.append(Turn(question, value))
            question = ''
    if not turns:
        raise MalformedSample(f'no human → gpt turn: {what}')
    return turns


def has_turn(messages: Any) -> bool:
    """Whether :func:`llava_turns` finds at least one turn: a ``gpt`` message after a ``human`` one.
    The reference drops rows without at load time (xtuner's empty-conversation filter), so they do
    not count in a dataset's length."""
    if not isinstance(messages, list):
        return True  # malformed: kept, and skipped with a reason when drawn
    roles = [m.get('from') if isinstance(m, dict) else None for m in messages]
    return 'human' in roles and 'gpt' in roles[roles.index('human'):]


class LLaVADataset(OMGDatasetBase):
    """LLaVA-format conversations about one image (or none).

    On disk::

        data_path                 # JSON list of rows
            [{"id": "000000033471",
              "image": "coco/train2017/000000033471.jpg",      # optional: text-only rows have none
              "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                                {"from": "gpt", "value": "The bus is ..."}, ...]}, ...]
        image_folder/<row["image"]>

    Used for the pretrain captions (``LLaVA-Pretrain/blip_laion_cc_sbu_558k.json`` +
    ``LLaVA-Pretrain/images``, one turn) and the instruction data (``llava_v1_5_mix665k.json`` +
    ``llava_images``, multi-turn). Messages become turns as :func:`llava_turns` describes (a row
    starting with a ``gpt`` message loses that message; the question holding ``<image>`` is
    stripped, other questions and every answer are kept as written). Rows without any human → gpt
    turn are left out when loading, as the reference does; rows with an unknown role, an empty text
    or a missing image are skipped when drawn.

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

    @property
    def source(self) -> str:
        return self.data_path

    def load_records(self) -> list[dict]:
        rows = read_json_list(self.data_path)
        return [row for row in rows if not isinstance(row, dict)
                or has_turn(row.get('conversations'))]

    def build_conversation(self, record: dict, rng: random.Random) -> GroundedConversation:
        if not isinstance(record, dict):
            raise MalformedSample(f'row is not an object: {str(record)[:60]!r}')
        turns = llava_turns(record.get('conversations'), f'row {_row_id(record)}')
        image = record.get('image')
        if image is not None and not isinstance(image, str):
            raise MalformedSample(f'image field is not a path: {image!r} in row {_row_id(record)}')
        return GroundedConversation(os.path.join(self.image_folder, image) if image else None,
                                    turns)

    def record_length(self, record: dict) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 1
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return max(1, chars // CHARS_PER_TOKEN)

    def record_has_image(self, record: dict) -> bool:
        return isinstance(record, dict) and bool(record.get('image'))


def _row_id(record: Any) -> str:
    return str(record.get('id')) if isinstance(record, dict) else '?'


__all__ = ['LLaVADataset', 'llava_turns', 'has_turn', 'remove_image_token']
