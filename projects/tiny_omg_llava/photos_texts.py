"""Tiny real-photo data, part 2: the texts of a photo (captions, referring expressions, region
descriptions), generated from its objects' class names, counts, positions and sizes, so that they
are true of the picture."""
from __future__ import annotations

import numpy as np

from photos_scenes import Instance, Scene

NUMBERS = ('no', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten')
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth',
            'tenth')
PLURALS = {'person': 'people', 'bus': 'buses', 'sheep': 'sheep'}
UNIQUE_NOUNS = ('sky', )  # 'the sky', never 'a sky'


def plural(name: str) -> str:
    return PLURALS.get(name, name + 's')


def count_phrase(name: str, n: int) -> str:
    """'a bottle', 'an eye', 'six chairs', 'the sky'."""
    if name in UNIQUE_NOUNS:
        return 'the ' + name
    if n == 1:
        return ('an ' if name[0] in 'aeiou' else 'a ') + name
    return f'{NUMBERS[n] if n < len(NUMBERS) else n} {plural(name)}'


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """Centre of mass as fractions (x / W, y / H)."""
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


def where(mask: np.ndarray) -> str:
    """'on the left', 'at the bottom', 'in the top right corner', 'in the centre'."""
    cx, cy = _centre(mask)
    h = 'left' if cx < 1 / 3 else 'right' if cx > 2 / 3 else ''
    v = 'top' if cy < 1 / 3 else 'bottom' if cy > 2 / 3 else ''
    if h and v:
        return f'in the {v} {h} corner'
    return f'on the {h}' if h else f'at the {v}' if v else 'in the centre'


def groups(scene: Scene) -> dict[str, list[Instance]]:
    """Objects by class name, the classes ordered by decreasing total area."""
    by_name: dict[str, list[Instance]] = {}
    for inst in scene.instances:
        by_name.setdefault(inst.name, []).append(inst)
    return dict(sorted(by_name.items(), key=lambda kv: -sum(i.mask.sum() for i in kv[1])))


def inventory(scene: Scene) -> str:
    return join_words([count_phrase(name, len(insts)) for name, insts in groups(scene).items()])


def largest(scene: Scene) -> Instance:
    return max(scene.instances, key=lambda i: i.mask.sum())


def caption(scene: Scene) -> str:
    big = largest(scene)
    return (f'A photo with {inventory(scene)}. The largest is {count_phrase(big.name, 1)} '
            f'{where(big.mask)}, covering about {_percent(big.mask)}% of the picture.')


def _percent(mask: np.ndarray) -> int:
    return max(1, round(100 * mask.mean()))


def referring_expressions(scene: Scene) -> list[list[str]]:
    """Per object, the sentences that pick it out among the objects of its class (most first)."""
    sentences = []
    for inst in scene.instances:
        same = [i for i in scene.instances if i.name == inst.name]
        n = inst.name
        if len(same) == 1:
            sentences.append([f'the {n} {where(inst.mask)}', f'the {n}'])
            continue
        xs = [_centre(i.mask)[0] for i in same]
        areas = [i.mask.sum() for i in same]
        k = next(j for j, i in enumerate(same) if i is inst)
        options = []
        if k == int(np.argmin(xs)):
            options += [f'the {n} on the left', f'the leftmost {n}']
        if k == int(np.argmax(xs)):
            options += [f'the {n} on the right', f'the rightmost {n}']
        if k == int(np.argmax(areas)):
            options.append(f'the largest {n}')
        if k == int(np.argmin(areas)):
            options.append(f'the smallest {n}')
        rank = sorted(xs).index(xs[k])
        ordinal = ORDINALS[rank] if rank < len(ORDINALS) else f'{rank + 1}th'
        options.append(f'the {ordinal} {n} from the left')
        sentences.append(options[:3])
    return sentences


def region_description(scene: Scene, inst: Instance) -> str:
    count = sum(i.name == inst.name for i in scene.instances)
    others = (f'It is one of {count_phrase(inst.name, count)} in the image.' if count > 1
              else f'It is the only {inst.name} in the image.')
    return (f'{count_phrase(inst.name, 1).capitalize()} {where(inst.mask)} of the picture, '
            f'covering about {_percent(inst.mask)}% of it. {others}')

