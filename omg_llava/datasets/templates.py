"""Question and answer templates of the segmentation datasets: the released code's lists, verbatim
(spec §8.4, ``shared/spec/prompts.md``).

The strings are data the released weights were trained on, typos ("the this image") and missing
final punctuation included. The reference writes the GCG questions as ``<image>`` + question; the
chat template then puts ``<image>\\n`` in front of the first question (spec §5.4), which
:func:`omg_llava.utils.conversation. encode_conversation` does for every first question, so the
lists here hold the question text only.
"""
from __future__ import annotations

from omg_llava.utils.constants import PHRASE_END, PHRASE_START, SEG_TOKEN

#: Grounded-caption (GCG) questions of the training data (``gcg_process.py``): one drawn per sample.
GCG_QUESTIONS = (
    'Could you please give me a detailed description of the image? Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
    'Can you provide a thorough description of the this image? Please output with interleaved '
    'segmentation masks for the corresponding phrases.',
    'Please describe in detail the contents of the image. Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
    'Could you give a comprehensive explanation of what can be found within this picture? Please '
    'output with interleaved segmentation masks for the corresponding phrases.',
    'Could you give me an elaborate explanation of this picture? Please respond with interleaved '
    'segmentation masks for the corresponding phrases.',
    'Could you provide me with a detailed analysis of this photo? Please output with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
)

#: Segmentation questions; ``{class_name}`` is the lower-cased category (semantic segmentation) or
#: referring sentence (referring segmentation). The reference's two lists
#: (``semantic_seg_process.py``, ``referring_seg_process.py``) are identical.
SEG_QUESTIONS = (
    'Can you segment the {class_name} in this image?',
    'Please segment {class_name} in this image.',
    'What is {class_name} in this image? Please respond with segmentation mask.',
    'What is {class_name} in this image? Please output segmentation mask.',
    'Can you segment the {class_name} in this image',
    'Please segment {class_name} in this image',
    'What is {class_name} in this image? Please respond with segmentation mask',
    'What is {class_name} in this image? Please output segmentation mask',
    'Could you provide a segmentation mask for the {class_name} in this image?',
    'Please identify and segment the {class_name} in this image.',
    'Where is the {class_name} in this picture? Please respond with a segmentation mask.',
    'Can you highlight the {class_name} in this image with a segmentation mask?',
    'Could you provide a segmentation mask for the {class_name} in this image',
    'Please identify and segment the {class_name} in this image',
    'Where is the {class_name} in this picture? Please respond with a segmentation mask',
    'Can you highlight the {class_name} in this image with a segmentation mask',
)
SEMANTIC_SEG_QUESTIONS = SEG_QUESTIONS
REFERRING_SEG_QUESTIONS = SEG_QUESTIONS

#: The plain answers (``ANSWER_LIST``): used when a dataset is built with ``gcg_format=False``.
SEG_ANSWERS = (
    'It is [SEG].',
    'Sure, [SEG].',
    'Sure, it is [SEG].',
    'Sure, the segmentation result is [SEG].',
    '[SEG].',
)

#: The GCG-format answer (``ANSWER_LIST_GCG_FORMAT``), the one the released finetune mixture uses.
GCG_FORMAT_ANSWER = f'{PHRASE_START} {{}} {PHRASE_END} {SEG_TOKEN}.'


def seg_question(template: str, phrase: str) -> str:
    """A segmentation question about ``phrase``: the template with the stripped, lower-cased
    phrase."""
    return template.format(class_name=phrase.strip().lower())


def seg_answer(phrase: str) -> str:
    """The GCG-format answer that segments one phrase, ``"<p> {Phrase} </p> [SEG]."``, the phrase
    written as the reference writes it: stripped, ``.lower().capitalize()`` (``'The man. '`` →
    ``'The man.'``, ``'region2'`` → ``'Region2'``)."""
    return GCG_FORMAT_ANSWER.format(phrase.strip().lower().capitalize())


__all__ = ['GCG_QUESTIONS', 'SEG_QUESTIONS', 'SEMANTIC_SEG_QUESTIONS', 'REFERRING_SEG_QUESTIONS',
           'SEG_ANSWERS', 'GCG_FORMAT_ANSWER', 'seg_question', 'seg_answer']
