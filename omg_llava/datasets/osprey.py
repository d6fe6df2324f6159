"""Osprey region data: region captions and region conversations (spec §8.3 rows 24–25, §8.4).

Regions reach the model as ``<region>`` tokens whose embeddings come from the region masks
(:attr:`GroundedConversation.regions`, one mask per ``<region>`` in text order). Each region is named
``region{i}`` in the text so answers and later questions can refer to it.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Callable

import numpy as np

from omg_llava.utils.constants import DEFAULT_IMAGE_TOKEN, REGION_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .mask_decoding import decode_segmentation
from .region_templates import REGION_CAPTION_QUESTIONS, REGION_SEGMENT_QUESTION, fill_region_question
from .sample import GroundedConversation, MalformedSample
from .templates import seg_answer

MAX_CAPTION_REGIONS = 3
_REGION_TAG = re.compile(r'<\s*region\s*\d*\s*>', re.IGNORECASE)  # '<region3>' in Osprey descriptions
_REGIN_TYPO = re.compile(r'\bregin(?=\d|\b)')  # Osprey's '<regin2>' typo
_REGION_MENTION = re.compile(r'\bregion\s*(\d+)', re.IGNORECASE)


def conversation_turns(messages: Any, clean: Callable[[str], str], what: str) -> list[Turn]:
    """LLaVA-style ``[{"from": "human"|"gpt", "value": str}, ...]`` → turns, each text passed through ``clean``.

    Leading ``gpt`` messages are dropped (as the reference does), then messages must alternate human/gpt; a
    final question without answer is dropped.

    Raises:
        MalformedSample: not a list of messages, roles out of order, or no complete turn.
    """
    if not isinstance(messages, list):
        raise MalformedSample(f'{what}: conversations is not a list')
    start = 0
    while start < len(messages) and isinstance(messages[start], dict) and messages[start].get('from') == 'gpt':
        start += 1
    texts = []
    for k, message in enumerate(messages[start:]):
        role = ('human', 'gpt')[k % 2]
        if not isinstance(message, dict) or message.get('from') != role or not isinstance(message.get('value'), str):
            raise MalformedSample(f'{what}: message {start + k} is not a {role} message with a text value')
        texts.append(clean(message['value']))
    turns = [Turn(q, a) for q, a in zip(texts[0::2], texts[1::2])]
    if not turns:
        raise MalformedSample(f'{what}: no question/answer pair')
    return turns


def check_mentions(turns: list[Turn], pattern: re.Pattern, count: int, what: str) -> None:
    """Raise :class:`MalformedSample` when the text names a prompt number beyond ``count`` (e.g. ``region4``
    with three regions)."""
    numbers = [int(n) for t in turns for n in pattern.findall(t.question + ' ' + t.answer)]
    if numbers and not 1 <= min(numbers) <= max(numbers) <= count:
        raise MalformedSample(f'{what}: the text refers to prompt {max(numbers)} but there are {count}')


class _OspreyDataset(OMGDatasetBase):
    """Shared constructor and region decoding of the Osprey datasets."""

    def __init__(self, annotation_file: str, image_folder: str, tokenizer: Any, image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0) -> None:
        self.annotation_file = annotation_file
        self.image_folder = image_folder
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    def load_records(self) -> list[dict]:
        return read_json_list(self.annotation_file)

    def _image_and_annotations(self, record: Any) -> tuple[str, list[dict], int, int]:
        if not isinstance(record, dict) or not isinstance(record.get('file_name'), str):
            raise MalformedSample('Osprey entry without a file_name')
        file_name = record['file_name']
        annotations = record.get('annotations')
        if not isinstance(annotations, list) or not annotations:
            raise MalformedSample(f'Osprey entry {file_name!r} has no annotations')
        try:
            H, W = int(record['height']), int(record['width'])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedSample(f'Osprey entry {file_name!r} lacks a valid height/width') from exc
        return os.path.join(self.image_folder, file_name), annotations, H, W

    @staticmethod
    def _region_mask(annotation: Any, H: int, W: int) -> np.ndarray:
        if not isinstance(annotation, dict) or 'segmentation' not in annotation:
            raise MalformedSample('Osprey annotation without a segmentation')
        return decode_segmentation(annotation['segmentation'], H, W)


class OspreyRegionCaptionDataset(_OspreyDataset):
    """Detailed region descriptions (``osprey_detail_description.json`` with COCO 2014 train images).

    Layout::

        annotation_file: [
            {"id": 1, "file_name": "COCO_train2014_000000000009.jpg",   # relative to image_folder
             "height": H, "width": W,
             "annotations": [{"bbox": [x, y, w, h],
                              "segmentation": [[x1, y1, ...], ...]},    # polygons (or RLE) of region i
                             ...],
             "description": ["<region1>: A brown dog lying ...", ...]},  # one per annotation, same order
            ...]

    A sample takes up to 3 regions in random order and names them ``region1 … regionk``: turn i asks a random
    region question about ``region{i} <region>`` and is answered by that region's description, every
    ``<regionN>`` tag in it replaced by ``region{i}``; a last turn asks ``"Please segment the region{j}."``
    for a random one of them and is answered ``"<p> Region{j} </p> [SEG]."`` with its mask (spec §8.4).
    """

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        image_path, annotations, H, W = self._image_and_annotations(record)
        descriptions = record.get('description')
        if not isinstance(descriptions, list) or len(descriptions) != len(annotations):
            raise MalformedSample(f'{image_path}: {len(annotations)} regions but descriptions '
                                  f'{type(descriptions).__name__} of length {len(descriptions or [])}')
        chosen = rng.sample(range(len(annotations)), min(MAX_CAPTION_REGIONS, len(annotations)))
        turns, regions = [], []
        for i, index in enumerate(chosen, start=1):
            description = descriptions[index]
            if not isinstance(description, str) or not _REGION_TAG.sub('', description).strip(' :\n'):
                raise MalformedSample(f'{image_path}: empty description of region {index + 1}')
            question = fill_region_question(rng.choice(REGION_CAPTION_QUESTIONS), i)
            turns.append(Turn(question, _REGION_TAG.sub(f'region{i}', description).strip()))
            regions.append(self._region_mask(annotations[index], H, W))
        target = rng.randrange(len(chosen))
        name = f'region{target + 1}'
        turns.append(Turn(REGION_SEGMENT_QUESTION.format(name=name), seg_answer(name)))
        return GroundedConversation(image_path, turns, masks=[regions[target]], regions=regions)

    def record_length(self, record: Any) -> int:
        descriptions = record.get('description') if isinstance(record, dict) else None
        if not isinstance(descriptions, list) or not descriptions:
            return 100
        chars = sum(len(d) for d in descriptions if isinstance(d, str))
        share = min(MAX_CAPTION_REGIONS, len(descriptions)) / len(descriptions)
        return 30 + int(chars * share) // CHARS_PER_TOKEN + 25 * min(MAX_CAPTION_REGIONS, len(descriptions))


class OspreyRegionConversationDataset(_OspreyDataset):
    """Region-referring conversations (``osprey_conversation.json`` with COCO 2014 train images).

    Layout::

        annotation_file: [
            {"id": 1, "file_name": "COCO_train2014_000000000009.jpg",   # relative to image_folder
             "height": H, "width": W,
             "annotations": [{"segmentation": [[x1, y1, ...], ...], ...}, ...],   # polygons (or RLE), region i
             "conversations": [{"from": "human", "value": "What is <region1> doing?"},
                               {"from": "gpt", "value": "The man in <region1> is ..."}, ...]},
            ...]

    Every annotation is a region: the first question is prefixed with
    ``"There are some regions: region1 <region>, region2 <region>.\\n"``; in the original text ``<image>`` is
    removed, the ``regin`` typo becomes ``region`` and angle brackets are stripped (``<region1>`` →
    ``region1``). Rows naming a region number beyond the annotations are skipped.
    """

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        image_path, annotations, H, W = self._image_and_annotations(record)
        turns = conversation_turns(record.get('conversations'), _clean_osprey_text, image_path)
        check_mentions(turns, _REGION_MENTION, len(annotations), image_path)
        names = ', '.join(f'region{i} {REGION_TOKEN}' for i in range(1, len(annotations) + 1))
        turns[0] = Turn(f'There are some regions: {names}.\n{turns[0].question}', turns[0].answer)
        regions = [self._region_mask(a, H, W) for a in annotations]
        return GroundedConversation(image_path, turns, regions=regions)

    def record_length(self, record: Any) -> int:
        messages = record.get('conversations') if isinstance(record, dict) else None
        if not isinstance(messages, list):
            return 100
        chars = sum(len(m.get('value') or '') for m in messages if isinstance(m, dict))
        return 20 + chars // CHARS_PER_TOKEN + 4 * len(record.get('annotations') or [])


def _clean_osprey_text(text: str) -> str:
    text = _REGIN_TYPO.sub('region', text.replace(DEFAULT_IMAGE_TOKEN, ''))
    return text.replace('<', '').replace('>', '').strip()


__all__ = ['OspreyRegionCaptionDataset', 'OspreyRegionConversationDataset', 'conversation_turns', 'check_mentions']
