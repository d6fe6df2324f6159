"""Question templates for region-prompted data (spec §8.4, Osprey region captioning).

Every template holds one ``<region>`` placeholder; the dataset replaces it with ``region{i} <region>`` so the
conversation can name the region and the model receives its prompt embedding at the ``<region>`` token.
"""
from __future__ import annotations

from omg_llava.utils.constants import REGION_TOKEN

#: Requests for a detailed description of one region.
REGION_CAPTION_QUESTIONS: tuple[str, ...] = (
    f'Can you describe {REGION_TOKEN} in detail?',
    f'Please give a detailed description of {REGION_TOKEN}.',
    f'What can you tell me about {REGION_TOKEN}? Describe it thoroughly.',
    f'Describe everything you can see in {REGION_TOKEN}.',
    f'Write a detailed description of the content of {REGION_TOKEN}.',
    f'Look at {REGION_TOKEN} and explain in detail what it shows.',
    f'Give me a thorough account of what is inside {REGION_TOKEN}.',
    f'How would you describe {REGION_TOKEN} to someone who cannot see the image? Be detailed.',
    f'Tell me in detail about the object or area marked by {REGION_TOKEN}.',
    f'Provide an elaborate description of {REGION_TOKEN}, covering its appearance and context.',
)

#: The question that asks for the mask of an already named region (spec §8.4); ``{name}`` is e.g. ``region2``.
#: Its answer is :func:`omg_llava.datasets.templates.seg_answer` of the name (``<p> Region2 </p> [SEG].``).
REGION_SEGMENT_QUESTION = 'Please segment the {name}.'


def fill_region_question(template: str, index: int) -> str:
    """Put the named placeholder ``region{index} <region>`` into a template (``index`` counts from 1)."""
    if template.count(REGION_TOKEN) != 1:
        raise ValueError(f'a region question template needs exactly one {REGION_TOKEN}: {template!r}')
    return template.replace(REGION_TOKEN, f'region{index} {REGION_TOKEN}')


__all__ = ['REGION_CAPTION_QUESTIONS', 'REGION_SEGMENT_QUESTION', 'fill_region_question']
