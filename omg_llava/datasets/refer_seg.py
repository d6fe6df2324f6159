"""Referring-expression segmentation as multi-turn conversations (spec §8.3 rows 12–23, §8.4
"Referring seg").

Reads the REFER layout shared by RefCOCO, RefCOCO+, RefCOCOg and RefCLEF: a pickled list of
referring expressions plus a COCO-style ``instances.json`` with the images and their masks.
"""
from __future__ import annotations

import json
import os
import pickle
import random
from collections import defaultdict
from typing import Any, BinaryIO, Sequence

import numpy as np

from omg_llava.utils.conversation import Turn

from .base import CHARS_PER_TOKEN, OMGDatasetBase
from .mask_decoding import decode_segmentation
from .sample import GroundedConversation, MalformedSample
from .templates import REFERRING_SEG_QUESTIONS, SEG_ANSWERS, seg_answer, seg_question

#: Dataset directories and the split annotations each ships (``refs({split_by}).p``).
REFER_SPLITS = {'refcoco': ('unc', 'google'), 'refcoco+': ('unc', ), 'refcocog': ('umd', 'google'),
                'refclef': ('unc', 'berkeley')}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every class or function reference: only the built-in data opcodes
    (lists, dicts, tuples, strings, numbers, booleans, ``None``) can be loaded, so a crafted file
    cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f'the file refers to {module}.{name}; only plain lists, '
                                     'dicts, strings and numbers are accepted from a refs pickle '
                                     '(a pickle can run code on load)')


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
            raise ValueError(f'{path}: ref {ref.get("ref_id", "?")} lacks the keys '
                             f'{sorted(missing)}; is this a '
                             'REFER refs file?')
    return refs


def _load_data_only(f: BinaryIO, path: str | os.PathLike) -> Any:
    try:
        # Python 2 pickles store byte strings; REFER's are UTF-8 text.
        return _DataOnlyUnpickler(f, encoding='utf-8', errors='replace').load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f'refusing to load {path}: {exc}') from exc


#: How a conversation picks its referring sentences (``ReferSegDataset(sampling=...)``).
SAMPLING_MODES = ('sentences', 'refs')


class ReferSegDataset(OMGDatasetBase):
    """One multi-turn conversation per image: each turn asks to segment one referred object.

    On disk (REFER layout)::

        data_root/{dataset}/refs({split_by}).p   # pickled list of refs:
            {'ref_id', 'ann_id' (int or list), 'image_id', 'split', 'category_id',
             'sentences': [{'sent': 'man on the left', ...}, ...]}
        data_root/{dataset}/instances.json       # COCO style:
            images: [{'id', 'file_name', 'height', 'width'}], annotations: [{'id', 'image_id',
                'segmentation', ...}]
        image_folder/<file_name>      # COCO train2014 (RefCOCO*), saiapr_tc-12 (RefCLEF)

    Each record is one image with its refs of ``split``. With ``sampling='sentences'`` (the
    reference's), a conversation takes ``num_turns`` sentences drawn without replacement from all
    sentences of all refs of the image (all of them, in file order, when there are fewer), so two
    turns may name the same object. With ``sampling='refs'`` (the tiny recipe's), it takes up to
    ``num_turns`` distinct refs in random order and one random sentence of each. Each turn is a
    random template of ``questions`` filled with the sentence (stripped, lower-cased, a final full
    stop kept) and is answered ``"<p> {Sentence} </p> [SEG]."`` (``.capitalize()``d, spec §8.4), or
    with ``gcg_format=False`` by a random :data:`~omg_llava.datasets.templates.SEG_ANSWERS` answer,
    with the ref's mask (the union when it points to several annotations). The choices depend only
    on the seed and the row, so a row always gives the same conversation (the reference fixed them
    once at build time). Empty sentences are not used; an image left with none, a missing image or
    an undecodable mask makes the row malformed (skipped).

    Args:
        data_root: folder holding the ``{dataset}`` folders.
        dataset: ``'refcoco'``, ``'refcoco+'``, ``'refcocog'`` or ``'refclef'``.
        split_by: ``'unc'``, ``'umd'``, ``'google'`` or ``'berkeley'`` (picks
            ``refs({split_by}).p``).
        split: refs of this split (``'train'``, ``'val'``, ``'testA'``, ...).
        image_folder: root of the images' ``file_name``.
        num_turns: most turns per conversation (3 in the reference).
        sampling: ``'sentences'`` or ``'refs'`` (see above).
        questions: question templates with a ``{class_name}`` field (default: the reference's 16).
        gcg_format: answer ``"<p> {Sentence} </p> [SEG]."`` (the released mixture) instead of a
            plain answer.
        tokenizer, image_size, max_length, seed: see :class:`OMGDatasetBase`.
    """

    def __init__(self, data_root: str, image_folder: str, tokenizer: Any, dataset: str = 'refcoco',
                 split_by: str = 'unc', split: str = 'train', num_turns: int = 3,
                 sampling: str = 'sentences',
                 questions: Sequence[str] = REFERRING_SEG_QUESTIONS, gcg_format: bool = True,
                 image_size: int = 1024, max_length: int = 1692, seed: int = 0) -> None:
        if num_turns < 1:
            raise ValueError(f'num_turns must be ≥ 1, got {num_turns}')
        if sampling not in SAMPLING_MODES:
            raise ValueError(f'sampling must be one of {SAMPLING_MODES}, got {sampling!r}')
        if not questions or any('{class_name}' not in q for q in questions):
            raise ValueError('questions must be templates that each hold {class_name}')
        self.data_root = data_root
        self.dataset = dataset
        self.split_by = split_by
        self.split = split
        self.image_folder = image_folder
        self.num_turns = num_turns
        self.sampling = sampling
        self.questions = tuple(questions)
        self.gcg_format = gcg_format
        super().__init__(tokenizer, image_size=image_size, max_length=max_length, seed=seed)

    @property
    def source(self) -> str:
        return self.refs_path

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
                                        f'data_root/{{dataset}}/refs({{split_by}}).p + '
                                        f'instances.json ({known})')
        with open(self.instances_path, encoding='utf-8') as f:
            instances = json.load(f)
        self._images = {img['id']: img for img in instances['images']}
        self._segmentations = {ann['id']: ann['segmentation'] for ann in instances['annotations']}
        by_image: dict[Any, list[dict]] = defaultdict(list)
        for ref in load_refs(self.refs_path):
            if ref['split'] == self.split:
                by_image[ref['image_id']].append(dict(ann_id=ref['ann_id'],
                                                      sentences=_sentences(ref['sentences'])))
        if not by_image:
            raise ValueError(f'{self.refs_path} has no refs of split {self.split!r}')
        return [dict(image_id=image_id, refs=refs) for image_id, refs in sorted(by_image.items())]

    def build_conversation(self, record: dict, rng: random.Random) -> GroundedConversation:
        image = self._images.get(record['image_id'])
        if image is None:
            raise MalformedSample(f'image not in instances.json: id {record["image_id"]}')
        picks = self._pick_refs(record['refs'], rng)
        if not picks:
            raise MalformedSample(f'no referring sentence: image {image["file_name"]}')
        turns, masks = [], []
        for sentences, ann_id in picks:
            sentence = rng.choice(sentences)
            answer = seg_answer(sentence) if self.gcg_format else rng.choice(SEG_ANSWERS)
            turns.append(Turn(seg_question(rng.choice(self.questions), sentence), answer))
            masks.append(self._ref_mask(ann_id, image['height'], image['width']))
        return GroundedConversation(os.path.join(self.image_folder, image['file_name']), turns,
                                    masks=masks)

    def _pick_refs(self, refs: list[dict], rng: random.Random) -> list[tuple[list[str], Any]]:
        """``(candidate sentences, ann_id)`` per turn, drawn as ``sampling`` says; each turn then
        names one random candidate (``'sentences'``: the one drawn; ``'refs'``: any sentence of the
        ref)."""
        if self.sampling == 'refs':
            usable = [ref for ref in refs if ref['sentences']]
            return [(ref['sentences'], ref['ann_id'])
                    for ref in rng.sample(usable, min(self.num_turns, len(usable)))]
        pool = [([sentence], ref['ann_id']) for ref in refs for sentence in ref['sentences']]
        if len(pool) < self.num_turns:
            return pool
        return [pool[i] for i in rng.sample(range(len(pool)), self.num_turns)]

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
        per_ref = self.sampling == 'refs'  # one sentence per ref, or any sentences
        sentences = [
            s for ref in record['refs'] for s in ref['sentences'][: 1 if per_ref else None]
        ][: self.num_turns]
        # per turn: template (~45 chars) + sentence in question and answer + "<p> </p> [SEG]."
        # markup
        chars = sum(45 + 2 * len(sentence) + 20 for sentence in sentences)
        return max(1, chars // CHARS_PER_TOKEN)


def _sentences(sentences: Any) -> list[str]:
    """The referring expressions of a ref as written (``sent``), less empty ones."""
    if not isinstance(sentences, list):
        return []
    texts = (s.get('sent') if isinstance(s, dict) else s for s in sentences)
    return [t for t in texts if isinstance(t, str) and t.strip()]


def normalised_sentences(sentences: Any) -> list[str]:
    """The non-empty referring expressions of a ref, whitespace collapsed and a trailing full stop
    dropped (the OMG-Seg pre-stage's referring lookups,
    :class:`~omg_llava.datasets.coco_instances.CocoInstanceDataset`)."""
    cleaned = (' '.join(t.split()).rstrip('. ') for t in _sentences(sentences))
    return [t for t in cleaned if t]


__all__ = ['ReferSegDataset', 'load_refs', 'normalised_sentences', 'REFER_SPLITS', 'SAMPLING_MODES']
