"""COCO instance annotations as (image, labels, masks) samples, for pre-training the OMG-Seg
encoder, optionally with the REFER referring expressions of those instances.

Images go through the same pad-to-square + resize geometry as OMG-LLaVA's inputs
(:func:`omg_llava.inference.image_io.preprocess_image`), masks through
:meth:`~omg_llava.inference.image_io.SquareGeometry.masks_to_input`. Rows with a missing image or a
malformed segmentation are skipped with a counted warning, as in
:class:`~omg_llava.datasets.base.OMGDatasetBase`.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import SkippingDataset
from .mask_decoding import decode_segmentation
from .sample import MalformedSample


class CocoInstanceDataset(SkippingDataset):
    """Args:
        annotation_file: COCO instance JSON (``images``, ``annotations``, ``categories``).
        image_folder: folder the ``file_name`` entries are relative to.
        image_size: side S of the square network input.
        category_names: class order (label k = ``category_names[k]``); annotations of other
            categories are dropped. Default: the file's categories sorted by id.
        skip_crowd: drop ``iscrowd`` annotations (default True).
        refs_file: a REFER refs pickle (``refs(unc).p``) whose ``ann_id`` are this file's annotation
            ids (the synthetic data writes both from the same annotations; COCO and RefCOCO share
            theirs); each item then also has ``ref_sentences`` (list of r str) and ``ref_targets``
            (r,) long, the index of the referred instance in ``gt_labels`` / ``gt_masks``.
        refs_split: the refs of this split only (default ``'train'``).

    Each item: ``pixel_values`` (3, S, S) float, ``gt_labels`` (n,) long, ``gt_masks`` (n, S, S)
    uint8. Instances whose mask vanishes at size S are dropped (and the expressions that refer to
    them); an image may have no instance.
    """

    def __init__(self, annotation_file: str, image_folder: str, image_size: int,
                 category_names: Sequence[str] | None = None, skip_crowd: bool = True,
                 refs_file: str | None = None, refs_split: str = 'train') -> None:
        super().__init__()
        self.annotation_file = annotation_file
        with open(annotation_file, encoding='utf-8') as f:
            coco = json.load(f)
        if not isinstance(coco, dict) or not {'images', 'annotations', 'categories'} <= set(coco):
            raise ValueError(f'{annotation_file}: expected a COCO instance file with images, '
                             'annotations and categories')
        categories = sorted(coco['categories'], key=lambda c: c['id'])
        names = [c['name'] for c in categories] if category_names is None else list(category_names)
        by_name = {c['name']: c['id'] for c in categories}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f'{annotation_file}: categories {unknown} are not in the file '
                             f'({sorted(by_name)})')
        self.category_names = names
        self.category_to_label = {by_name[n]: k for k, n in enumerate(names)}
        self.image_folder = image_folder
        self.image_size = image_size
        anns = defaultdict(list)
        for ann in coco['annotations']:
            if ann.get('category_id') in self.category_to_label and not (skip_crowd
                                                                         and ann.get('iscrowd', 0)):
                anns[ann.get('image_id')].append(ann)
        self.records = [(image, anns.get(image.get('id'), [])) for image in coco['images']]
        self.sentences_by_ann = None if refs_file is None else self._sentences_by_annotation(
            refs_file, refs_split,
            {ann.get('id') for image_anns in anns.values() for ann in image_anns})

    @staticmethod
    def _sentences_by_annotation(refs_file: str, split: str, ann_ids: set) -> dict[int, list[str]]:
        """ann_id → its referring expressions, from the refs of ``split`` whose instance this file
        has."""
        from .refer_seg import load_refs, normalised_sentences
        by_ann: dict[int, list[str]] = defaultdict(list)
        for ref in load_refs(refs_file):
            if ref['split'] == split and ref['ann_id'] in ann_ids:
                by_ann[ref['ann_id']] += normalised_sentences(ref['sentences'])
        if not by_ann:
            raise ValueError(f'{refs_file}: no {split!r} ref names an instance of the annotation '
                             'file; the refs and the instances must come from the same annotations '
                             '(same ann ids)')
        return dict(by_ann)

    @property
    def source(self) -> str:
        return self.annotation_file

    def load_record(self, index: int) -> dict[str, Tensor]:
        return self.load_sample(*self.records[index])

    def load_sample(self, image_info: dict, anns: list[dict]) -> dict[str, Tensor]:
        """One image record and its annotations → a sample (raises :class:`MalformedSample`)."""
        from omg_llava.inference.image_io import load_image, preprocess_image
        if not isinstance(image_info.get('file_name'), str):
            raise MalformedSample(f'image entry without file_name: {str(image_info)[:80]}')
        path = os.path.join(self.image_folder, image_info['file_name'])
        try:
            image = load_image(path)
        except (FileNotFoundError, ValueError) as exc:
            raise MalformedSample(f'unreadable image: {exc}') from exc
        W, H = image.size
        if (image_info.get('height', H), image_info.get('width', W)) != (H, W):
            raise MalformedSample(f'image size mismatch: {path} is {W}x{H}, the annotation says '
                                  f'{image_info.get("width")}x{image_info.get("height")}')
        pixel_values, geometry = preprocess_image(image, self.image_size)
        labels = [self.category_to_label[a['category_id']] for a in anns]
        masks = np.stack([decode_segmentation(a.get('segmentation'), H, W)
                          for a in anns]) if anns else \
            np.zeros((0, H, W), dtype=bool)
        masks = geometry.masks_to_input(torch.from_numpy(masks)) > 0.5  # (n, S, S)
        keep = masks.flatten(1).any(-1)
        sample = dict(pixel_values=pixel_values,
                      gt_labels=torch.tensor(labels, dtype=torch.long)[keep],
                      gt_masks=masks[keep].to(torch.uint8))
        if self.sentences_by_ann is not None:
            kept = [a for a, k in zip(anns, keep.tolist()) if k]
            pairs = [(sentence, index) for index, a in enumerate(kept)
                     for sentence in self.sentences_by_ann.get(a.get('id'), [])]
            sample['ref_sentences'] = [sentence for sentence, _ in pairs]
            sample['ref_targets'] = torch.tensor([index for _, index in pairs], dtype=torch.long)
        return sample


def instance_collate_fn(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images, keep per-image labels/masks (and referring expressions, if any) as lists:
    ``{'data': {...}, 'data_samples': None}``."""
    data = dict(pixel_values=torch.stack([s['pixel_values'] for s in samples]),
                gt_labels=[s['gt_labels'] for s in samples],
                gt_masks=[s['gt_masks'] for s in samples])
    if 'ref_sentences' in samples[0]:
        data.update(ref_sentences=[s['ref_sentences'] for s in samples],
                    ref_targets=[s['ref_targets'] for s in samples])
    return {'data': data, 'data_samples': None}
