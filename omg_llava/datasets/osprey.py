"""Osprey region data: region captions and region conversations (spec §8.3 rows 24–25, §8.4).

Regions reach the model as ``<region>`` tokens whose embeddings come from the region masks
(:attr:`GroundedConversation.regions`, one mask per ``<region>`` in text order). Each region is
named ``region{i}`` in the text so answers and later questions can refer to it.
"""
from __future__ import annotations

import os
import random
import re
from typing import Any

import numpy as np
from mmengine.logging import print_log

from omg_llava.utils.constants import REGION_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase, read_json_list
from .llava import has_turn, llava_turns
from .mask_decoding import decode_segmentation
from .region_templates import (REGION_CAPTION_QUESTIONS, REGION_SEGMENT_QUESTION,
                               fill_region_question)
from .sample import GroundedConversation, MalformedSample
from .templates import seg_answer

MAX_CAPTION_REGIONS = 3
_TAG = re.compile(r'<[^>]*>')  # any '<...>' tag of an Osprey description ('<region3>')
_REGION_MENTION = re.compile(r'\bregion\s*(\d+)', re.IGNORECASE)


def check_mentions(turns: list[Turn], pattern: re.Pattern, count: int, what: str) -> None:
    """Raise :class:`MalformedSample` when the text names a prompt number beyond ``count`` (e.g.
    ``region4`` with three regions)."""
    numbers = [int(n) for t in turns for n in pattern.findall(t.question + ' ' + t.answer)]
    if numbers and not 1 <= min(numbers) <= max(numbers) <= count:
        raise MalformedSample(f'prompt number out of range: {what} refers to prompt {max(numbers)} '
                              f'of {count}')


class _OspreyDataset(OMGDatasetBase):
    """Shared constructor, load-time filter and region decoding of the Osprey datasets.

    The Osprey-724K files hold each row's regions under ``annotation`` (a list, one COCO-style entry
    per region); rows the reference leaves out when loading are left out too (see each class), so
    lengths match the reference's.
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
        rows = read_json_list(self.annotation_file)
        kept = [row for row in rows if self.keep_row(row)]
        if rows and not kept:
            hint = (" (rows hold 'annotations': the Osprey files name the region list "
                    "'annotation'; regenerate or rename the key)"
                    if any(isinstance(r, dict) and 'annotations' in r for r in rows) else '')
            raise ValueError(f"{self.annotation_file}: none of the {len(rows)} rows has a usable "
                             "'annotation' "
                             f'region list{hint}')
        if len(kept) < len(rows):
            print_log(f'{type(self).__name__}: left out {len(rows) - len(kept)} of {len(rows)} '
                      f'rows of {self.annotation_file} (no region list, no turn, or not one '
                      'description per region)',
                      logger='current')
        return kept

    def keep_row(self, row: Any) -> bool:
        """Whether a row enters the dataset (non-dict rows do, and are skipped with a reason when
        drawn)."""
        raise NotImplementedError

    def _image_and_annotations(self, record: Any) -> tuple[str, list[dict], int, int]:
        if not isinstance(record, dict) or not isinstance(record.get('file_name'), str):
            raise MalformedSample('Osprey entry without a file_name')
        file_name = record['file_name']
        try:
            H, W = int(record['height']), int(record['width'])
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedSample(f'bad height/width: Osprey entry {file_name!r} lacks valid '
                                  'ones') from exc
        annotations = record.get('annotation')
        if not isinstance(annotations, list) or not annotations:
            raise MalformedSample(f'no regions: Osprey entry {file_name!r}')
        return os.path.join(self.image_folder, file_name), annotations, H, W

    @staticmethod
    def _region_mask(annotation: Any, H: int, W: int) -> np.ndarray:
        if not isinstance(annotation, dict) or 'segmentation' not in annotation:
            raise MalformedSample('Osprey annotation without a segmentation')
        return decode_segmentation(annotation['segmentation'], H, W)


class OspreyRegionCaptionDataset(_OspreyDataset):
    """Detailed region descriptions (``osprey_detail_description.json`` with COCO 2014 train
    images).

    Layout::

        annotation_file: [
            {"id": 1, "file_name": "COCO_train2014_000000000009.jpg",   # relative to image_folder
             "height": H, "width": W,
             "annotation": [{"bbox": [x, y, w, h],
                             "segmentation": [[x1, y1, ...], ...]},  # polygons (or RLE), region i
                            ...],
             # one per region, same order
             "description": ["<region1>: A brown dog lying ...", ...]},
            ...]

    Rows whose number of descriptions differs from their number of regions are left out when loading
    (as the reference does). A sample takes 3 regions drawn at random when the row has 3 or more,
    else all of them in file order, and names them ``region1 … regionk``: turn i asks a random
    :data:`REGION_CAPTION_QUESTIONS` question about ``region{i} <region>`` and is answered by that
    region's description, every ``<...>`` tag in it replaced by ``region{i}`` (otherwise as
    written); a last turn asks ``"Please segment the region{j}."`` for a random one of them and is
    answered ``"<p> Region{j} </p> [SEG]."`` with its mask (spec §8.4).
    """

    def keep_row(self, row: Any) -> bool:
        if not isinstance(row, dict):
            return True
        regions, descriptions = row.get('annotation'), row.get('description')
        return (isinstance(regions, list) and isinstance(descriptions, list)
                and len(descriptions) == len(regions))

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        image_path, annotations, H, W = self._image_and_annotations(record)
        descriptions = record['description']
        n = len(annotations)
        chosen = (rng.sample(range(n), MAX_CAPTION_REGIONS) if n >= MAX_CAPTION_REGIONS
                  else list(range(n)))
        turns, regions = [], []
        for i, index in enumerate(chosen, start=1):
            description = descriptions[index]
            if not isinstance(description, str) or not _TAG.sub('', description).strip(' :\n'):
                raise MalformedSample(f'empty region description: region {index + 1} of '
                                      f'{image_path}')
            question = fill_region_question(rng.choice(REGION_CAPTION_QUESTIONS), i)
            turns.append(Turn(question, _TAG.sub(f'region{i}', description)))
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
        return 30 + int(chars * share) // CHARS_PER_TOKEN + 25 * min(MAX_CAPTION_REGIONS,
                                                                     len(descriptions))


class OspreyRegionConversationDataset(_OspreyDataset):
    """Region-referring conversations (``osprey_conversation.json`` with COCO 2014 train images).

    Layout::

        annotation_file: [
            {"id": 1, "file_name": "COCO_train2014_000000000009.jpg",   # relative to image_folder
             "height": H, "width": W,
             # polygons (or RLE) of region i
             "annotation": [{"segmentation": [[x1, y1, ...], ...], ...}, ...],
             "conversations": [{"from": "human", "value": "What is <region1> doing?"},
                               {"from": "gpt", "value": "The man in <region1> is ..."}, ...]},
            ...]

    Every region is a prompt: the first question is prefixed with
    ``"There are some regions: region1 <region>, region2 <region>.\\n"``; in every message ``<`` and
    ``>`` are removed (``<region1>`` → ``region1``) and ``regin`` becomes ``region`` (a typo of the
    files), as the reference does; messages become turns as
    :func:`~omg_llava.datasets.llava.llava_turns` describes. Rows without regions or without a human
    → gpt turn are left out when loading; rows naming a region number beyond the regions are skipped
    when drawn.
    """

    def keep_row(self, row: Any) -> bool:
        if not isinstance(row, dict):
            return True
        regions = row.get('annotation')
        return isinstance(regions, list) and bool(regions) and has_turn(row.get('conversations'))

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        image_path, annotations, H, W = self._image_and_annotations(record)
        turns = llava_turns(record.get('conversations'), image_path, clean=_clean_osprey_text)
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
        return 20 + chars // CHARS_PER_TOKEN + 4 * len(record.get('annotation') or [])


def _clean_osprey_text(text: str) -> str:
    return text.replace('<', '').replace('>', '').replace('regin', 'region')


__all__ = ['OspreyRegionCaptionDataset', 'OspreyRegionConversationDataset', 'check_mentions']
