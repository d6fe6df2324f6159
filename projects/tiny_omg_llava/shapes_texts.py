"""Synthetic shapes, part 3: the other texts of a scene (captions, region descriptions, point,
region and instruction conversations), all derived from the drawn attributes."""
from __future__ import annotations

import numpy as np
from shapes_scene import BACKGROUNDS, Scene

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


def point_conversation(scene: Scene, indices: list[int]) -> list[tuple[str, str]]:
    """MDPV turns about marks on the given objects (Mark k on ``indices[k - 1]``)."""
    side, objects = scene.image.shape[0], scene.objects
    first = objects[indices[0]]
    marks = ', '.join(f'<Mark {m}>' for m in range(1, len(indices) + 1))
    described = ' '.join(f'<Mark {m}> is on a {objects[i].name} {where(objects[i].centre, side)}.'
                         for m, i in enumerate(indices, start=1))
    return [('<image>\nWhat is at <Mark 1>?', f'A {first.colour} {first.kind}.'),
            (f'Briefly describe {marks}.', described)]


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


def region_conversation(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Osprey-style turns: per region, what it is, its colour or its shape."""
    turns = []
    for r, obj in enumerate(scene.objects, start=1):
        question, answer = [(f'What is <region{r}>?', f'It is a {obj.name}.'),
                            (f'What colour is <region{r}>?', f'It is {obj.colour}.'),
                            (f'What shape is <region{r}>?', f'It is a {obj.kind}.')][
                                int(rng.integers(3))]
        turns.append(('<image>\n' + question if r == 1 else question, answer))
    return turns

