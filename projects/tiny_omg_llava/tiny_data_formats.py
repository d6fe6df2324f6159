"""What both tiny data builders share: one file writer and the pieces of the on-disk formats.

``synthetic_shapes.py`` (coloured shapes) and ``build_tiny_data.py`` (real photos) write the formats
of the full OMG-LLaVA sources under the reference ``./data`` layout, so the tiny configs read either
root like the full one:

* REFER (``ref_seg/refcoco/refs(unc).p`` + ``instances.json``) and COCO instance files;
* GranD-f GCG rows, Osprey region rows, MDPV point rows, LLaVA conversation rows (JSON lists);
* ADE20K label maps (PNG, class index + 1, 0 = other).

Masks are COCO RLE (:func:`rle`), conversations LLaVA messages (:func:`messages`).
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


class DataWriter:
    """Files under ``root`` (folders created on the way); an image written once can be hard-linked
    (copied where links fail) to other paths.

    Args:
        root: output folder.
        jpeg_quality: JPEG quality of :meth:`image`.
        jpeg_subsampling: PIL's chroma subsampling (0: 4:4:4, which keeps colour edges sharp; -1:
            PIL's default, 4:2:0).
    """

    def __init__(self, root: str, jpeg_quality: int = 90, jpeg_subsampling: int = -1) -> None:
        self.root = root
        self.jpeg_quality = jpeg_quality
        self.jpeg_subsampling = jpeg_subsampling

    def path(self, *parts: str) -> str:
        path = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def image(self, rgb: np.ndarray, *parts: str) -> str:
        """Write (H, W, 3) uint8 ``rgb`` as a JPEG; returns its path."""
        path = self.path(*parts)
        Image.fromarray(rgb).save(path, quality=self.jpeg_quality,
                                  subsampling=self.jpeg_subsampling)
        return path

    def label(self, label: np.ndarray, *parts: str) -> None:
        """Write an (H, W) uint8 label map as a PNG (lossless)."""
        Image.fromarray(label).save(self.path(*parts))

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
            f.write(json.dumps(data))  # json.dump would take the pure-Python encoder (same text)

    def text(self, text: str, *parts: str) -> None:
        with open(self.path(*parts), 'w', encoding='utf-8') as f:
            f.write(text)

    def refer(self, images: list[dict], annotations: list[dict], categories: list[dict],
              refs: list[dict], dataset: str = 'refcoco', split_by: str = 'unc') -> None:
        """REFER files: COCO-style ``instances.json`` and the pickled refs (protocol 2)."""
        self.json(dict(images=images, annotations=annotations, categories=categories),
                  'ref_seg', dataset, 'instances.json')
        with open(self.path('ref_seg', dataset, f'refs({split_by}).p'), 'wb') as f:
            pickle.dump(refs, f, protocol=2)


def rle(mask: np.ndarray) -> dict:
    """COCO RLE of an (H, W) bool mask, ``counts`` as text (JSON-ready)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(v) for v in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def messages(turns: list[tuple[str, str]]) -> list[dict]:
    """LLaVA-style messages: ``{"from": "human" | "gpt", "value": text}`` per question, answer."""
    return [{'from': role, 'value': text}
            for turn in turns for role, text in zip(('human', 'gpt'), turn)]


def interior_point(mask: np.ndarray) -> list[int]:
    """(x, y) of the mask pixel farthest from its border (where an MDPV mark goes)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [int(x), int(y)]


def random_interior_point(mask: np.ndarray, rng: np.random.Generator) -> list[int]:
    """(x, y) of a random pixel at least 2 px inside ``mask`` (where a user may click), else of its
    deepest one."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ys, xs = np.nonzero(inner)
    if not len(xs):
        return interior_point(mask)
    j = int(rng.integers(len(xs)))
    return [int(xs[j]), int(ys[j])]


def refer_sentences(sentences: list[str], first_id: int) -> list[dict]:
    """REFER ``sentences`` entries of one ref, ids counted on from ``first_id``."""
    return [dict(sent=s, raw=s, tokens=s.split(), sent_id=first_id + i)
            for i, s in enumerate(sentences)]


def disk_size(root: str) -> int:
    """Bytes under ``root``, a hard-linked file counted once."""
    inodes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            inodes[stat.st_dev, stat.st_ino] = stat.st_size
    return sum(inodes.values())
