"""Synthetic shapes, part 4: text-only rows that teach the tiny LLM to bind names to values.

A two-prompt question ("There are some regions: region1 <region>, region2 <region>." + newline +
"What colour is region2?") needs an LLM that looks up what follows a name; the released model's
pretrained InternLM2 brings that, the tiny LLM trained from scratch does not (docs/tiny_model.md,
"Visual prompts"). These rows ask it in text, with a colour or a kind word where the prompt
embedding would be::

    There are some regions: region1 blue, region2 red.
    What colour is region2?                                   → It is red.
    There are some marks: Mark 1 star, Mark 2 circle, Mark 3 square.
    What shape is Mark 3?                                     → It is a square.

The list, the names and the answers have the exact form of the Osprey and MDPV rows
(``omg_llava/datasets/osprey.py``, ``mdpv.py``, :func:`shapes_texts.attribute_answer`), so what is
learnt here is what the prompt rows need. Values within a row differ, so the answer names one
entry of the list.
"""
from __future__ import annotations

import numpy as np
from shapes_scene import COLOURS, KINDS
from shapes_texts import PROMPT_QUESTIONS
from tiny_data_formats import messages

#: naming style → (list line with ``{names}``, the name of entry ``k`` counted from 1)
NAMINGS = {'region': ('There are some regions: {names}.\n', 'region{k}'),
           'mark': ('There are some marks: {names}.\n', 'Mark {k}')}
#: the attribute a row asks → its value words and how the answer says one
VALUES = {'colour': (tuple(COLOURS), 'It is {v}.'), 'shape': (tuple(KINDS), 'It is a {v}.')}


def binding_turns(rng: np.random.Generator, names: int, questions: int, first_wording: bool,
                  narrow: bool = False) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """One binding conversation: a list of ``names`` entries, each a distinct value word of one
    attribute, and ``questions`` questions about distinct entries.

    Args:
        rng: the random source.
        names: entries in the list (2 to the number of value words).
        questions: questions asked, each about another entry (at most ``names``).
        first_wording: ask every question in :data:`PROMPT_QUESTIONS`'s first wording ("What
            colour is region2?"); otherwise in a random one of its wordings.
        narrow: region names and colour values only; otherwise region or mark names (half each)
            and colour or kind values (half each).

    Returns:
        ``(turns, asked)``: the ``(question, answer)`` turns (the list opens the first question)
        and, per turn, ``(asked entry counted from 0, its value word)``.
    """
    naming, name = NAMINGS['region' if narrow else ('region', 'mark')[int(rng.integers(2))]]
    attribute = 'colour' if narrow else ('colour', 'shape')[int(rng.integers(2))]
    words, answer = VALUES[attribute]
    values = [words[int(i)] for i in rng.choice(len(words), size=names, replace=False)]
    entries = ', '.join(f'{name.format(k=k)} {v}' for k, v in enumerate(values, start=1))
    wordings = PROMPT_QUESTIONS[attribute]
    turns, asked = [], []
    for entry in rng.choice(names, size=questions, replace=False):
        wording = wordings[0 if first_wording else int(rng.integers(len(wordings)))]
        question = wording.format(p=name.format(k=int(entry) + 1))
        turns.append((question, answer.format(v=values[entry])))
        asked.append((int(entry), values[entry]))
    turns[0] = (naming.format(names=entries) + turns[0][0], turns[0][1])
    return turns, asked


def binding_rows(seed: int, count: int, three_name_share: float, first_wording: bool,
                 max_questions: int, narrow: bool = False) -> list[dict]:
    """``count`` LLaVA-format text rows (no ``image``) of :func:`binding_turns`, drawn from
    ``np.random.default_rng([5, seed])`` (independent of the scenes' draws).

    Args:
        seed: which draw (the data generator writes each file from its own seed).
        count: rows.
        three_name_share: the share of rows with three names (the others have two).
        first_wording, narrow: see :func:`binding_turns`.
        max_questions: each row asks 1 to this many questions (at most its names).
    """
    rng = np.random.default_rng([5, seed])
    rows = []
    for n in range(count):
        names = 3 if rng.uniform() < three_name_share else 2
        questions = int(rng.integers(1, min(max_questions, names) + 1))
        turns, _ = binding_turns(rng, names, questions, first_wording, narrow)
        rows.append(dict(id=f'binding_{seed}_{n}', conversations=messages(turns)))
    return rows


#: the binding files the data generator writes (under ``text_binding/``): name → the seed of its
#: draw, its rows (``rows``, or ``rows_per_image`` training images, so that its share of a mixture
#: stays the same in a shorter data set) and :func:`binding_rows`'s other arguments. The binding
#: part (train_tiny.py step 2) learns from ``region_colour`` (two region names with a colour each,
#: one wording, one question: the form the tiny LLM learns the lookup from) and then from
#: ``first_wording`` (region and mark names, colours and kinds, the same wording);
#: ``language`` joins the language stage's mixture (3 times: about a third of its rows);
#: ``mixture`` joins the pretrain's (40%) and the finetune's (about 6%), so that they keep it.
BINDING_FILES = {
    'region_colour': dict(seed=0, rows=8000, three_name_share=0.0, first_wording=True,
                          max_questions=1, narrow=True),
    'first_wording': dict(seed=3, rows=8000, three_name_share=0.0, first_wording=True,
                          max_questions=1),
    'language': dict(seed=1, rows_per_image=2.0, three_name_share=0.3, first_wording=False,
                     max_questions=2),
    'mixture': dict(seed=2, rows_per_image=2 / 3, three_name_share=0.3, first_wording=False,
                    max_questions=2),
}


def binding_file_rows(name: str, num_train: int, seed: int = 0) -> list[dict]:
    """The rows of :data:`BINDING_FILES` ``name`` for a data set of ``num_train`` training images
    and generator seed ``seed``."""
    spec = dict(BINDING_FILES[name])
    count = spec.pop('rows', None) or max(1, round(spec.pop('rows_per_image') * num_train))
    return binding_rows(seed * 1000 + spec.pop('seed'), count, **spec)
