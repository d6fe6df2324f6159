"""What every data source produces: one grounded conversation about one image (spec §8.4).

Dataset classes only parse their annotation format into :class:`GroundedConversation`; everything
after (image preprocessing, tokenisation with the chat template, prompt/mask transforms) is shared
(:mod:`omg_llava.datasets.encoding`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from omg_llava.utils.constants import MARK_TOKEN, REGION_TOKEN, SEG_TOKEN
from omg_llava.utils.conversation import Turn


class MalformedSample(ValueError):
    """A dataset row that cannot become a training sample (missing image, bad mask, count mismatch,
    ...). Datasets skip such rows with a counted warning instead of crashing a long run.

    The message starts with a fixed category, then a colon and the details (``'image not found:
    a/b.jpg'``): skips are counted by the category, so it must not hold a path, a number or
    coordinates.
    """


@dataclass
class GroundedConversation:
    """One training conversation in original-image coordinates.

    Attributes:
        image_path: the image file, or ``None`` for a text-only conversation.
        turns: question/answer turns; ``<image>`` is added to the first question by the encoder,
            ``<region>`` and ``<mark>`` placeholders sit in the text where their prompt embeddings
            go.
        masks: one (H, W) binary mask per ``[SEG]`` in the answers, in order.
        regions: one (H, W) binary mask per ``<region>``, in order.
        points: one (x, y) per ``<mark>``, in order.
    """

    image_path: str | None
    turns: list[Turn]
    masks: list[np.ndarray] = field(default_factory=list)
    regions: list[np.ndarray] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)

    def validate(self) -> None:
        """Raise :class:`MalformedSample` when the placeholders and the annotations disagree."""
        if not self.turns or any(not t.question.strip() or t.answer is None or not t.answer.strip()
                                 for t in self.turns):
            raise MalformedSample('empty question or answer')
        answers = ''.join(t.answer for t in self.turns)
        questions = ''.join(t.question for t in self.turns)
        for what, needed, given in (('[SEG]', answers.count(SEG_TOKEN), len(self.masks)),
                                    ('<region>', questions.count(REGION_TOKEN), len(self.regions)),
                                    ('<mark>', questions.count(MARK_TOKEN), len(self.points))):
            if needed != given:
                raise MalformedSample(f'placeholder count mismatch: {needed} {what} in the text '
                                      f'but {given} '
                                      'annotations')
        for mask in self.masks + self.regions:
            if mask.ndim != 2 or not mask.any():
                raise MalformedSample(f'empty or malformed mask: shape {mask.shape}')
