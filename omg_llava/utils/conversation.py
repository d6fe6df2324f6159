"""Encoding a conversation into token ids and labels with a chat template (spec §5.4, xtuner's
encode rule).

For the ``internlm2_chat`` template, a turn is
``<|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n`` (unsupervised), then
``{answer}<|im_end|>`` (supervised), then ``\\n`` (unsupervised). BOS comes once at the very start.
The literal ``<image>`` is not tokenised: each text chunk around it is encoded without special
tokens and the chunks are joined by the sentinel id −200. The first question of an image
conversation is normalised to ``"<image>\\n" + question``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .templates import INTERNLM2_CHAT


@dataclass
class Turn:
    """One question and, for training or history, its answer (``None`` for the turn to be
    generated)."""

    question: str
    answer: str | None = None


@dataclass
class EncodedConversation:
    """``input_ids`` and ``labels`` (−100 where unsupervised) of equal length."""

    input_ids: list[int]
    labels: list[int]


def normalise_image_question(question: str) -> str:
    """Move ``<image>`` to the front of a question: ``"<image>\\n" + question without the
    token``."""
    return DEFAULT_IMAGE_TOKEN + '\n' + question.replace(DEFAULT_IMAGE_TOKEN, '').strip()


def _encode_with_image_sentinel(tokenizer, text: str) -> list[int]:
    chunks = [tokenizer.encode(chunk, add_special_tokens=False)
              for chunk in text.split(DEFAULT_IMAGE_TOKEN)]
    ids = list(chunks[0])
    for chunk in chunks[1:]:
        ids += [IMAGE_TOKEN_INDEX] + list(chunk)
    return ids


def encode_conversation(tokenizer, turns: Sequence[Turn], *, with_image: bool = True,
                        template: Mapping = INTERNLM2_CHAT, system: str = '',
                        max_length: int | None = None) -> EncodedConversation:
    """Token ids and labels of a conversation.

    Args:
        tokenizer: a HF tokenizer (``encode``, ``bos_token_id``, ``eos_token_id``).
        turns: the turns in order; only the last may lack an answer (it is then the prompt to
            answer).
        with_image: normalise the first question to start with ``<image>\\n``.
        template: a chat template (``SYSTEM``, ``INSTRUCTION``, ``SUFFIX``, ``SUFFIX_AS_EOS``,
            ``SEP``).
        system: system text; empty emits no system block.
        max_length: truncate ids and labels to this many tokens (training; ``None`` keeps
            everything).

    Raises:
        ValueError: a turn other than the last has no answer, or ``<image>`` appears in a later
            turn.
    """
    if not turns:
        raise ValueError('a conversation needs at least one turn')
    ids: list[int] = [tokenizer.bos_token_id]
    labels: list[int] = [IGNORE_INDEX]
    for i, turn in enumerate(turns):
        question = turn.question
        if i == 0 and with_image:
            question = normalise_image_question(question)
        elif DEFAULT_IMAGE_TOKEN in question:
            raise ValueError(f'turn {i + 1} contains {DEFAULT_IMAGE_TOKEN}; the image belongs in '
                             'the first question only (one image per conversation)')
        text = template['INSTRUCTION'].format(input=question)
        if i == 0 and system:
            text = template['SYSTEM'].format(system=system) + text
        prompt = _encode_with_image_sentinel(tokenizer, text)
        ids += prompt
        labels += [IGNORE_INDEX] * len(prompt)
        if turn.answer is None:
            if i != len(turns) - 1:
                raise ValueError(f'turn {i + 1} has no answer but is not the last turn')
            break
        answer = tokenizer.encode(turn.answer + template.get('SUFFIX', ''),
                                  add_special_tokens=False)
        ids += answer
        labels += answer
        if not template.get('SUFFIX_AS_EOS', False):
            ids.append(tokenizer.eos_token_id)
            labels.append(tokenizer.eos_token_id)
        sep = (tokenizer.encode(template.get('SEP', ''), add_special_tokens=False)
               if template.get('SEP') else [])
        ids += sep
        labels += [IGNORE_INDEX] * len(sep)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedConversation(ids, labels)
