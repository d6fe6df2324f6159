"""Synthetic shapes, part 3: the other texts of a scene (captions, region descriptions, point,
region and instruction conversations, and questions about a prompted object in the wordings a user
types), all derived from the drawn attributes."""
from __future__ import annotations

import numpy as np
from shapes_scene import BACKGROUNDS, Obj, Scene

def where(centre: tuple[float, float], side: int) -> str:
    """Absolute position on a 3×3 grid: 'in the top left corner', 'on the right', 'at the bottom',
    'in the centre'."""
    x, y = centre
    h = 'left' if x < side / 3 else 'right' if x > 2 * side / 3 else ''
    v = 'top' if y < side / 3 else 'bottom' if y > 2 * side / 3 else ''
    if h and v:
        return f'in the {v} {h} corner'
    return f'on the {h}' if h else f'at the {v}' if v else 'in the centre'


def caption(scene: Scene) -> tuple[str, list[tuple[int, int, int]]]:
    """GCG caption listing the objects in reading order with their positions, and ``(start, end,
    object index)`` of each object phrase ('A small red circle in the top left corner, a large blue
    square ... background.')."""
    side = scene.image.shape[0]
    order = sorted(range(len(scene.objects)),
                   key=lambda i: (int(3 * scene.objects[i].centre[1] // side),
                                                             scene.objects[i].centre[0]))
    text, spans = '', []
    for j, i in enumerate(order):
        if j:
            text += ' and ' if j == len(order) - 1 else ', '
        phrase = ('A ' if j == 0 else 'a ') + scene.objects[i].name
        spans.append((len(text), len(text) + len(phrase), i))
        text += f'{phrase} {where(scene.objects[i].centre, side)}'
    return text + f', on a dark {BACKGROUNDS[scene.background]} background.', spans


def region_description(scene: Scene, index: int) -> str:
    """Osprey-style description of one object: 'A small red circle in the top left corner of the
    picture.'"""
    obj = scene.objects[index]
    return f'A {obj.name} {where(obj.centre, scene.image.shape[0])} of the picture.'


def point_conversation(scene: Scene, indices: list[int],
                       rng: np.random.Generator) -> list[tuple[str, str]]:
    """MDPV turns about marks on the given objects (Mark k on ``indices[k - 1]``):
    :func:`question_plan`'s questions (any mark first, :data:`PROMPT_QUESTIONS` wordings), and
    sometimes a description of all."""
    side, objects = scene.image.shape[0], scene.objects
    turns = [attribute_turn(objects[indices[m]], f'<Mark {m + 1}>', attribute, rng)
             for m, attribute in question_plan(len(indices), rng)]
    if rng.uniform() < 0.3:
        marks = ', '.join(f'<Mark {m}>' for m in range(1, len(indices) + 1))
        described = ' '.join(f'<Mark {m}> is on a {objects[i].name} '
                             f'{where(objects[i].centre, side)}.'
                             for m, i in enumerate(indices, start=1))
        turns.append((f'Briefly describe {marks}.', described))
    return image_first(turns)


def instruct_conversation(scene: Scene, expressions: list[tuple[int, str]],
                          rng: np.random.Generator) -> list[tuple[str, str]]:
    """LLaVA-style turns: the inventory, a colour count and where a referred object is."""
    listed = ', '.join(f'a {o.name}' for o in scene.objects[:-1]) + (' and a '
                                                                     f'{scene.objects[-1].name}')
    colour = scene.objects[int(rng.integers(len(scene.objects)))].colour
    n = sum(o.colour == colour for o in scene.objects)
    count = (f'is one {colour} shape' if n == 1
             else f'are {("two", "three", "four", "five")[n - 2]} {colour} shapes')
    index, sentence = expressions[int(rng.integers(len(expressions)))]
    return [('<image>\nWhich shapes can you see in this image?', f'I can see {listed}.'),
            (f'How many {colour} shapes are there?', f'There {count}.'),
            (f'Where is {sentence}?',
             f'It is {where(scene.objects[index].centre, scene.image.shape[0])}.')]


def region_conversation(scene: Scene, indices: list[int],
                        rng: np.random.Generator) -> list[tuple[str, str]]:
    """Osprey-style turns about the regions ``<region{r}>`` = ``indices[r - 1]``:
    :func:`question_plan`'s questions (any region first, :data:`PROMPT_QUESTIONS` wordings)."""
    turns = [attribute_turn(scene.objects[indices[r]], f'<region{r + 1}>', attribute, rng)
             for r, attribute in question_plan(len(indices), rng)]
    return image_first(turns)


def inline_conversation(scene: Scene,
                        rng: np.random.Generator) -> tuple[list[tuple[str, str]], list[tuple]]:
    """Turns whose questions hold the prompt placeholder itself ("What colour is <region>?"), as
    the chat, the app and the docs write them: :func:`question_plan`'s questions about objects in
    random order, each prompted by a new ``<region>`` (a region mask) or ``<mark>`` (a point).

    Returns:
        ``(turns, prompts)``: the turns, and per placeholder in text order
        ``('region' | 'mark', object index)``.
    """
    order = [int(i) for i in rng.permutation(len(scene.objects))]
    turns, prompts = [], []
    for slot, attribute in question_plan(len(order), rng):
        kind = ('region', 'mark')[int(rng.integers(2))]
        turns.append(attribute_turn(scene.objects[order[slot]], f'<{kind}>', attribute, rng))
        prompts.append((kind, order[slot]))
    return turns, prompts


ATTRIBUTES = ('what', 'colour', 'shape')  # what a prompt question asks

#: Question wordings about one prompted object, per asked attribute; ``{p}`` is the prompt as the
#: text names it (``<region>``, ``<mark>``, ``region2``, ``Mark 1``). The first of each list is the
#: one the docs suggest.
PROMPT_QUESTIONS = {
    'what': ('What is {p}?', 'What is at {p}?', 'Describe {p}.', 'What can you see at {p}?',
             'What is {p} doing?', 'What object is {p}?'),
    'colour': ('What colour is {p}?', 'What color is {p}?', 'What is the colour of {p}?',
               'What is the color of {p}?', 'Which colour is {p}?', 'What colour does {p} have?'),
    'shape': ('What shape is {p}?', 'What is the shape of {p}?', 'Which shape is {p}?',
              'What kind of shape is {p}?', 'What shape does {p} have?'),
}


def image_first(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The turns with ``<image>`` opening the first question, as the LLaVA-style files write it."""
    return [('<image>\n' + turns[0][0], turns[0][1])] + turns[1:]


def attribute_answer(obj: Obj, attribute: str) -> str:
    """The answer about ``obj``: 'It is a small red circle.' / 'It is red.' / 'It is a circle.'."""
    return {'what': f'It is a {obj.name}.', 'colour': f'It is {obj.colour}.',
            'shape': f'It is a {obj.kind}.'}[attribute]


def question_plan(prompts: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """One to three (one or two for one prompt) questions as ``(prompt index, attribute)``: the
    prompts in random order, each once before any is asked again (a later answer cannot be copied
    from an earlier one about the same prompt), a random attribute each, no pair twice."""
    order = [int(i) for i in rng.permutation(prompts)]
    plan: list[tuple[int, str]] = []
    for turn in range(int(rng.integers(1, min(3, prompts + 1) + 1))):
        prompt = order[turn % prompts]
        asked = [a for p, a in plan if p == prompt]
        free = [a for a in ATTRIBUTES if a not in asked]
        plan.append((prompt, free[int(rng.integers(len(free)))]))
    return plan


def attribute_turn(obj: Obj, prompt: str, attribute: str,
                   rng: np.random.Generator) -> tuple[str, str]:
    """A question about the ``attribute`` of ``obj`` named ``prompt`` (a random wording), its
    answer."""
    wordings = PROMPT_QUESTIONS[attribute]
    wording = wordings[int(rng.integers(len(wordings)))]
    return wording.format(p=prompt), attribute_answer(obj, attribute)
