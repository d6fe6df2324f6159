"""Synthetic shapes, part 1: drawing a scene (:func:`sample_scene`).

Each image holds 2–4 flat-coloured shapes (circle, square, triangle, star; small or large) on a
textured background. Choices made for learnability:

* 6 colours whose hues are about 60° apart (red, yellow, green, cyan, blue, purple), all bright and
  saturated, and 4 kinds of clearly different outline. The two small vocabularies make 24
  colour-kind pairs: enough to force reading both words, few enough for each pair to be seen
  hundreds of times in 2000 images.
* Sizes with a gap: small shapes span 26–32% of the image side, large ones 42–52%, so
  "small"/"large" never hesitate. The sizes are set by the visual-token grid: OMG-LLaVA sees an
  object through its OMG-Seg query only when that query wins a cell of the grid, and the cell's
  object prior is read at the cell centre (bilinear resize, spec §1.3). The 7B model's 16×16 grid
  has a pitch of 6% of the image side, small against RefCOCO objects; the tiny model's 4×4 grid at
  128 px has a pitch of 25%. With shapes of 15–20% of the side, only 51% of the small ones had a
  visual token (any query, IoU ≥ 0.5: 81%), which capped the referring cIoU near 0.55 even for a
  perfect choice of token. A shape of at least a cell's width covers a cell centre far more often.
* Backgrounds (smooth noise, stripes, gradients) are dark (HSV value ≤ 0.45) and desaturated
  (≤ 0.35) with a texture amplitude of 10–30 levels, so an object's colour lies about 150 RGB units
  (at least ~50) from the nearest background pixel: shapes are easy to *find*, the difficulty is in
  *which one*. Shape colours jitter by ±12 per channel and the image gets Gaussian pixel noise
  (σ = 3), so a colour is not one exact value.
* Objects do not overlap in 70% of the images (at least 3 px apart); otherwise a later shape may
  hide at most 25% of an earlier one, whose mask loses the hidden pixels. No two objects share
  colour, kind *and* size, so every object has at least one attribute-only description; half of the
  new objects copy the colour or the kind of an earlier one, so that one attribute alone is often
  ambiguous.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

COLOURS = {'red': (220, 40, 40), 'yellow': (235, 210, 40), 'green': (40, 180, 70),
           'cyan': (40, 200, 210), 'blue': (50, 90, 230), 'purple': (160, 60, 210)}
KINDS = ('circle', 'square', 'triangle', 'star')
# COCO categories of the instance files: colour and kind (like LVIS's fine-grained names), so that
# the OMG-Seg pre-stage's queries must tell colours apart too (with kinds only, measured region-QA
# colour accuracy was 0.43).
CATEGORIES = tuple(f'{colour} {kind}' for kind in KINDS for colour in COLOURS)
SIZE_CLASSES = {'small': (0.26, 0.32), 'large': (0.42, 0.52)}  # extent range, fraction of the side
OBJECT_COUNTS, OBJECT_COUNT_WEIGHTS = (2, 3, 4), (0.3, 0.4, 0.3)
BACKGROUNDS = {'noise': 'mottled', 'stripes': 'striped', 'gradient': 'shaded'}  # → caption word
COLOUR_JITTER = 12  # per-channel jitter of an object's colour
PIXEL_NOISE = 3.0  # std of the Gaussian noise on the whole image
SHARE_PROB = 0.5  # chance that a new object copies the colour or the kind of an earlier one
OCCLUSION_PROB = 0.3  # share of images in which shapes may overlap
MAX_OCCLUDED = 0.25  # most of a shape's area that later shapes may hide
GAP = 3  # px between shapes in images without overlap
PLACEMENT_TRIES = 100


@dataclass
class Obj:
    """One drawn shape: attributes, visible (H, W) bool mask, its [x, y, w, h] box and (x, y)
    centroid in pixels."""

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
    """(H, W, 3) uint8 image, its objects in painting order and the background kind (a key of
    BACKGROUNDS)."""

    image: np.ndarray
    objects: list[Obj]
    background: str


def shape_mask(kind: str, side: int, centre: tuple[float, float], extent: float,
               angle: float) -> np.ndarray:
    """(side, side) bool mask of one shape about ``extent`` px across, rotated by ``angle``
    radians."""
    mask = np.zeros((side, side), np.uint8)
    if kind == 'circle':  # all drawing at 1/16 px precision
        cv2.circle(mask, (round(centre[0] * 16), round(centre[1] * 16)), round(extent * 8), 1, -1,
                   shift=4)
        return mask.astype(bool)
    if kind == 'square':
        radii, phase = [0.6 * extent] * 4, np.pi / 4  # side 0.85 extent
    elif kind == 'triangle':
        radii, phase = [0.58 * extent] * 3, -np.pi / 2  # pointing up: 1.0 extent wide, 0.87 high
    else:  # five-pointed star, inner radius 0.45 of the outer one
        radii, phase = [0.6 * extent, 0.27 * extent] * 5, -np.pi / 2
    angles = phase + angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    points = np.stack([centre[0] + np.cos(angles) * radii, centre[1] + np.sin(angles) * radii],
                      axis=1)
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
        return (base + cv2.resize(field, (side, side), interpolation=cv2.INTER_CUBIC)
                * rng.uniform(10, 22), kind)
    yy, xx = np.ogrid[:side, :side]
    theta = rng.uniform(0, np.pi)
    # distance along a random direction
    ramp = (xx * np.cos(theta) + yy * np.sin(theta)).astype(np.float32)
    if kind == 'stripes':
        wave = np.sin(2 * np.pi * ramp / rng.uniform(6, 20) + rng.uniform(0, 2 * np.pi))
        tint = (0.5 + rng.uniform(size=3)).astype(np.float32)  # stripe amplitude per channel
        return base + wave[..., None] * rng.uniform(10, 20) * tint, kind
    t = ((ramp - ramp.min()) / np.ptp(ramp))[..., None]
    return base * (1 - t) + _muted(rng) * t, kind


def _sample_attributes(rng: np.random.Generator,
                       taken: list[tuple[str, str, str]]) -> tuple[str, str, str]:
    """(kind, colour, size) not yet in ``taken``; often sharing the colour or kind of an earlier
    object."""
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
    """Full mask of a new shape that fits the rules against the placed ones, or None after
    PLACEMENT_TRIES."""
    kernel = np.ones((2 * GAP + 1, 2 * GAP + 1), np.uint8)
    for _ in range(PLACEMENT_TRIES):
        extent = rng.uniform(*SIZE_CLASSES[size]) * side
        margin = 0.6 * extent + 2
        centre = tuple(rng.uniform(margin, side - margin, size=2))
        angle = rng.uniform(-np.pi, np.pi) if kind == 'star' else np.radians(rng.uniform(-15, 15))
        mask = shape_mask(kind, side, centre, extent, angle)
        if may_overlap:
            ok = all((v & ~mask).sum() >= (1 - MAX_OCCLUDED) * f.sum()
                     and (f & mask).sum() <= MAX_OCCLUDED * mask.sum()
                     for f, v in zip(full, visible))
        else:
            grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
            ok = not any((grown & f).any() for f in full)
        if ok:
            return mask
    return None


def sample_scene(rng: np.random.Generator, size: int = 128) -> Scene:
    """Draw one image of ``size`` × ``size`` px with 2–4 shapes (see the module docstring for the
    rules)."""
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
            image[mask] = np.array(COLOURS[colour]) + rng.integers(-COLOUR_JITTER,
                                                                   COLOUR_JITTER + 1, size=3)
        if len(full) >= 2:
            break
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    objects = []
    for (kind, colour, size_class), mask in zip(attributes, visible):
        ys, xs = np.nonzero(mask)
        bbox = tuple(int(v) for v in cv2.boundingRect(mask.astype(np.uint8)))
        objects.append(Obj(kind, colour, size_class, mask, bbox,
                           (float(xs.mean()), float(ys.mean()))))
    return Scene(image, objects, background)

