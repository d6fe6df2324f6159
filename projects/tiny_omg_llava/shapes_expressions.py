"""Synthetic shapes, part 2: referring expressions that pick out exactly one object.

Expressions, in increasing specificity (:func:`referring_expressions`)::

    the {kind | colour shape | size shape}                   the circle, the red shape
    the [size] [colour] {kind | shape}  (2 or 3 attributes)  the small blue triangle
    the {largest | smallest} [colour] {kind | shape}         the smallest red circle
    the [size] [colour] {kind | shape} {on the left | on the right | at the top | at the bottom}
                                                             the yellow star at the top
    the [size] [colour] {kind | shape} {left of | right of | above | below} <attribute-only one>
                                                             the square left of the green circle

Superlatives, positions and relations extend only a description that alone matches several
objects; the position words also require the object to lie in that half of the image. Graded
predicates (largest, on the left, left of ...) only count with a margin: the true case must beat
the others by 15% of the side (1.3× in area), every other candidate must clearly fail, and an
expression with a borderline candidate is dropped. Nothing is left to a coin flip that a model
cannot learn. A REFER ref keeps up to 3 sentences (:func:`pick_sentences`): the simplest, one
superlative or position and one relation where the object has them (about 35% attribute-only, 32%
relations, 24% positions and 9% superlatives).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from shapes_scene import Obj, Scene

# Graded predicates, in fractions of the image side: true beyond the first margin, clearly false
# below the second.
POSITION_MARGIN = 0.15  # lead of the extreme object over the runner-up
RELATION_TRUE, RELATION_FALSE = 0.15, 0.03
AREA_RATIO = 1.3  # largest / smallest: area lead over the runner-up
POSITIONS = {'left': 'on the left', 'right': 'on the right', 'top': 'at the top',
             'bottom': 'at the bottom'}
# (axis of (x, y), sign)
DIRECTIONS = {'left': (0, -1), 'right': (0, 1), 'top': (1, -1), 'bottom': (1, 1)}
RELATIONS = {'left of': 'left', 'right of': 'right', 'above': 'top', 'below': 'bottom'}
SUPERLATIVES = ('largest', 'smallest')
MAX_SENTENCES = 3  # per ref: the simplest expression and up to two random others


@dataclass(frozen=True)
class Query:
    """A referring expression: attributes plus at most one superlative/position (``extreme``) or
    relation."""

    colour: str | None = None
    kind: str | None = None
    size: str | None = None
    extreme: str | None = None  # a SUPERLATIVES entry or a POSITIONS key
    relation: str | None = None  # a RELATIONS key, with an attribute-only ``anchor``
    anchor: Query | None = None

    def sentence(self) -> str:
        noun = ' '.join(w for w in (self.size, self.colour, self.kind or 'shape') if w)
        if self.extreme in SUPERLATIVES:
            return f'the {self.extreme} {noun}'
        if self.extreme:
            return f'the {noun} {POSITIONS[self.extreme]}'
        if self.relation:
            return f'the {noun} {self.relation} {self.anchor.sentence()}'
        return f'the {noun}'

    def matches(self, obj: Obj) -> bool:
        """Whether the object has the query's attributes."""
        return ((self.colour is None or self.colour == obj.colour)
                and (self.kind is None or self.kind == obj.kind)
                and (self.size is None or self.size == obj.size_class))


def toward(centre: tuple[float, float], direction: str) -> float:
    """How far a point lies in a direction of POSITIONS (larger = further left / right / up /
    down)."""
    axis, sign = DIRECTIONS[direction]
    return sign * centre[axis]


def relation_holds(obj: Obj, anchor: Obj, relation: str, side: int) -> bool | None:
    """True when ``obj`` clearly is ``relation`` the anchor (mostly along that axis), False when it
    clearly is not, None in between."""
    direction = RELATIONS[relation]
    lead = toward(obj.centre, direction) - toward(anchor.centre, direction)
    axis = DIRECTIONS[direction][0]
    across = abs(obj.centre[1 - axis] - anchor.centre[1 - axis])
    if lead >= RELATION_TRUE * side and lead >= across:
        return True
    if lead <= RELATION_FALSE * side or lead <= across / 2:
        return False
    return None


def resolve(query: Query, objects: list[Obj], side: int) -> int | None:
    """Index of the one object the query picks out; None when it picks none, several, or one only
    marginally."""
    found = [i for i, obj in enumerate(objects) if query.matches(obj)]
    if query.relation:
        anchor = resolve(query.anchor, objects, side)
        if anchor is None:
            return None
        holds = [relation_holds(objects[i], objects[anchor], query.relation, side) for i in found
                 if i != anchor]
        if None in holds or holds.count(True) != 1:
            return None
        return [i for i in found if i != anchor][holds.index(True)]
    if query.extreme is None:
        return found[0] if len(found) == 1 else None
    if len(found) < 2:
        return None
    if query.extreme in SUPERLATIVES:
        sign = 1 if query.extreme == 'largest' else -1
        first, second = sorted(found, key=lambda i: -sign * objects[i].area)[:2]
        a, b = objects[first].area, objects[second].area
        return first if (a >= AREA_RATIO * b if sign > 0 else b >= AREA_RATIO * a) else None
    first, second = sorted(found, key=lambda i: -toward(objects[i].centre, query.extreme))[:2]
    lead = toward(objects[first].centre, query.extreme) - toward(objects[second].centre,
                                                                 query.extreme)
    in_half = toward(objects[first].centre, query.extreme) > toward((side / 2, side / 2),
                                                                    query.extreme)
    return first if lead >= POSITION_MARGIN * side and in_half else None


EXPRESSION_KINDS = ('attribute', 'superlative', 'position', 'relation')


def expression_kind(sentence: str) -> str:
    """Which rule of the grammar (module docstring) made a sentence: one of EXPRESSION_KINDS. A
    relation's anchor is attribute-only, so a relation word anywhere makes a relation; size words
    alone ("the small circle") are attributes."""
    words = f' {sentence.lower().strip()} '
    if any(f' {relation} ' in words for relation in RELATIONS):
        return 'relation'
    if any(f' {position} ' in words for position in POSITIONS.values()):
        return 'position'
    if any(f' {superlative} ' in words for superlative in SUPERLATIVES):
        return 'superlative'
    return 'attribute'


def referring_expressions(scene: Scene) -> list[tuple[int, str]]:
    """Every unambiguous expression of the grammar, as (object index, sentence), per object in
    increasing specificity (attributes, then superlatives and positions, then relations)."""
    return [(i, q.sentence()) for i, q in expression_queries(scene)]


def expression_queries(scene: Scene) -> list[tuple[int, Query]]:
    """:func:`referring_expressions` as queries.

    Every subset of an object's size, colour and kind is a candidate; one that matches a single
    object is kept as it is (fewest attributes first), one that matches several is extended by each
    superlative, position and relation (to an object that has an attribute-only expression: its
    simplest), and kept where it then resolves.
    """
    objects, side = scene.objects, scene.image.shape[0]
    candidates = dict.fromkeys(Query(colour=c, kind=k, size=s) for o in objects
                               for s, c, k in product((None, o.size_class), (None, o.colour),
                                                      (None, o.kind)))
    candidates = sorted(candidates,
                        key=lambda q: ((q.colour is not None) + (q.kind is not None)
                                       + (q.size is not None)))
    expressions, shared, anchors = [], [], {}
    for query in candidates:
        found = [i for i, o in enumerate(objects) if query.matches(o)]
        if len(found) == 1:
            expressions.append((found[0], query))
            anchors.setdefault(found[0], query)
        elif len(found) > 1:
            shared.append(query)
    extended = [Query(q.colour, q.kind, q.size, extreme=e) for q in shared
                for e in (SUPERLATIVES if q.size is None else ()) + tuple(POSITIONS)]
    extended += [Query(q.colour, q.kind, q.size, relation=r, anchor=a) for q in shared
                 for a in anchors.values()
                 for r in RELATIONS]
    for query in extended:
        target = resolve(query, objects, side)
        if target is not None:
            expressions.append((target, query))
    return sorted(expressions, key=lambda e: e[0])



def pick_sentences(expressions: list[tuple[int, Query]], rng: np.random.Generator) -> list[str]:
    """Up to MAX_SENTENCES of one object's expressions: its simplest, one superlative/position and
    one relation when it has them (random ones), then more attribute-only ones."""
    families = [[q for _, q in expressions if not q.extreme and not q.relation],
                [q for _, q in expressions if q.extreme], [q for _, q in expressions if q.relation]]
    picked = families[0][:1] + [f[int(rng.integers(len(f)))] for f in families[1:] if f]
    picked += families[0][1:1 + max(0, MAX_SENTENCES - len(picked))]
    return [q.sentence() for q in picked]

