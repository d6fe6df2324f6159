"""Question and answer templates of the segmentation datasets (spec §8.4).

The answer format is the reference's: the segmented phrase between ``<p>``/``</p>`` followed by ``[SEG]``
(``"<p> {Sentence} </p> [SEG]."``). The question lists are this project's own wording; only their role and the
GCG questions' closing instruction follow the spec.
"""
from __future__ import annotations

from omg_llava.utils.constants import PHRASE_END, PHRASE_START, SEG_TOKEN

_INTERLEAVED = 'Please respond with interleaved segmentation masks for the corresponding parts of the answer.'

#: Grounded-caption (GCG) questions: a caption whose grounded phrases each carry a [SEG].
GCG_QUESTIONS = (
    f'Can you describe this image in a few sentences? {_INTERLEAVED}',
    f'What is going on in this picture? Answer briefly. {_INTERLEAVED}',
    f'Write a short caption for the scene shown here. {_INTERLEAVED}',
    f'Briefly tell me what you can see in the image. {_INTERLEAVED}',
    f'Give a concise summary of what this photo shows. {_INTERLEAVED}',
    f'Could you describe the main contents of the picture? {_INTERLEAVED}',
)

#: Semantic segmentation: ``{class_name}`` is the category, as written in the class list.
SEMANTIC_SEG_QUESTIONS = (
    'Can you segment the {class_name} in this image?',
    'Please segment the {class_name} in this image.',
    'What is the {class_name} in this image? Please respond with a segmentation mask.',
    'Where is the {class_name} in this picture? Please output a segmentation mask.',
    'Could you give me a mask of the {class_name} in the image?',
    'Highlight all pixels that belong to the {class_name}.',
    'Show me where the {class_name} appears in this photo, as a segmentation mask.',
    'Mark the region covered by the {class_name} in this image.',
    'Which part of the picture is {class_name}? Answer with a mask.',
    'Find the {class_name} in the image and segment it.',
    'I am looking for the {class_name}. Can you outline it with a mask?',
    'Produce a segmentation mask for the category "{class_name}".',
    'Separate the {class_name} from the rest of the image.',
    'Please outline every area of {class_name} in this picture.',
    'Locate the {class_name} here and give its segmentation.',
    'Segment {class_name} in this photo, please.',
)

#: Referring segmentation: ``{sentence}`` is the referring expression.
REFERRING_SEG_QUESTIONS = (
    'Please segment {sentence} in this image.',
    'Can you segment {sentence} in this image?',
    'What is {sentence} in this picture? Please respond with a segmentation mask.',
    'Where is {sentence}? Please output a segmentation mask.',
    'Could you give me a mask of {sentence}?',
    'Find {sentence} in the image and segment it.',
    'Highlight {sentence} with a segmentation mask.',
    'Which object is {sentence}? Answer with its mask.',
)


def capitalise_first(text: str) -> str:
    """Upper-case the first character only (``'the man on the left'`` → ``'The man on the left'``; unlike
    :meth:`str.capitalize`, the rest is kept as is)."""
    return text[:1].upper() + text[1:]


def seg_answer(phrase: str) -> str:
    """The answer that segments one phrase: ``"<p> {Phrase} </p> [SEG]."`` (first letter capitalised)."""
    return f'{PHRASE_START} {capitalise_first(phrase.strip())} {PHRASE_END} {SEG_TOKEN}.'


__all__ = ['GCG_QUESTIONS', 'SEMANTIC_SEG_QUESTIONS', 'REFERRING_SEG_QUESTIONS', 'capitalise_first', 'seg_answer']
