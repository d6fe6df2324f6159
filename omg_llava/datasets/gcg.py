"""Grounded conversation generation (GCG) data in GLaMM's annotation formats (spec §8.3 rows 2–5,
§8.4).

Each sample is one image and one caption: the question is one of the fixed GCG questions, the answer
is the caption with every grounded phrase rewritten as ``<p> phrase </p> [SEG]`` (phrases in caption
order) and the masks are the phrases' masks in the same order. The three classes differ only in how
they read phrases and masks from their annotation files.
"""
from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from omg_llava.utils.constants import PHRASE_END, PHRASE_START, SEG_TOKEN
from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase
from .mask_decoding import decode_segmentation
from .sample import GroundedConversation, MalformedSample
from .templates import GCG_QUESTIONS

MIN_CAPTION_WORDS = 3  # Flickr: shorter captions are dropped at load time
MIN_IMAGE_SIDE = 32  # Flickr: smaller images are dropped at load time
TOKENS_PER_PHRASE = 8  # length estimate of `<p> ... </p> [SEG]` around a phrase


def ground_caption(caption: str, phrases: Sequence[tuple[int, int, np.ndarray]], *,
                   trim_overlaps: bool = False) -> tuple[str, list[np.ndarray]]:
    """Rewrite the grounded phrases of a caption as ``<p> phrase </p> [SEG]``.

    Args:
        caption: the caption text.
        phrases: ``(start, end, mask)`` per grounded phrase, ``caption[start:end]`` being the phrase
            and ``mask`` its (H, W) binary mask. Phrases with the same span are one phrase (masks
            unioned).
        trim_overlaps: cut a phrase that runs into the next one at the next one's start (RefCOCOg,
            where phrases are found by string search); a phrase left empty is dropped. Otherwise
            overlapping spans are malformed.

    Returns:
        The tagged answer (surrounding whitespace stripped) and the masks in phrase order.

    Raises:
        MalformedSample: a span outside the caption or empty, overlapping spans (without
            ``trim_overlaps``), or no phrase at all.
    """
    merged: dict[tuple[int, int], np.ndarray] = {}
    for start, end, mask in phrases:
        if not (isinstance(start, int) and isinstance(end, int)
                and 0 <= start < end <= len(caption)):
            raise MalformedSample(f'phrase span outside the caption: [{start}, {end}) in '
                                  f'{len(caption)} characters')
        mask = mask > 0
        merged[start, end] = merged[start, end] | mask if (start, end) in merged else mask
    spans = sorted(merged)
    kept: list[tuple[int, int, np.ndarray]] = []
    for i, (start, end) in enumerate(spans):
        if i + 1 < len(spans) and end > spans[i + 1][0]:
            if not trim_overlaps:
                raise MalformedSample(f'overlapping phrase spans: [{start}, {end}) and '
                                      f'{list(spans[i + 1])}')
            end = start + len(caption[start:spans[i + 1][0]].rstrip())
            if end <= start:
                continue
        kept.append((start, end, merged[spans[i]]))
    if not kept:
        raise MalformedSample('no grounded phrase in the caption')
    pieces, cursor = [], 0
    for start, end, _ in kept:
        pieces += [caption[cursor:start],
                   f'{PHRASE_START} {caption[start:end]} {PHRASE_END} {SEG_TOKEN}']
        cursor = end
    pieces.append(caption[cursor:])
    return ''.join(pieces).strip(), [mask for _, _, mask in kept]


def read_image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image file from its header, as :class:`MalformedSample` when it is missing or
    unreadable."""
    try:
        with Image.open(path) as image:
            W, H = image.size
    except FileNotFoundError as exc:
        raise MalformedSample(f'image not found: {path!r}') from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise MalformedSample(f'unreadable image: {path!r} ({exc})') from exc
    return H, W


def _load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _require(entry: dict, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise MalformedSample(f'missing key: {what} lacks {key!r}')
    value = entry[key]
    if not isinstance(value, kind):
        raise MalformedSample(f'wrong type: {what} has a {type(value).__name__} under {key!r}')
    return value


class _GCGDataset(OMGDatasetBase):
    """Shared part of the GCG datasets: one record → (image path, caption, phrases) → conversation.

    Args:
        annotation_file, image_folder: the annotation JSON and the root of its image names.
        questions: the questions one is drawn from per sample (default: the reference's
            :data:`~omg_llava.datasets.templates.GCG_QUESTIONS`).
        tokenizer, image_size, max_length, seed: see :class:`OMGDatasetBase`.
    """

    trim_overlaps = False

    def __init__(self, annotation_file: str, image_folder: str, tokenizer: Any,
                 image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0,
                 questions: Sequence[str] = GCG_QUESTIONS) -> None:
        if not questions:
            raise ValueError('questions must hold at least one GCG question')
        self.annotation_file = annotation_file
        self.image_folder = image_folder
        self.questions = tuple(questions)
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    @property
    def source(self) -> str:
        return self.annotation_file

    def parse_record(self, record: Any) -> tuple[str, str, list[tuple[int, int, np.ndarray]]]:
        """One record → (image path, caption, ``(start, end, mask)`` per phrase)."""
        raise NotImplementedError

    def build_conversation(self, record: Any, rng: random.Random) -> GroundedConversation:
        image_path, caption, phrases = self.parse_record(record)
        answer, masks = ground_caption(caption, phrases, trim_overlaps=self.trim_overlaps)
        return GroundedConversation(image_path=image_path,
                                    turns=[Turn(rng.choice(self.questions), answer)], masks=masks)

    def record_length(self, record: Any) -> int:
        caption = record.get('caption', '') if isinstance(record, dict) else ''
        return (
            40
            + len(str(caption)) // CHARS_PER_TOKEN
            + TOKENS_PER_PHRASE * self._phrase_count(record)
        )

    def _phrase_count(self, record: Any) -> int:
        return 0


class GranDfGCGDataset(_GCGDataset):
    """GranD-f / OpenPSG GCG data (``GranDf_HA_GCG_train.json``, ``OpenPsgGCG_train.json``).

    Layout::

        annotation_file: [                   # a list (a dict's values are taken as the list)
            {"file_name": "sa_123.jpg",      # relative to image_folder
             "caption": "A man rides a horse.",
             "groundings": {                 # phrase → grounding
                 "A man": {"token_positives": [0, 5],  # character span [start, end) in the caption
                           # COCO RLEs, unioned
                           "rle_masks": [{"size": [H, W], "counts": "..."}, ...]},
                 ...}},
            ...]

    Spans index the caption as stored (no stripping before the spans are applied).
    """

    def load_records(self) -> list[dict]:
        data = _load_json(self.annotation_file)
        records = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise ValueError(f'{self.annotation_file}: expected a list of image entries, got '
                             f'{type(data).__name__}')
        return records

    def parse_record(self, record: Any) -> tuple[str, str, list[tuple[int, int, np.ndarray]]]:
        file_name = _require(record, 'file_name', str, 'GCG entry')
        caption = _require(record, 'caption', str, f'GCG entry {file_name!r}')
        groundings = _require(record, 'groundings', dict, f'GCG entry {file_name!r}')
        if not caption.strip():
            raise MalformedSample(f'empty caption: {file_name!r}')
        image_path = os.path.join(self.image_folder, file_name)
        H, W = read_image_size(image_path)
        phrases = []
        for phrase, grounding in groundings.items():
            what = f'grounding {phrase!r} of {file_name!r}'
            span = _require(grounding, 'token_positives', list, what)
            rles = _require(grounding, 'rle_masks', list, what)
            if len(span) != 2 or not rles:
                raise MalformedSample(f'bad grounding: {what} needs a [start, end] span and at '
                                      'least one RLE')
            phrases.append((span[0], span[1], decode_segmentation(rles, H, W)))
        return image_path, caption, phrases

    def _phrase_count(self, record: Any) -> int:
        return len(record.get('groundings') or {}) if isinstance(record, dict) else 0


class OpenPsgGCGDataset(GranDfGCGDataset):
    """OpenPSG GCG data (``OpenPsgGCG_train.json`` with COCO 2017 images): the GranD-f layout."""


class RefCOCOgGCGDataset(_GCGDataset):
    """RefCOCOg GCG data (``RefCOCOg_GCG_train.json`` with COCO 2014 train images).

    Layout::

        annotation_file: [
            # img_file_name: relative to image_folder
            {"<id>": {"img_file_name": "COCO_train2014_000000000009.jpg",
                      "caption": "A dog next to a red car.",
                      "refs": [{"sentence": "a red car",
                                "bbox": [x, y, w, h],
                                # COCO polygons (unioned)
                                "segmentation": [[x1, y1, x2, y2, ...], ...]},
                               ...]}},
            ...]

    (a plain entry without the ``{"<id>": ...}`` wrapper is accepted too). The caption is
    lower-cased and each ``sentence`` is located in it by its first case-insensitive occurrence;
    references not found are ignored and a phrase that runs into the next one is cut at the next
    one's start (spec §8.4).
    """

    trim_overlaps = True

    def load_records(self) -> list[dict]:
        data = _load_json(self.annotation_file)
        if not isinstance(data, list):
            raise ValueError(f'{self.annotation_file}: expected a list of image entries, got '
                             f'{type(data).__name__}')
        records = []
        for item in data:
            if isinstance(item, dict) and len(item) == 1 and 'caption' not in item:
                (key, item), = item.items()
                item = dict(item, id=key) if isinstance(item, dict) else item
            records.append(item)
        return records

    def parse_record(self, record: Any) -> tuple[str, str, list[tuple[int, int, np.ndarray]]]:
        file_name = _require(record, 'img_file_name', str, 'RefCOCOg GCG entry')
        caption = (
            _require(record, 'caption', str, f'RefCOCOg GCG entry {file_name!r}')
            .strip()
            .strip('"')
            .strip()
        )
        refs = _require(record, 'refs', list, f'RefCOCOg GCG entry {file_name!r}')
        if not caption:
            raise MalformedSample(f'empty caption: {file_name!r}')
        caption = caption.lower()
        image_path = os.path.join(self.image_folder, file_name)
        H, W = read_image_size(image_path)
        phrases = []
        for ref in refs:
            sentence = _require(ref, 'sentence', str, f'reference of {file_name!r}').strip().lower()
            start = caption.find(sentence) if sentence else -1
            if start < 0:
                continue
            segmentation = _require(ref, 'segmentation', list,
                                    f'reference {sentence!r} of {file_name!r}')
            phrases.append((start, start + len(sentence), decode_segmentation(segmentation, H, W)))
        return image_path, caption, phrases

    def _phrase_count(self, record: Any) -> int:
        return len(record.get('refs') or []) if isinstance(record, dict) else 0


class FlickrGCGDataset(_GCGDataset):
    """Flickr30k GCG data (``flickr_mergedGT_GCG_train.json``), COCO style.

    Layout::

        annotation_file: {
            "images": [{"id": 7, "file_name": "1000092795.jpg", "height": H, "width": W,
                        "caption": "Two young guys ..."}, ...],
            "annotations": [{"image_id": 7, "bbox": [x, y, w, h], "area": a, "iscrowd": 0,
                             "tokens_positive": [[start, end], ...],  # the phrase: first span
                             "sam_mask": {"size": [H, W], "counts": "..."}}, ...]}

    The image file is the last ``_``-separated part of ``file_name`` inside ``image_folder``
    (GLaMM's naming). Images whose caption has fewer than 3 words or whose shorter side (json
    ``height``/``width``) is under 32 pixels are dropped when loading; annotations flagged
    ``ignore`` or with an empty box are left out.
    """

    def load_records(self) -> list[dict]:
        data = _load_json(self.annotation_file)
        if not isinstance(data, dict) or not isinstance(data.get('images'), list):
            raise ValueError(f'{self.annotation_file}: expected a COCO-style dict with "images" '
                             'and "annotations"')
        per_image = defaultdict(list)
        for ann in data.get('annotations', []):
            per_image[ann.get('image_id')].append(ann)
        records = []
        for info in data['images']:
            if not isinstance(info, dict):
                records.append(info)  # skipped with its reason when drawn
                continue
            caption = info.get('caption')
            if not isinstance(caption, str) or len(caption.split()) < MIN_CAPTION_WORDS:
                continue
            if _short_side(info) < MIN_IMAGE_SIDE:
                continue
            records.append(dict(info, annotations=per_image.get(info.get('id'), [])))
        return records

    def parse_record(self, record: Any) -> tuple[str, str, list[tuple[int, int, np.ndarray]]]:
        file_name = _require(record, 'file_name', str, 'Flickr GCG image')
        caption = record['caption']
        if _short_side(record) == math.inf:
            raise MalformedSample(f'bad height/width: Flickr GCG image {file_name!r} lacks valid '
                                  'ones')
        H, W = int(record['height']), int(record['width'])
        phrases = []
        for ann in record['annotations']:
            if ann.get('ignore', False) or not _has_area(ann):
                continue
            spans = _require(ann, 'tokens_positive', list, f'annotation of {file_name!r}')
            if not spans or not isinstance(spans[0], list) or len(spans[0]) != 2:
                raise MalformedSample(f'bad tokens_positive: {spans!r} in an annotation of '
                                      f'{file_name!r} is not '
                                      '[[start, end], ...]')
            sam_mask = _require(ann, 'sam_mask', dict, f'annotation of {file_name!r}')
            phrases.append((spans[0][0], spans[0][1], decode_segmentation(sam_mask, H, W)))
        return os.path.join(self.image_folder, file_name.split('_')[-1]), caption, phrases

    def _phrase_count(self, record: Any) -> int:
        return len(record.get('annotations') or []) if isinstance(record, dict) else 0


def _short_side(info: dict) -> float:
    """The shorter of an image entry's ``height`` and ``width``; infinite when they are missing or
    not numbers (the row is kept at load time and skipped with its reason when drawn)."""
    try:
        return min(int(info['height']), int(info['width']))
    except (KeyError, TypeError, ValueError):
        return math.inf


def _has_area(ann: dict) -> bool:
    """GLaMM's box filter: annotations with a degenerate box or a non-positive area carry no
    phrase."""
    if 'bbox' not in ann:
        return True
    bbox = ann['bbox']
    if not (isinstance(bbox, list) and len(bbox) == 4):
        raise MalformedSample(f'bad bbox: {bbox!r} is not [x, y, w, h]')
    return bbox[2] >= 1 and bbox[3] >= 1 and ann.get('area', 1) > 0


__all__ = ['ground_caption', 'read_image_size', 'GranDfGCGDataset', 'OpenPsgGCGDataset',
           'RefCOCOgGCGDataset', 'FlickrGCGDataset']
