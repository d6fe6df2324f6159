"""Referring-expression segmentation as multi-turn conversations (spec §8.3 rows 12–23, §8.4 "Referring seg").

Reads the REFER layout shared by RefCOCO, RefCOCO+, RefCOCOg and RefCLEF: a pickled list of referring
expressions plus a COCO-style ``instances.json`` with the images and their masks.
"""
from __future__ import annotations

import json
import os
import pickle
import random
from collections import defaultdict
from typing import Any, BinaryIO

import numpy as np

from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase
from .mask_decoding import decode_segmentation
from .sample import GroundedConversation, MalformedSample
from .templates import REFERRING_SEG_QUESTIONS, seg_answer

#: Dataset directories and the split annotations each ships (``refs({split_by}).p``).
REFER_SPLITS = {'refcoco': ('unc', 'google'), 'refcoco+': ('unc', ), 'refcocog': ('umd', 'google'),
                'refclef': ('unc', 'berkeley')}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class or function reference: only the built-in data opcodes (lists, dicts,
    tuples, strings, numbers, booleans, ``None``) can be loaded, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f'the file refers to {module}.{name}; only plain lists, dicts, strings and '
                                     'numbers are accepted from a refs pickle (a pickle can run code on load)')


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Read a REFER ``refs(*).p`` file without executing anything it contains.

    Raises:
        ValueError: the file references classes or functions, or is not a list of ref dicts.
    """
    with open(path, 'rb') as f:
        refs = _load_data_only(f, path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f'{path}: expected a pickled list of ref dicts, got {type(refs).__name__}')
    for ref in refs:
        missing = {'image_id', 'ann_id', 'split', 'sentences'} - ref.keys()
        if missing:
            raise ValueError(f'{path}: ref {ref.get("ref_id", "?")} lacks the keys {sorted(missing)}; is this a '
                             'REFER refs file?')
    return refs


def _load_data_only(f: BinaryIO, path: str | os.PathLike) -> Any:
    try:
        # Python 2 pickles store byte strings; REFER's are UTF-8 text.
        return _DataOnlyUnpickler(f, encoding='utf-8', errors='replace').load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f'refusing to load {path}: {exc}') from exc


class ReferSegDataset(OMGDatasetBase):
    """One multi-turn conversation per image: each turn asks to segment one referred object.

    On disk (REFER layout)::

        data_root/{dataset}/refs({split_by}).p   # pickled list of refs:
            {'ref_id', 'ann_id' (int or list), 'image_id', 'split', 'category_id',
             'sentences': [{'sent': 'man on the left', ...}, ...]}
        data_root/{dataset}/instances.json       # COCO style:
            images: [{'id', 'file_name', 'height', 'width'}], annotations: [{'id', 'image_id', 'segmentation', ...}]
        image_folder/<file_name>                  # COCO train2014 (RefCOCO*), saiapr_tc-12 (RefCLEF)

    Each record is one image with its refs of ``split``. A conversation takes up to ``num_turns`` distinct refs
    of the image in random order; each turn is a random template from
    :data:`~omg_llava.datasets.templates.REFERRING_SEG_QUESTIONS` with one random sentence of the ref, answered by
    ``"<p> {Sentence} </p> [SEG]."``, with the ref's mask (the union when it points to several annotations).
    The choices depend only on the seed and the row, so a row always gives the same conversation (the
    reference fixed them once at build time). Refs without sentences are not used; an image left with none, a
    missing image or an undecodable mask makes the row malformed (skipped).

    Args:
        data_root: folder holding the ``{dataset}`` folders.
        dataset: ``'refcoco'``, ``'refcoco+'``, ``'refcocog'`` or ``'refclef'``.
        split_by: ``'unc'``, ``'umd'``, ``'google'`` or ``'berkeley'`` (picks ``refs({split_by}).p``).
        split: refs of this split (``'train'``, ``'val'``, ``'testA'``, ...).
        image_folder: root of the images' ``file_name``.
        num_turns: most turns (referred objects) per conversation (3 in the reference).
        tokenizer, image_size, max_length, seed: see :class:`OMGDatasetBase`.
    """

    def __init__(self, data_root: str, image_folder: str, tokenizer: Any, dataset: str = 'refcoco',
                 split_by: str = 'unc', split: str = 'train', num_turns: int = 3, image_size: int = 1024,
                 max_length: int = 1692, seed: int = 0) -> None:
        if num_turns < 1:
            raise ValueError(f'num_turns must be ≥ 1, got {num_turns}')
        self.data_root = data_root
        self.dataset = dataset
        self.split_by = split_by
        self.split = split
        self.image_folder = image_folder
        self.num_turns = num_turns
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    @property
    def refs_path(self) -> str:
        return os.path.join(self.data_root, self.dataset, f'refs({self.split_by}).p')

    @property
    def instances_path(self) -> str:
        return os.path.join(self.data_root, self.dataset, 'instances.json')

    def load_records(self) -> list[dict]:
        for path in (self.refs_path, self.instances_path):
            if not os.path.isfile(path):
                known = ', '.join(f'{d}: {"/".join(s)}' for d, s in REFER_SPLITS.items())
                raise FileNotFoundError(f'{path} not found; expected the REFER layout '
                                        f'data_root/{{dataset}}/refs({{split_by}}).p + instances.json ({known})')
        with open(self.instances_path, encoding='utf-8') as f:
            instances = json.load(f)
        self._images = {img['id']: img for img in instances['images']}
        self._segmentations = {ann['id']: ann['segmentation'] for ann in instances['annotations']}
        by_image: dict[Any, list[dict]] = defaultdict(list)
        for ref in load_refs(self.refs_path):
            if ref['split'] == self.split:
                by_image[ref['image_id']].append(dict(ann_id=ref['ann_id'], sentences=_sentences(ref['sentences'])))
        if not by_image:
            raise ValueError(f'{self.refs_path} has no refs of split {self.split!r}')
        return [dict(image_id=image_id, refs=refs) for image_id, refs in sorted(by_image.items())]

    def build_conversation(self, record: dict, rng: random.Random) -> GroundedConversation:
        image = self._images.get(record['image_id'])
        if image is None:
            raise MalformedSample(f'image not in instances.json: id {record["image_id"]}')
        usable = [ref for ref in record['refs'] if ref['sentences']]
        if not usable:
            raise MalformedSample(f'no referring sentence: image {image["file_name"]}')
        turns, masks = [], []
        for ref in rng.sample(usable, min(self.num_turns, len(usable))):
            sentence = rng.choice(ref['sentences'])
            turns.append(Turn(rng.choice(REFERRING_SEG_QUESTIONS).format(sentence=sentence), seg_answer(sentence)))
            masks.append(self._ref_mask(ref['ann_id'], image['height'], image['width']))
        return GroundedConversation(os.path.join(self.image_folder, image['file_name']), turns, masks=masks)

    def _ref_mask(self, ann_ids: Any, height: int, width: int) -> np.ndarray:
        ann_ids = ann_ids if isinstance(ann_ids, (list, tuple)) else [ann_ids]
        if not ann_ids:
            raise MalformedSample('ref without annotation: empty ann_id list')
        mask = np.zeros((height, width), dtype=bool)
        for ann_id in ann_ids:
            if ann_id not in self._segmentations:
                raise MalformedSample(f'unknown annotation: id {ann_id} is not in instances.json')
            mask |= decode_segmentation(self._segmentations[ann_id], height, width)
        return mask

    def record_length(self, record: dict) -> int:
        refs = [ref for ref in record['refs'] if ref['sentences']][:self.num_turns]
        # per turn: template (~45 chars) + sentence in question and answer + "<p> </p> [SEG]." markup
        chars = sum(45 + 2 * len(ref['sentences'][0]) + 20 for ref in refs)
        return max(1, chars // CHARS_PER_TOKEN)


def _sentences(sentences: Any) -> list[str]:
    """The non-empty referring expressions of a ref (whitespace collapsed, trailing full stop dropped)."""
    if not isinstance(sentences, list):
        return []
    texts = (s.get('sent') if isinstance(s, dict) else s for s in sentences)
    cleaned = (' '.join(t.split()).rstrip('. ') for t in texts if isinstance(t, str))
    return [t for t in cleaned if t]


__all__ = ['ReferSegDataset', 'load_refs', 'REFER_SPLITS']
