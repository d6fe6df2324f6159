"""Synthetic visual-grounding data (coloured shapes), written in the on-disk formats of the real OMG-LLaVA sources.

Each image holds 2–4 flat-coloured shapes (circle, square, triangle, star; small or large) on a textured
background. Every text is derived from the drawn attributes, so it is true by construction: referring
expressions that pick out exactly one object, grounded captions, region descriptions and point QA. The point is to
prove that the whole training loop learns: a tiny OMG-LLaVA trained on it on CPU has to reach a referring cIoU of
0.75 on held-out images, so the task must be learnable at 128 px yet not solvable without reading the expression.

Choices made for learnability:

* 6 colours whose hues are about 60° apart (red, yellow, green, cyan, blue, purple), all bright and saturated, and
  4 kinds of clearly different outline. The two small vocabularies make 24 colour-kind pairs: enough to force
  reading both words, few enough for each pair to be seen hundreds of times in 2000 images.
* Sizes with a gap: small shapes span 26–32% of the image side, large ones 42–52%, so "small"/"large" never
  hesitate. The sizes are set by the visual-token grid: OMG-LLaVA sees an object through its OMG-Seg query only
  when that query wins a cell of the grid, and the cell's object prior is read at the cell centre (bilinear
  resize, spec §1.3). The 7B model's 16×16 grid has a pitch of 6% of the image side, small against RefCOCO
  objects; the tiny model's 4×4 grid at 128 px has a pitch of 25%. With shapes of 15–20% of the side, only 51% of
  the small ones had a visual token (any query, IoU ≥ 0.5: 81%), which capped the referring cIoU near 0.55 even
  for a perfect choice of token. A shape of at least a cell's width covers a cell centre far more often.
* Backgrounds (smooth noise, stripes, gradients) are dark (HSV value ≤ 0.45) and desaturated (≤ 0.35) with a
  texture amplitude of 10–30 levels, so an object's colour lies about 150 RGB units (at least ~50) from the nearest
  background pixel: shapes are easy to *find*, the difficulty is in *which one*. Shape colours jitter by ±12 per
  channel and the image gets Gaussian pixel noise (σ = 3), so a colour is not one exact value.
* Objects do not overlap in 70% of the images (at least 3 px apart); otherwise a later shape may hide at most 25% of
  an earlier one, whose mask loses the hidden pixels. No two objects share colour, kind *and* size, so every object
  has at least one attribute-only description; half of the new objects copy the colour or the kind of an earlier
  one, so that one attribute alone is often ambiguous.
* Graded predicates (largest, on the left, left of ...) only count with a margin: the true case must beat the others
  by 15% of the side (1.3× in area), every other candidate must clearly fail, and an expression with a borderline
  candidate is dropped. Nothing is left to a coin flip that a model cannot learn.
* Masks are stored as COCO RLE, exact at this resolution (polygons would lose boundary pixels of 20 px shapes).

Expressions, in increasing specificity (:func:`referring_expressions`)::

    the {kind | colour shape | size shape}                   the circle, the red shape, the large shape
    the [size] [colour] {kind | shape}  (2 or 3 attributes)  the red circle, the small blue triangle
    the {largest | smallest} [colour] {kind | shape}         the largest shape, the smallest red circle
    the [size] [colour] {kind | shape} {on the left | on the right | at the top | at the bottom}
                                                             the yellow star at the top
    the [size] [colour] {kind | shape} {left of | right of | above | below} <attribute-only expression>
                                                             the square left of the green circle

Superlatives, positions and relations extend only a description that alone matches several objects; the position
words also require the object to lie in that half of the image. A REFER ref keeps up to 3 sentences: the
simplest, one superlative or position and one relation where the object has them (about 35% attribute-only, 32%
relations, 24% positions and 9% superlatives). The tree mirrors ``build_tiny_data.py``'s, so the tiny configs read
either root:

    python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes --train 2000 --val 200
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from itertools import product

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

COLOURS = {'red': (220, 40, 40), 'yellow': (235, 210, 40), 'green': (40, 180, 70), 'cyan': (40, 200, 210),
           'blue': (50, 90, 230), 'purple': (160, 60, 210)}
KINDS = ('circle', 'square', 'triangle', 'star')
# COCO categories of the instance files: colour and kind (like LVIS's fine-grained names), so that the OMG-Seg
# pre-stage's queries must tell colours apart too (with kinds only, measured region-QA colour accuracy was 0.43).
CATEGORIES = tuple(f'{colour} {kind}' for kind in KINDS for colour in COLOURS)
SIZE_CLASSES = {'small': (0.26, 0.32), 'large': (0.42, 0.52)}  # extent range, as a fraction of the image side
OBJECT_COUNTS, OBJECT_COUNT_WEIGHTS = (2, 3, 4), (0.3, 0.4, 0.3)
BACKGROUNDS = {'noise': 'mottled', 'stripes': 'striped', 'gradient': 'shaded'}  # kind → caption adjective
COLOUR_JITTER = 12  # per-channel jitter of an object's colour
PIXEL_NOISE = 3.0  # std of the Gaussian noise on the whole image
SHARE_PROB = 0.5  # chance that a new object copies the colour or the kind of an earlier one
OCCLUSION_PROB = 0.3  # share of images in which shapes may overlap
MAX_OCCLUDED = 0.25  # most of a shape's area that later shapes may hide
GAP = 3  # px between shapes in images without overlap
PLACEMENT_TRIES = 100
# Graded predicates, in fractions of the image side: true beyond the first margin, clearly false below the second.
POSITION_MARGIN = 0.15  # lead of the extreme object over the runner-up
RELATION_TRUE, RELATION_FALSE = 0.15, 0.03
AREA_RATIO = 1.3  # largest / smallest: area lead over the runner-up
POSITIONS = {'left': 'on the left', 'right': 'on the right', 'top': 'at the top', 'bottom': 'at the bottom'}
DIRECTIONS = {'left': (0, -1), 'right': (0, 1), 'top': (1, -1), 'bottom': (1, 1)}  # (axis of (x, y), sign)
RELATIONS = {'left of': 'left', 'right of': 'right', 'above': 'top', 'below': 'bottom'}
SUPERLATIVES = ('largest', 'smallest')
MAX_SENTENCES = 3  # per ref: the simplest expression and up to two random others
MAX_MARKS = 4  # points per MDPV row
JPEG_QUALITY = 90
COCO_IMAGES = ('glamm_data', 'images', 'coco2014', 'train2014')
COCO_INSTANCE_SPLITS = {'train': 'train2017', 'val': 'val2017'}  # our split → COCO folder (OMG-Seg pre-stage)
ANNOTATION_FILES = {  # rows of the training sources → file under the root
    'grandf_gcg': 'glamm_data/annotations/GranDf_HA_GCG_train.json',
    'osprey_detail_description': 'region_caption/osprey/osprey_detail_description.json',
    'osprey_conversation': 'region_caption/osprey/osprey_conversation.json',
    'mdpv_point': 'mdpv_point/gpt4v_tiny_point.json',
    'llava_pretrain': 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json',
    'llava_instruct': 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json',
}


@dataclass
class Obj:
    """One drawn shape: attributes, visible (H, W) bool mask, its [x, y, w, h] box and (x, y) centroid in pixels."""

    kind: str
    colour: str
    size_class: str
    mask: np.ndarray
    bbox: tuple[int, int, int, int]
    centre: tuple[float, float]

    @cached_property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def name(self) -> str:
        return f'{self.size_class} {self.colour} {self.kind}'


@dataclass
class Scene:
    """(H, W, 3) uint8 image, its objects in painting order and the background kind (a key of BACKGROUNDS)."""

    image: np.ndarray
    objects: list[Obj]
    background: str


# ----------------------------------------------------------------------------------------------- drawing
def shape_mask(kind: str, side: int, centre: tuple[float, float], extent: float, angle: float) -> np.ndarray:
    """(side, side) bool mask of one shape about ``extent`` px across, rotated by ``angle`` radians."""
    mask = np.zeros((side, side), np.uint8)
    if kind == 'circle':  # all drawing at 1/16 px precision
        cv2.circle(mask, (round(centre[0] * 16), round(centre[1] * 16)), round(extent * 8), 1, -1, shift=4)
        return mask.astype(bool)
    if kind == 'square':
        radii, phase = [0.6 * extent] * 4, np.pi / 4  # side 0.85 extent
    elif kind == 'triangle':
        radii, phase = [0.58 * extent] * 3, -np.pi / 2  # pointing up: 1.0 extent wide, 0.87 high
    else:  # five-pointed star, inner radius 0.45 of the outer one
        radii, phase = [0.6 * extent, 0.27 * extent] * 5, -np.pi / 2
    angles = phase + angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    points = np.stack([centre[0] + np.cos(angles) * radii, centre[1] + np.sin(angles) * radii], axis=1)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, shift=4)
    return mask.astype(bool)


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A dark, desaturated RGB colour (float, 0–255)."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.15, 0.45))
    return np.array(rgb, np.float32) * 255


def _background(rng: np.random.Generator, side: int) -> tuple[np.ndarray, str]:
    """(side, side, 3) float background and its kind."""
    kind = str(rng.choice(list(BACKGROUNDS)))
    base = _muted(rng)
    if kind == 'noise':
        cells = int(rng.integers(4, 10))
        field = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
        return base + cv2.resize(field, (side, side), interpolation=cv2.INTER_CUBIC) * rng.uniform(10, 22), kind
    yy, xx = np.ogrid[:side, :side]
    theta = rng.uniform(0, np.pi)
    ramp = (xx * np.cos(theta) + yy * np.sin(theta)).astype(np.float32)  # distance along a random direction
    if kind == 'stripes':
        wave = np.sin(2 * np.pi * ramp / rng.uniform(6, 20) + rng.uniform(0, 2 * np.pi))
        tint = (0.5 + rng.uniform(size=3)).astype(np.float32)  # stripe amplitude per channel
        return base + wave[..., None] * rng.uniform(10, 20) * tint, kind
    t = ((ramp - ramp.min()) / np.ptp(ramp))[..., None]
    return base * (1 - t) + _muted(rng) * t, kind


def _sample_attributes(rng: np.random.Generator, taken: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """(kind, colour, size) not yet in ``taken``; often sharing the colour or kind of an earlier object."""
    while True:
        kind, colour = str(rng.choice(KINDS)), str(rng.choice(list(COLOURS)))
        size = str(rng.choice(list(SIZE_CLASSES)))
        if taken and rng.uniform() < SHARE_PROB:
            other = taken[int(rng.integers(len(taken)))]
            kind, colour = (other[0], colour) if rng.uniform() < 0.5 else (kind, other[1])
        if (kind, colour, size) not in taken:
            return kind, colour, size


def _place(rng: np.random.Generator, side: int, kind: str, size: str, full: list[np.ndarray],
           visible: list[np.ndarray], may_overlap: bool) -> np.ndarray | None:
    """Full mask of a new shape that fits the rules against the placed ones, or None after PLACEMENT_TRIES."""
    kernel = np.ones((2 * GAP + 1, 2 * GAP + 1), np.uint8)
    for _ in range(PLACEMENT_TRIES):
        extent = rng.uniform(*SIZE_CLASSES[size]) * side
        margin = 0.6 * extent + 2
        centre = tuple(rng.uniform(margin, side - margin, size=2))
        angle = rng.uniform(-np.pi, np.pi) if kind == 'star' else np.radians(rng.uniform(-15, 15))
        mask = shape_mask(kind, side, centre, extent, angle)
        if may_overlap:
            ok = all((v & ~mask).sum() >= (1 - MAX_OCCLUDED) * f.sum() and (f & mask).sum() <= MAX_OCCLUDED * mask.sum()
                     for f, v in zip(full, visible))
        else:
            grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
            ok = not any((grown & f).any() for f in full)
        if ok:
            return mask
    return None


def sample_scene(rng: np.random.Generator, size: int = 128) -> Scene:
    """Draw one image of ``size`` × ``size`` px with 2–4 shapes (see the module docstring for the rules)."""
    while True:
        image, background = _background(rng, size)
        count = int(rng.choice(OBJECT_COUNTS, p=OBJECT_COUNT_WEIGHTS))
        may_overlap = rng.uniform() < OCCLUSION_PROB
        attributes, full, visible = [], [], []
        for _ in range(count):
            kind, colour, size_class = _sample_attributes(rng, attributes)
            mask = _place(rng, size, kind, size_class, full, visible, may_overlap)
            if mask is None:
                continue
            visible = [v & ~mask for v in visible]
            attributes.append((kind, colour, size_class))
            full.append(mask)
            visible.append(mask)
            image[mask] = np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        if len(full) >= 2:
            break
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    objects = []
    for (kind, colour, size_class), mask in zip(attributes, visible):
        ys, xs = np.nonzero(mask)
        bbox = tuple(int(v) for v in cv2.boundingRect(mask.astype(np.uint8)))
        objects.append(Obj(kind, colour, size_class, mask, bbox, (float(xs.mean()), float(ys.mean()))))
    return Scene(image, objects, background)


# ----------------------------------------------------------------------------------------------- expressions
@dataclass(frozen=True)
class Query:
    """A referring expression: attributes plus at most one superlative/position (``extreme``) or relation."""

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
        return ((self.colour is None or self.colour == obj.colour) and (self.kind is None or self.kind == obj.kind)
                and (self.size is None or self.size == obj.size_class))


def toward(centre: tuple[float, float], direction: str) -> float:
    """How far a point lies in a direction of POSITIONS (larger = further left / right / up / down)."""
    axis, sign = DIRECTIONS[direction]
    return sign * centre[axis]


def relation_holds(obj: Obj, anchor: Obj, relation: str, side: int) -> bool | None:
    """True when ``obj`` clearly is ``relation`` the anchor (mostly along that axis), False when it clearly is not,
    None in between."""
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
    """Index of the one object the query picks out; None when it picks none, several, or one only marginally."""
    found = [i for i, obj in enumerate(objects) if query.matches(obj)]
    if query.relation:
        anchor = resolve(query.anchor, objects, side)
        if anchor is None:
            return None
        holds = [relation_holds(objects[i], objects[anchor], query.relation, side) for i in found if i != anchor]
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
    lead = toward(objects[first].centre, query.extreme) - toward(objects[second].centre, query.extreme)
    in_half = toward(objects[first].centre, query.extreme) > toward((side / 2, side / 2), query.extreme)
    return first if lead >= POSITION_MARGIN * side and in_half else None


EXPRESSION_KINDS = ('attribute', 'superlative', 'position', 'relation')


def expression_kind(sentence: str) -> str:
    """Which rule of the grammar (module docstring) made a sentence: one of EXPRESSION_KINDS. A relation's anchor is
    attribute-only, so a relation word anywhere makes a relation; size words alone ("the small circle") are
    attributes."""
    words = f' {sentence.lower().strip()} '
    if any(f' {relation} ' in words for relation in RELATIONS):
        return 'relation'
    if any(f' {position} ' in words for position in POSITIONS.values()):
        return 'position'
    if any(f' {superlative} ' in words for superlative in SUPERLATIVES):
        return 'superlative'
    return 'attribute'


def referring_expressions(scene: Scene) -> list[tuple[int, str]]:
    """Every unambiguous expression of the grammar, as (object index, sentence), per object in increasing
    specificity (attributes, then superlatives and positions, then relations)."""
    return [(i, q.sentence()) for i, q in expression_queries(scene)]


def expression_queries(scene: Scene) -> list[tuple[int, Query]]:
    """:func:`referring_expressions` as queries.

    Every subset of an object's size, colour and kind is a candidate; one that matches a single object is kept as
    it is (fewest attributes first), one that matches several is extended by each superlative, position and
    relation (to an object that has an attribute-only expression: its simplest), and kept where it then resolves.
    """
    objects, side = scene.objects, scene.image.shape[0]
    candidates = dict.fromkeys(Query(colour=c, kind=k, size=s) for o in objects
                               for s, c, k in product((None, o.size_class), (None, o.colour), (None, o.kind)))
    candidates = sorted(candidates, key=lambda q: (q.colour is not None) + (q.kind is not None) + (q.size is not None))
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
    extended += [Query(q.colour, q.kind, q.size, relation=r, anchor=a) for q in shared for a in anchors.values()
                 for r in RELATIONS]
    for query in extended:
        target = resolve(query, objects, side)
        if target is not None:
            expressions.append((target, query))
    return sorted(expressions, key=lambda e: e[0])


# ----------------------------------------------------------------------------------------------- other texts
def where(centre: tuple[float, float], side: int) -> str:
    """Absolute position on a 3×3 grid: 'in the top left corner', 'on the right', 'at the bottom', 'in the centre'."""
    x, y = centre
    h = 'left' if x < side / 3 else 'right' if x > 2 * side / 3 else ''
    v = 'top' if y < side / 3 else 'bottom' if y > 2 * side / 3 else ''
    if h and v:
        return f'in the {v} {h} corner'
    return f'on the {h}' if h else f'at the {v}' if v else 'in the centre'


def caption(scene: Scene) -> tuple[str, list[tuple[int, int, int]]]:
    """GCG caption listing the objects in reading order with their positions, and ``(start, end, object index)``
    of each object phrase ('A small red circle in the top left corner, a large blue square ... background.')."""
    side = scene.image.shape[0]
    order = sorted(range(len(scene.objects)), key=lambda i: (int(3 * scene.objects[i].centre[1] // side),
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
    """Osprey-style description of one object: 'A small red circle in the top left corner of the picture.'"""
    obj = scene.objects[index]
    return f'A {obj.name} {where(obj.centre, scene.image.shape[0])} of the picture.'


def interior_point(mask: np.ndarray) -> list[int]:
    """(x, y) of the mask pixel farthest from its border."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [int(x), int(y)]


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
    listed = ', '.join(f'a {o.name}' for o in scene.objects[:-1]) + f' and a {scene.objects[-1].name}'
    colour = scene.objects[int(rng.integers(len(scene.objects)))].colour
    n = sum(o.colour == colour for o in scene.objects)
    count = f'is one {colour} shape' if n == 1 else f'are {("two", "three", "four", "five")[n - 2]} {colour} shapes'
    index, sentence = expressions[int(rng.integers(len(expressions)))]
    return [('<image>\nWhich shapes can you see in this image?', f'I can see {listed}.'),
            (f'How many {colour} shapes are there?', f'There {count}.'),
            (f'Where is {sentence}?', f'It is {where(scene.objects[index].centre, scene.image.shape[0])}.')]


def region_conversation(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Osprey-style turns: per region, what it is, its colour or its shape."""
    turns = []
    for r, obj in enumerate(scene.objects, start=1):
        question, answer = [(f'What is <region{r}>?', f'It is a {obj.name}.'),
                            (f'What colour is <region{r}>?', f'It is {obj.colour}.'),
                            (f'What shape is <region{r}>?', f'It is a {obj.kind}.')][int(rng.integers(3))]
        turns.append(('<image>\n' + question if r == 1 else question, answer))
    return turns


# ----------------------------------------------------------------------------------------------- writers
def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def _messages(turns: list[tuple[str, str]]) -> list[dict]:
    """LLaVA-style messages: ``{"from": "human" | "gpt", "value": text}`` per question and answer."""
    return [{'from': role, 'value': text} for turn in turns for role, text in zip(('human', 'gpt'), turn)]


class _Writer:
    """Files under ``root``: each image is encoded once and hard-linked (copied where links fail) elsewhere."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def image(self, image: np.ndarray, *parts: str) -> str:
        path = self.path(*parts)
        Image.fromarray(image).save(path, quality=JPEG_QUALITY, subsampling=0)  # 4:4:4 keeps colour edges sharp
        return path

    def link(self, source: str, *parts: str) -> None:
        target = self.path(*parts)
        if os.path.lexists(target):
            os.remove(target)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)

    def json(self, data, *parts: str) -> None:
        with open(self.path(*parts), 'w', encoding='utf-8') as f:
            f.write(json.dumps(data))  # json.dump would take the pure-Python encoder


def _pick_sentences(expressions: list[tuple[int, Query]], rng: np.random.Generator) -> list[str]:
    """Up to MAX_SENTENCES of one object's expressions: its simplest, one superlative/position and one relation
    when it has them (random ones), then more attribute-only ones."""
    families = [[q for _, q in expressions if not q.extreme and not q.relation],
                [q for _, q in expressions if q.extreme], [q for _, q in expressions if q.relation]]
    picked = families[0][:1] + [f[int(rng.integers(len(f)))] for f in families[1:] if f]
    picked += families[0][1:1 + max(0, MAX_SENTENCES - len(picked))]
    return [q.sentence() for q in picked]


def _refs(queries: list[tuple[int, Query]], anns: list[dict], split: str, ref_id: int, sent_id: int,
          rng: np.random.Generator) -> list[dict]:
    """REFER refs of one image: one per object with an expression, ids counted on from ``ref_id``/``sent_id``."""
    refs = []
    for index, ann in enumerate(anns):
        sentences = _pick_sentences([e for e in queries if e[0] == index], rng)
        if not sentences:
            continue
        ids = list(range(sent_id, sent_id + len(sentences)))
        sent_id += len(sentences)
        refs.append(dict(ref_id=ref_id + len(refs), ann_id=ann['id'], image_id=ann['image_id'],
                         category_id=ann['category_id'], split=split, sent_ids=ids,
                         file_name=f'COCO_train2014_{ann["image_id"]:012d}.jpg',
                         sentences=[dict(sent=s, raw=s, tokens=s.split(), sent_id=i) for s, i in zip(sentences, ids)]))
    return refs


def _write_train_sources(w: _Writer, scene: Scene, n: int, image_path: str, entry: dict, anns: list[dict],
                         expressions: list[tuple[int, str]], rng: np.random.Generator, rows: dict[str, list]) -> None:
    """GranD-f GCG, Osprey, MDPV, LLaVA and ADE20K rows of the ``n``-th training image (images hard-linked)."""
    text, spans = caption(scene)
    grandf_name = f'sa_{n:06d}.jpg'
    w.link(image_path, 'glamm_data', 'images', 'grandf', 'train', grandf_name)
    rows['grandf_gcg'].append(dict(file_name=grandf_name, caption=text, groundings={
        text[s:e]: dict(token_positives=[s, e], rle_masks=[anns[i]['segmentation']]) for s, e, i in spans}))

    entry = dict(entry, annotation=[dict(bbox=a['bbox'], segmentation=a['segmentation']) for a in anns])
    rows['osprey_detail_description'].append(dict(entry, description=[
        f'<region{r}>: {region_description(scene, r - 1)}' for r in range(1, len(anns) + 1)]))
    rows['osprey_conversation'].append(dict(entry, conversations=_messages(region_conversation(scene, rng))))

    marked = [int(i) for i in rng.permutation(len(scene.objects))[:MAX_MARKS]]
    mdpv_name = f'synthetic_{n:06d}.jpg'
    w.link(image_path, 'mdpv_point', 'images', mdpv_name)
    rows['mdpv_point'].append(dict(id=f'synthetic_{n}', image=mdpv_name,
                                   points=[interior_point(scene.objects[i].mask) for i in marked],
                                   conversations=_messages(point_conversation(scene, marked))))

    pretrain_name = f'{n // 10000:05d}/{n:09d}.jpg'  # LLaVA-Pretrain's '00453/004539375.jpg' naming
    w.link(image_path, 'llava_data', 'LLaVA-Pretrain', 'images', pretrain_name)
    question = ('Describe the image briefly.', 'Give a short caption of this picture.')[int(rng.integers(2))]
    rows['llava_pretrain'].append(dict(id=f'{n:09d}', image=pretrain_name,
                                       conversations=_messages([(f'{question}\n<image>', text)])))
    instruct_name = f'coco/train2017/{n:012d}.jpg'
    w.link(image_path, 'llava_data', 'llava_images', instruct_name)
    turns = instruct_conversation(scene, expressions, rng)
    rows['llava_instruct'].append(dict(id=f'{n:012d}', image=instruct_name, conversations=_messages(turns)))

    stem = f'ADE_train_{n:08d}'
    w.link(image_path, 'ade20k', 'ADEChallengeData2016', 'images', 'training', stem + '.jpg')
    label = np.zeros(scene.image.shape[:2], np.uint8)
    for obj in scene.objects:
        label[obj.mask] = KINDS.index(obj.kind) + 1
    Image.fromarray(label).save(w.path('ade20k', 'ADEChallengeData2016', 'annotations', 'training', stem + '.png'))


def _region_question_row(scene: Scene, image: str, anns: list[dict]) -> dict:
    """One row of the held-out region-question manifest: every object's mask with its colour and kind."""
    H, W = scene.image.shape[:2]
    return dict(image=image, height=H, width=W, regions=[
        dict(segmentation=a['segmentation'], bbox=a['bbox'], colour=o.colour, kind=o.kind, size=o.size_class,
             answer=f'{o.colour} {o.kind}') for a, o in zip(anns, scene.objects)])


def write_dataset(root: str, num_train: int, num_val: int, size: int = 128, seed: int = 0,
                  num_test: int | None = None) -> dict[str, int]:
    """Write the synthetic data set under ``root`` in the layout of ``build_tiny_data.py``.

    Image ``k`` of each split is drawn from ``np.random.default_rng([seed, split, k])``, so an image does not depend
    on the other counts. All images live in ``glamm_data/images/coco2014/train2014/`` (REFER and Osprey read them
    there); the training ones are hard-linked into the GranD-f, MDPV, LLaVA and ADE20K folders.

    Args:
        root: output folder (created; files of the same names are overwritten).
        num_train: training images: REFER 'train' refs and every other source.
        num_val: held-out images with REFER 'val' refs; also listed in ``region_questions_val.json``.
        size: image side in pixels.
        seed: seed of everything random.
        num_test: held-out images with REFER 'testA' refs (``num_val`` by default).

    Returns:
        Rows per annotation file (for REFER: images per split, and refs), as the dataset classes count them.
    """
    if num_train < 1:
        raise ValueError(f'num_train must be ≥ 1 (the training sources need images), got {num_train}')
    w = _Writer(root)
    rows: dict[str, list] = {k: [] for k in (*ANNOTATION_FILES, 'region_questions_val')}
    images, annotations, refs, sentences = [], [], [], 0
    coco_splits = {split: ([], []) for split in COCO_INSTANCE_SPLITS}  # split → (images, annotations)
    splits = (('train', num_train), ('val', num_val), ('testA', num_val if num_test is None else num_test))
    for code, (split, count) in enumerate(splits):
        for k in tqdm(range(count), desc=f'{split} images', leave=False):
            rng = np.random.default_rng([seed, code, k])
            scene = sample_scene(rng, size)
            image_id = len(images) + 1
            file_name = f'COCO_train2014_{image_id:012d}.jpg'
            image_path = w.image(scene.image, *COCO_IMAGES, file_name)
            entry = dict(id=image_id, file_name=file_name, height=size, width=size)
            images.append(entry)
            anns = [dict(id=len(annotations) + j + 1, image_id=image_id,
                         category_id=CATEGORIES.index(f'{o.colour} {o.kind}') + 1,
                         segmentation=_rle(o.mask), bbox=list(o.bbox), area=o.area, iscrowd=0)
                    for j, o in enumerate(scene.objects)]
            annotations += anns
            if split in COCO_INSTANCE_SPLITS:
                w.link(image_path, 'coco', COCO_INSTANCE_SPLITS[split], file_name)
                coco_splits[split][0].append(entry)
                coco_splits[split][1].extend(anns)
            queries = expression_queries(scene)
            image_refs = _refs(queries, anns, split, len(refs), sentences, rng)
            refs += image_refs
            sentences += sum(len(r['sentences']) for r in image_refs)
            if split == 'train':
                expressions = [(i, q.sentence()) for i, q in queries]
                _write_train_sources(w, scene, k + 1, image_path, entry, anns, expressions, rng, rows)
            elif split == 'val':
                rows['region_questions_val'].append(_region_question_row(scene, '/'.join(COCO_IMAGES + (file_name, )),
                                                                         anns))
    categories = [dict(id=c + 1, name=name) for c, name in enumerate(CATEGORIES)]
    w.json(dict(images=images, annotations=annotations, categories=categories), 'ref_seg', 'refcoco', 'instances.json')
    for split, (split_images, split_annotations) in coco_splits.items():
        w.json(dict(images=split_images, annotations=split_annotations, categories=categories),
               'coco', 'annotations', f'instances_{COCO_INSTANCE_SPLITS[split]}.json')
    with open(w.path('ref_seg', 'refcoco', 'refs(unc).p'), 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    for name, path in ANNOTATION_FILES.items():
        w.json(rows[name], *path.split('/'))
    w.json(list(KINDS), 'ade20k', 'ade20k_classes.json')
    chance = dict(colour=1 / len(COLOURS), kind=1 / len(KINDS), colour_kind=1 / len(COLOURS) / len(KINDS))
    w.json(dict(colours=list(COLOURS), kinds=list(KINDS), chance=chance, images=rows['region_questions_val']),
           'region_questions_val.json')
    held_out = images[num_train:] or images
    w.link(os.path.join(root, *COCO_IMAGES, held_out[0]['file_name']), 'test.jpg')
    counts = {name: len(r) for name, r in rows.items()}
    counts.update({f'refcoco_{s}': len({r['image_id'] for r in refs if r['split'] == s}) for s, _ in splits},
                  refcoco_refs=len(refs), ade20k=num_train,
                  **{f'coco_{folder}': len(coco_splits[s][0]) for s, folder in COCO_INSTANCE_SPLITS.items()})
    with open(w.path('README.md'), 'w', encoding='utf-8') as f:
        f.write(README.format(root=root, num_train=num_train, num_val=num_val, num_test=splits[2][1], size=size,
                              seed=seed, **counts))
    return counts


README = """# Synthetic shapes: a visual grounding task in the OMG-LLaVA data formats

Generated by `python projects/tiny_omg_llava/synthetic_shapes.py --root {root} --train {num_train} --val {num_val}
--test {num_test} --size {size} --seed {seed}`; do not edit by hand (the module docstring explains the design).

{size}×{size} images with 2–4 shapes (circle, square, triangle, star; small or large; red, yellow, green, cyan,
blue or purple) on dark textured backgrounds. Every text is derived from the drawn attributes; every referring
expression picks out exactly one object. Masks are stored as COCO RLE (exact at this resolution, unlike polygons).

| annotation file | format | rows |
|---|---|---|
| ref_seg/refcoco/refs(unc).p + instances.json | REFER, images of train/val/testA | \
{refcoco_train}/{refcoco_val}/{refcoco_testA} |
| glamm_data/annotations/GranDf_HA_GCG_train.json | GranD-f GCG, RLE masks | {grandf_gcg} |
| region_caption/osprey/osprey_detail_description.json | Osprey region captions | {osprey_detail_description} |
| region_caption/osprey/osprey_conversation.json | Osprey region QA (what / colour / shape) | {osprey_conversation} |
| mdpv_point/gpt4v_tiny_point.json | MDPV point QA | {mdpv_point} |
| llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json | LLaVA, one caption turn | {llava_pretrain} |
| llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json | LLaVA, three turns | {llava_instruct} |
| ade20k/ADEChallengeData2016/annotations/training/*.png | ADE-style label maps of the 4 kinds | {ade20k} |
| coco/annotations/instances_{{train,val}}2017.json | COCO instances of the train / val images (OMG-Seg pre-stage) | \
{coco_train2017}/{coco_val2017} |
| region_questions_val.json | held-out region questions: val images, masks, colour and kind | {region_questions_val} |

REFER has {refcoco_refs} refs (up to 3 sentences each: the simplest, one superlative/position, one relation). The
val and testA refs use held-out images that no training file shows. All images are in
glamm_data/images/coco2014/train2014/; the training ones are hard-linked into glamm_data/images/grandf/train/,
mdpv_point/images/, llava_data/LLaVA-Pretrain/images/, llava_data/llava_images/ and
ade20k/ADEChallengeData2016/images/training/, and with the val ones into coco/{{train,val}}2017/. `test.jpg` is the
first held-out image.

region_questions_val.json: `{{"colours": [...], "kinds": [...], "chance": {{"colour", "kind", "colour_kind"}},
"images": [{{"image": path from this folder, "height", "width", "regions": [{{"segmentation": RLE, "bbox",
"colour", "kind", "size", "answer": "red circle"}}]}}]}}`; the chance rates are those of a uniform guess.
"""


def disk_size(root: str) -> int:
    """Bytes under ``root``, a hard-linked file counted once."""
    inodes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            inodes[stat.st_dev, stat.st_ino] = stat.st_size
    return sum(inodes.values())


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='data/synthetic_shapes', help='output folder')
    parser.add_argument('--train', type=int, default=2000, help='training images')
    parser.add_argument('--val', type=int, default=200, help="held-out images with REFER 'val' refs")
    parser.add_argument('--test', type=int, default=None,
                        help="held-out images with REFER 'testA' refs (default: as many as --val)")
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='seed of everything random')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = write_dataset(args.root, args.train, args.val, size=args.size, seed=args.seed, num_test=args.test)
    print(f'wrote {args.root} in {time.perf_counter() - start:.1f} s ({disk_size(args.root) / 2 ** 20:.1f} MiB on '
          'disk): ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
    return counts


if __name__ == '__main__':
    main()
