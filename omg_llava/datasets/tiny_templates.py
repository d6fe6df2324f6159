"""The question wording the built-in tiny default
(``configs/tiny/omg_llava_tiny_synthetic_finetune.py``) was trained on: the project's own lists from
before the datasets took the released code's lists (:mod:`omg_llava.datasets.templates`). The tiny
recipe passes them to its datasets so that re-running it (``projects/tiny_omg_llava/train_tiny.py``)
still trains on the conversations the committed weights saw.
"""
from __future__ import annotations

_INTERLEAVED = ('Please respond with interleaved segmentation masks for the corresponding parts of '
                'the answer.')

#: GCG questions of the tiny recipe (GranD-f layout rows).
TINY_GCG_QUESTIONS = (
    f'Can you describe this image in a few sentences? {_INTERLEAVED}',
    f'What is going on in this picture? Answer briefly. {_INTERLEAVED}',
    f'Write a short caption for the scene shown here. {_INTERLEAVED}',
    f'Briefly tell me what you can see in the image. {_INTERLEAVED}',
    f'Give a concise summary of what this photo shows. {_INTERLEAVED}',
    f'Could you describe the main contents of the picture? {_INTERLEAVED}',
)

#: Referring segmentation questions of the tiny recipe; ``{class_name}`` is the referring
#: expression.
TINY_REFERRING_SEG_QUESTIONS = (
    'Please segment {class_name} in this image.',
    'Can you segment {class_name} in this image?',
    'What is {class_name} in this picture? Please respond with a segmentation mask.',
    'Where is {class_name}? Please output a segmentation mask.',
    'Could you give me a mask of {class_name}?',
    'Find {class_name} in the image and segment it.',
    'Highlight {class_name} with a segmentation mask.',
    'Which object is {class_name}? Answer with its mask.',
)

__all__ = ['TINY_GCG_QUESTIONS', 'TINY_REFERRING_SEG_QUESTIONS']
