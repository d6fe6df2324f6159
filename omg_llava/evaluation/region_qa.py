"""Region question answering with closed answers: ask what colour / shape / object a masked region is and check the
answer against its known attributes (the held-out ``region_questions_val.json`` of the synthetic shapes,
``projects/tiny_omg_llava/synthetic_shapes.py``).

Manifest layout (``DATA_ROOT/region_questions_{split}.json``)::

    {"colours": ["red", ...], "kinds": ["circle", ...],
     "chance": {"colour": 1/6, "kind": 1/4, "colour_kind": 1/24},          # accuracy of a uniform guess
     "images": [{"image": path relative to DATA_ROOT, "height", "width",
                 "regions": [{"segmentation": RLE or polygons, "colour", "kind", ...}, ...]}, ...]}

Each image gives one sample per (region, question): all of its regions are shown as ``region{i} <region>`` in the
first line, as the Osprey conversation data do, followed by one of :data:`QUESTIONS`. An answer is right when the
first colour (and/or shape) word it names is the region's.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

from omg_llava.datasets.mask_decoding import decode_segmentation
from omg_llava.datasets.sample import MalformedSample

#: question kind → (question template, attributes the answer must name)
QUESTIONS = {
    'what': ('What is region{r}?', ('colour', 'kind')),
    'colour': ('What colour is region{r}?', ('colour', )),
    'shape': ('What shape is region{r}?', ('kind', )),
}
REGION_LIST = 'There are some regions: {names}.\n'

RegionQAPredict = Callable[[str, str, Sequence[np.ndarray]], Any]


class RegionQASplit:
    """One sample per (image, region, question kind).

    Attributes:
        samples: ``index``, ``image``, ``height``, ``width``, ``region`` (1-based), ``question_kind``,
            ``question``, ``colour``, ``kind``.
        vocabulary: ``{'colour': [...], 'kind': [...]}`` the words an answer is parsed for.
        chance: accuracy of a uniform guess per attribute set (``colour``, ``kind``, ``colour_kind``).
    """

    task = 'region_qa'

    def __init__(self, data_root: str, split: str, question_kinds: Sequence[str] = tuple(QUESTIONS)) -> None:
        path = os.path.join(data_root, f'region_questions_{split}.json')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path} not found: region_qa reads region_questions_<split>.json under '
                                    '--data-root (written by projects/tiny_omg_llava/synthetic_shapes.py)')
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        missing = {'colours', 'kinds', 'chance', 'images'} - set(data if isinstance(data, dict) else ())
        if missing:
            raise ValueError(f'{path}: not a region-question manifest, missing {sorted(missing)}')
        unknown = [k for k in question_kinds if k not in QUESTIONS]
        if unknown:
            raise ValueError(f'unknown question kinds {unknown}; choose from {list(QUESTIONS)}')
        self.data_root = data_root
        self.vocabulary = {'colour': list(data['colours']), 'kind': list(data['kinds'])}
        self.chance = dict(data['chance'])
        self._segmentations: dict[str, list] = {}
        self.samples = []
        for image in data['images']:
            self._segmentations[image['image']] = [r['segmentation'] for r in image['regions']]
            for r, region in enumerate(image['regions'], start=1):
                for kind in question_kinds:
                    self.samples.append(dict(
                        index=len(self.samples), image=image['image'], height=image['height'],
                        width=image['width'], region=r, question_kind=kind,
                        question=question_prompt(len(image['regions']), QUESTIONS[kind][0].format(r=r)),
                        colour=region['colour'], kind=region['kind']))

    def image_path(self, sample: dict) -> str:
        return os.path.join(self.data_root, sample['image'])

    def region_masks(self, sample: dict) -> list[np.ndarray]:
        """(H, W) bool mask of every region of the sample's image, in ``region{i}`` order."""
        H, W = sample['height'], sample['width']
        try:
            return [decode_segmentation(s, H, W) for s in self._segmentations[sample['image']]]
        except MalformedSample as exc:
            raise ValueError(f'regions of {sample["image"]}: {exc}') from exc


def question_prompt(num_regions: int, question: str) -> str:
    """``"There are some regions: region1 <region>, region2 <region>.\\n" + question``."""
    names = ', '.join(f'region{i} <region>' for i in range(1, num_regions + 1))
    return REGION_LIST.format(names=names) + question


def first_word(text: str, words: Sequence[str]) -> str | None:
    """The word of ``words`` that occurs first in ``text`` (whole words, case-insensitive), or ``None``."""
    found = [(m.start(), w) for w in words for m in [re.search(rf'\b{re.escape(w)}\b', text, re.IGNORECASE)] if m]
    return min(found)[1] if found else None


def run_region_qa(split: RegionQASplit, predict: RegionQAPredict, indices: Sequence[int],
                  progress: bool = True) -> list[dict]:
    """One record per sample: the answer, the attribute words read from it and whether they are right."""
    from .runner import _progress
    records = []
    for i in _progress(indices, 'region_qa', progress):
        sample = split.samples[i]
        answer = predict(split.image_path(sample), sample['question'], split.region_masks(sample))
        said = {attr: first_word(answer.text, split.vocabulary[attr]) for attr in split.vocabulary}
        needed = QUESTIONS[sample['question_kind']][1]
        records.append(dict(sample, answer=answer.text, said_colour=said['colour'], said_kind=said['kind'],
                            correct=all(said[attr] == sample[attr] for attr in needed)))
    return records


def region_qa_summary(split: RegionQASplit, records: Sequence[dict]) -> dict:
    """Accuracy per question kind next to the chance rate of its attributes, and the number of answers."""
    metrics: dict[str, Any] = {}
    for kind, (_, needed) in QUESTIONS.items():
        rows = [r for r in records if r['question_kind'] == kind]
        if rows:
            metrics[f'accuracy_{kind}'] = sum(r['correct'] for r in rows) / len(rows)
            metrics[f'chance_{kind}'] = split.chance['_'.join(needed)]
            metrics[f'num_{kind}'] = len(rows)
    return metrics
