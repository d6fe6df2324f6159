"""Question templates for region-prompted data: the released code's Osprey region-caption questions,
verbatim (``region_caption_process.py``, ``shared/spec/prompts.md``; spec §8.4).

Every template holds one ``<region>`` placeholder; the dataset replaces it with ``region{i}
<region>`` so the conversation can name the region and the model receives its prompt embedding at
the ``<region>`` token.
"""
from __future__ import annotations

from omg_llava.utils.constants import REGION_TOKEN

#: Requests for a detailed description of one region (``REGION_QUESTIONS``).
REGION_CAPTION_QUESTIONS: tuple[str, ...] = (
    'Can you provide me with a detailed description of the region in the picture marked by '
    '<region>?',
    "I'm curious about the region represented by <region> in the picture. Could you describe it in "
    "detail?",
    'What can you tell me about the region indicated by <region> in the image?',
    "I'd like to know more about the area in the photo labeled <region>. Can you give me a "
    "detailed description?",
    'Could you describe the region shown as <region> in the picture in great detail?',
    'What details can you give me about the region outlined by <region> in the photo?',
    'Please provide me with a comprehensive description of the region marked with <region> in the '
    'image.',
    'Can you give me a detailed account of the region labeled as <region> in the picture?',
    "I'm interested in learning more about the region represented by <region> in the photo. Can "
    "you describe it in "
    'detail?',
    'What is the region outlined by <region> in the picture like? Could you give me a detailed '
    'description?',
    'Can you provide me with a detailed description of the region in the picture marked by '
    '<region>, please?',
    "I'm curious about the region represented by <region> in the picture. Could you describe it in "
    "detail, please?",
    'What can you tell me about the region indicated by <region> in the image, exactly?',
    "I'd like to know more about the area in the photo labeled <region>, please. Can you give me a "
    "detailed "
    'description?',
    'Could you describe the region shown as <region> in the picture in great detail, please?',
    'What details can you give me about the region outlined by <region> in the photo, please?',
    'Please provide me with a comprehensive description of the region marked with <region> in the '
    'image, please.',
    'Can you give me a detailed account of the region labeled as <region> in the picture, please?',
    "I'm interested in learning more about the region represented by <region> in the photo. Can "
    "you describe it in "
    'detail, please?',
    'What is the region outlined by <region> in the picture like, please? Could you give me a '
    'detailed description?',
)

#: The question that asks for the mask of an already named region (spec §8.4); ``{name}`` is e.g.
#: ``region2``. Its answer is :func:`omg_llava.datasets.templates.seg_answer` of the name (``<p>
#: Region2 </p> [SEG].``).
REGION_SEGMENT_QUESTION = 'Please segment the {name}.'


def fill_region_question(template: str, index: int) -> str:
    """Put the named placeholder ``region{index} <region>`` into a template (``index`` counts from
    1)."""
    if template.count(REGION_TOKEN) != 1:
        raise ValueError(f'a region question template needs exactly one {REGION_TOKEN}: '
                         f'{template!r}')
    return template.strip().replace(REGION_TOKEN, f'region{index} {REGION_TOKEN}')


__all__ = ['REGION_CAPTION_QUESTIONS', 'REGION_SEGMENT_QUESTION', 'fill_region_question']
