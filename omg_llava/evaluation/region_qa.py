"""Region question answering with closed answers: ask what colour / shape / object a masked region
is and check the answer against its known attributes (the held-out ``region_questions_val.json`` of
the synthetic shapes, ``projects/tiny_omg_llava/synthetic_shapes.py``).

Manifest layout (``DATA_ROOT/region_questions_{split}.json``)::

    {"colours": ["red", ...], "kinds": ["circle", ...],
     "chance": {"colour": 1/6, "kind": 1/4, "colour_kind": 1/24},  # accuracy of a uniform guess
     "images": [{"image": path relative to DATA_ROOT, "height", "width",
                 "regions": [{"segmentation": RLE or polygons, "colour", "kind", ...}, ...]}, ...]}

Each image gives one sample per (region, question): all of its regions are shown as ``region{i}
<region>`` in the first line, as the Osprey conversation data do, followed by one of
:data:`QUESTIONS`. An answer is right when the first colour (and/or shape) word it names is the
region's. The split is :class:`~omg_llava.evaluation.splits.RegionQASplit`, each record
:func:`~omg_llava.evaluation.runner.region_qa_record`.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

#: question kind → (question template, attributes the answer must name)
QUESTIONS = {
    'what': ('What is region{r}?', ('colour', 'kind')),
    'colour': ('What colour is region{r}?', ('colour', )),
    'shape': ('What shape is region{r}?', ('kind', )),
}
REGION_LIST = 'There are some regions: {names}.\n'

def question_prompt(num_regions: int, question: str) -> str:
    """``"There are some regions: region1 <region>, region2 <region>.\\n" + question``."""
    names = ', '.join(f'region{i} <region>' for i in range(1, num_regions + 1))
    return REGION_LIST.format(names=names) + question


def first_word(text: str, words: Sequence[str]) -> str | None:
    """The word of ``words`` that occurs first in ``text`` (whole words, case-insensitive), or
    ``None``."""
    found = [(m.start(), w) for w in words
             for m in [re.search(rf'\b{re.escape(w)}\b', text, re.IGNORECASE)] if m]
    return min(found)[1] if found else None


def region_qa_summary(chance: dict[str, float], records: Sequence[dict]) -> dict:
    """Accuracy per question kind next to ``chance`` (the manifest's rate per attribute set) and the
    number of answers."""
    metrics: dict[str, Any] = {}
    for kind, (_, needed) in QUESTIONS.items():
        rows = [r for r in records if r['question_kind'] == kind]
        if rows:
            metrics[f'accuracy_{kind}'] = sum(r['correct'] for r in rows) / len(rows)
            metrics[f'chance_{kind}'] = chance['_'.join(needed)]
            metrics[f'num_{kind}'] = len(rows)
    return metrics
