"""The evaluation splits on disk: one sample per referring expression, GCG image, captioned region
or region question.

Samples are plain JSON-able dicts with an ``index`` (their position in the split), so they can be
sharded across ranks and written next to the predictions. Ground truth stays in the split object.

Layouts (the reference's, spec §9.3):

* **refseg** (REFER): ``DATA_ROOT/{dataset}/refs({split_by}).p`` + ``instances.json``; images
  ``file_name`` under the image folder (COCO train2014). ``split_by`` is ``unc`` for
  refcoco/refcoco+ and ``umd`` for refcocog.
* **gcg** (GranD-f val/test, read as the GLaMM-style ``evaluate_gcg.py`` reads them): the caption
  file ``DATA_ROOT/{dataset}/{split}_gcg_coco_caption_gt.json`` lists the images (``images[].id``,
  the file stem such as ``sa_10010541``) and, per image, an ``annotations`` entry with ``image_id``,
  ``caption`` and ``labels`` (the grounded phrases, in the order of the image's masks); the mask
  file ``{split}_gcg_coco_mask_gt.json`` holds COCO
  instances: ``images`` (``id``, ``height``, ``width``) and one ``annotations`` entry per phrase
      with ``image_id``
  and ``segmentation`` (RLE or polygons), in file order.
* **region_caption**: ``DATA_ROOT/{dataset}/finetune_{dataset}_{split}_with_mask.json``: COCO
  instances with one annotation (the region's ``segmentation``) per image; reference captions from
  ``DATA_ROOT/{dataset}/finetune_{dataset}_{split}_captions.json`` (COCO captions, the reference's
  ``mdetr_annotations`` file) or, without it, from the images' ``caption`` fields.
* **region_qa**: ``DATA_ROOT/region_questions_{split}.json`` (layout in
  :mod:`~omg_llava.evaluation.region_qa`).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from omg_llava.datasets.mask_decoding import decode_segmentation
from omg_llava.datasets.refer_seg import REFER_SPLITS, load_refs
from omg_llava.datasets.sample import MalformedSample

from .gcg import GroundedImage
from .refseg import reference_gt_mask
from .region_qa import QUESTIONS, question_prompt

TASKS = ('refseg', 'gcg', 'region_caption', 'region_qa')
DATASET_ALIASES = {'refcoco_plus': 'refcoco+'}
#: Image folder per task when ``--image-folder`` is not given, relative to the data root (the
#: reference tree: data/ref_seg, data/glamm_data/annotations, data/region_caption).
DEFAULT_IMAGE_FOLDERS = {'refseg': '../glamm_data/images/coco2014/train2014',
                         'gcg': '../images/grandf/val_test',
                         'region_caption': '../glamm_data/images/coco2014/train2014'}


def _read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path}; see docs/evaluation.md for the '
                                'expected layout')
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def _image_path(folder: str, file_name: str) -> str:
    return os.path.join(folder, file_name)


def rle_of(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) bool mask, with ``counts`` as text (JSON-able)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def _as_rle(segmentation: Any, height: int, width: int) -> dict:
    return rle_of(decode_segmentation(segmentation, height, width))


class RefSegSplit:
    """Every referring sentence of every ref of ``split``, in (image id, ref, sentence) order.

    Sample keys: ``index``, ``image_id``, ``file_name``, ``height``, ``width``, ``ref_id``,
    ``ann_id`` (int or list), ``sentence``.
    """

    task = 'refseg'

    def __init__(self, data_root: str, dataset: str, split: str, image_folder: str,
                 split_by: str | None = None) -> None:
        dataset = DATASET_ALIASES.get(dataset, dataset)
        if split_by is None:
            if dataset not in REFER_SPLITS:
                raise ValueError(f'unknown REFER dataset {dataset!r}; pass --split-by or one of '
                                 f'{sorted(REFER_SPLITS)}')
            split_by = REFER_SPLITS[dataset][0]  # unc for refcoco / refcoco+, umd for refcocog
        self.image_folder = image_folder
        folder = os.path.join(data_root, dataset)
        refs_path = os.path.join(folder, f'refs({split_by}).p')
        if not os.path.isfile(refs_path):
            raise FileNotFoundError(f'{refs_path} not found; expected the REFER layout '
                                    f'DATA_ROOT/{{dataset}}/'
                                    'refs(unc|umd).p + instances.json')
        instances = _read_json(os.path.join(folder, 'instances.json'), 'REFER instances.json')
        self._images = {img['id']: img for img in instances['images']}
        self._segmentations = {ann['id']: ann['segmentation'] for ann in instances['annotations']}
        refs = sorted((r for r in load_refs(refs_path) if r['split'] == split),
                      key=lambda r: (r['image_id'], r.get('ref_id', 0)))
        if not refs:
            raise ValueError(f'{refs_path} has no refs of split {split!r}')
        self.samples: list[dict] = []
        for ref in refs:
            image = self._images.get(ref['image_id'])
            if image is None:
                raise ValueError(f'ref {ref.get("ref_id")} points to image {ref["image_id"]}, '
                                 'absent from instances.json')
            for sentence in ref['sentences']:
                text = ' '.join((sentence.get('sent', '') if isinstance(sentence, dict)
                                 else str(sentence)).split())
                if text:
                    self.samples.append(dict(index=len(self.samples), image_id=ref['image_id'],
                                             file_name=image['file_name'], height=image['height'],
                                             width=image['width'], ref_id=ref.get('ref_id'),
                                             ann_id=ref['ann_id'], sentence=text))

    def image_path(self, sample: dict) -> str:
        return _image_path(self.image_folder, sample['file_name'])

    def _segmentations_of(self, sample: dict) -> list:
        ann_ids = (sample['ann_id'] if isinstance(sample['ann_id'], (list, tuple))
                   else [sample['ann_id']])
        if list(ann_ids) == [-1]:  # gRefCOCO's "no target"
            return []
        missing = [a for a in ann_ids if a not in self._segmentations]
        if missing:
            raise ValueError(f'ref {sample["ref_id"]}: annotation {missing[0]} is not in '
                             'instances.json')
        return [self._segmentations[a] for a in ann_ids]

    def gt_mask(self, sample: dict, protocol: str = 'corrected') -> np.ndarray:
        """(H, W) bool ground truth of the sample. ``corrected``: the union of the ref's
        annotations; ``reference``: :func:`~omg_llava.evaluation.refseg.reference_gt_mask` (pixels
        where two polygons of one object overlap are not ground truth)."""
        segmentations = self._segmentations_of(sample)
        H, W = sample['height'], sample['width']
        try:
            if protocol == 'reference':
                return reference_gt_mask(segmentations, H, W)
            mask = np.zeros((H, W), dtype=bool)
            for segmentation in segmentations:
                mask |= decode_segmentation(segmentation, H, W)
            return mask
        except MalformedSample as exc:
            raise ValueError(
                f'ref {sample["ref_id"]} (annotation {sample["ann_id"]}): {exc}'
            ) from exc


def _captions_by_image(path: str, images: list[dict], what: str) -> dict[Any, list[str]]:
    captions: dict[Any, list[str]] = defaultdict(list)
    if os.path.isfile(path):
        for ann in _read_json(path, what)['annotations']:
            captions[ann['image_id']].append(ann['caption'])
    else:
        for img in images:
            caption = img.get('caption')
            for text in caption if isinstance(caption, list) else [caption] if caption else []:
                captions[img['id']].append(text)
    if not captions:
        raise ValueError(f'no reference caption: {path} is missing and the images carry no '
                         '"caption"')
    return dict(captions)


class GCGSplit:
    """One sample per image of the GCG caption ground truth, in its file order (the images the
    reference scores).

    Attributes:
        samples: ``index``, ``image_id``, ``file_name`` (the image entry's, else ``{id}.jpg``),
            ``height``, ``width``.
        ground_truth: image id → the image's masks (RLE, mask-file order) and its ``labels`` (the
            phrases).
        ground_truth_errors: image id → why its masks could not be decoded
            (:meth:`check_ground_truth`).
        captions: image id → its reference captions.
    """

    task = 'gcg'

    def __init__(self, data_root: str, dataset: str, split: str, image_folder: str) -> None:
        self.image_folder = image_folder
        folder = os.path.join(data_root, dataset)
        caption_path = os.path.join(folder, f'{split}_gcg_coco_caption_gt.json')
        mask_path = os.path.join(folder, f'{split}_gcg_coco_mask_gt.json')
        captions = _read_json(caption_path, 'GCG caption ground truth')
        masks = _read_json(mask_path, 'GCG mask ground truth')
        for path, data in ((caption_path, captions), (mask_path, masks)):
            if not isinstance(data, dict) or not {'images', 'annotations'} <= data.keys():
                raise ValueError(f'{path}: not a COCO-style file (needs "images" and '
                                 '"annotations"); see docs/evaluation.md for the GranD-f layout')
        mask_images = {img['id']: img for img in masks['images']}
        anns_by_image: dict[Any, list[dict]] = defaultdict(list)
        for ann in masks['annotations']:
            anns_by_image[ann['image_id']].append(ann)
        captions_by_image: dict[Any, list[dict]] = defaultdict(list)
        for ann in captions['annotations']:
            captions_by_image[ann['image_id']].append(ann)
        self.samples, self.ground_truth, self.captions = [], {}, {}
        self.ground_truth_errors: dict[Any, str] = {}
        for img in captions['images']:
            image_id = img['id']
            entries = captions_by_image.get(image_id)
            if not entries:
                raise ValueError(f'{caption_path}: image {image_id!r} has no caption annotation '
                                 '(each image needs one with "caption" and "labels")')
            if 'labels' not in entries[0] or 'caption' not in entries[0]:
                raise ValueError(f'{caption_path}: the annotation of image {image_id!r} lacks '
                                 '"caption" or "labels" (the grounded phrases); use the GranD-f '
                                 'caption ground truth')
            anns = anns_by_image.get(image_id, [])
            H, W = _gcg_image_size(image_id, mask_images.get(image_id, {}), img, anns, mask_path)
            try:
                rles = [_as_rle(a['segmentation'], H, W) for a in anns]
            except Exception as exc:  # noqa: BLE001 - one bad annotation fails its image, not the split
                self.ground_truth_errors[image_id] = f'{mask_path}: image {image_id!r}: {exc}'
                rles = []
            # the reference reads the labels of the image's first caption annotation
            self.ground_truth[image_id] = GroundedImage(rles,
                                                        [str(p) for p in entries[0]['labels']])
            self.captions[image_id] = [e['caption'] for e in entries]
            file_name = (img.get('file_name') or mask_images.get(image_id, {}).get('file_name')
                         or f'{image_id}.jpg')
            self.samples.append(dict(index=len(self.samples), image_id=image_id,
                                     file_name=file_name, height=H, width=W))
        if not self.samples:
            raise ValueError(f'{caption_path} lists no image')

    def image_path(self, sample: dict) -> str:
        return _image_path(self.image_folder, sample['file_name'])

    def check_ground_truth(self, sample: dict) -> None:
        """Raise ``ValueError`` if the sample's ground-truth masks could not be decoded (the image
        is then a failed sample of the evaluation, not a reason to stop it)."""
        error = self.ground_truth_errors.get(sample['image_id'])
        if error is not None:
            raise ValueError(error)


def _gcg_image_size(image_id: Any, mask_image: dict, caption_image: dict, anns: list[dict],
                    mask_path: str) -> tuple[int, int]:
    """(H, W) of a GCG image: the mask file's image entry, else the caption file's, else an RLE's
    ``size``."""
    for entry in (mask_image, caption_image):
        if 'height' in entry and 'width' in entry:
            return int(entry['height']), int(entry['width'])
    for ann in anns:
        segmentation = ann.get('segmentation')
        rle = segmentation[0] if isinstance(segmentation, list) and segmentation else segmentation
        if isinstance(rle, dict) and 'size' in rle:
            return int(rle['size'][0]), int(rle['size'][1])
    raise ValueError(f'{mask_path}: no size for image {image_id!r} (give its "images" entry '
                     '"height" and "width")')


class RegionCaptionSplit:
    """One sample per region (one annotation per image).

    Attributes:
        samples: ``index``, ``image_id``, ``ann_id``, ``file_name``, ``height``, ``width``.
        captions: image id → reference captions.
    """

    task = 'region_caption'

    def __init__(self, data_root: str, dataset: str, split: str, image_folder: str) -> None:
        self.image_folder = image_folder
        folder = os.path.join(data_root, dataset)
        data = _read_json(os.path.join(folder, f'finetune_{dataset}_{split}_with_mask.json'),
                          'region annotations')
        images = {img['id']: img for img in data['images']}
        self._segmentations = {}
        self.samples = []
        for ann in data['annotations']:
            image = images.get(ann['image_id'])
            if image is None:
                raise ValueError(f'region annotation {ann.get("id")} points to image '
                                 f'{ann["image_id"]}, absent from '
                                 'the "images" list')
            if ann['image_id'] in self._segmentations:
                raise ValueError(f'image {ann["image_id"]} has several regions; the region-caption '
                                 'layout has one annotation per image id (one referring expression '
                                 'per image entry)')
            self._segmentations[ann['image_id']] = ann['segmentation']
            self.samples.append(dict(index=len(self.samples), image_id=ann['image_id'],
                                     ann_id=ann.get('id'),
                                     file_name=image['file_name'], height=image['height'],
                                     width=image['width']))
        self.captions = _captions_by_image(
            os.path.join(folder, f'finetune_{dataset}_{split}_captions.json'),
            data['images'],
            'region captions',
        )

    def image_path(self, sample: dict) -> str:
        return _image_path(self.image_folder, sample['file_name'])

    def region_mask(self, sample: dict) -> np.ndarray:
        """(H, W) bool region of the sample."""
        try:
            return decode_segmentation(self._segmentations[sample['image_id']], sample['height'],
                                       sample['width'])
        except MalformedSample as exc:
            raise ValueError(f'region of image {sample["image_id"]}: {exc}') from exc


class RegionQASplit:
    """One sample per (image, region, question kind) of ``DATA_ROOT/region_questions_{split}.json``
    (layout in :mod:`~omg_llava.evaluation.region_qa`).

    Attributes:
        samples: ``index``, ``image``, ``height``, ``width``, ``region`` (1-based),
            ``question_kind``, ``question``, ``colour``, ``kind``.
        vocabulary: ``{'colour': [...], 'kind': [...]}`` the words an answer is parsed for.
        chance: accuracy of a uniform guess per attribute set (``colour``, ``kind``,
            ``colour_kind``).
    """

    task = 'region_qa'

    def __init__(self, data_root: str, split: str,
                 question_kinds: Sequence[str] = tuple(QUESTIONS)) -> None:
        path = os.path.join(data_root, f'region_questions_{split}.json')
        data = _read_json(path,
                          'region-question manifest (projects/tiny_omg_llava/synthetic_shapes.py '
                          'writes it)')
        missing = {'colours', 'kinds', 'chance', 'images'} - set(data if isinstance(data, dict)
                                                                 else ())
        if missing:
            raise ValueError(f'{path}: not a region-question manifest, missing {sorted(missing)}')
        unknown = [k for k in question_kinds if k not in QUESTIONS]
        if unknown:
            raise ValueError(f'unknown question kinds {unknown}; choose from {list(QUESTIONS)}')
        self.data_root = data_root
        self.vocabulary = {'colour': list(data['colours']), 'kind': list(data['kinds'])}
        self.chance = dict(data['chance'])
        self._segmentations: dict[str, list] = {}
        self.samples = []
        for image in data['images']:
            self._segmentations[image['image']] = [r['segmentation'] for r in image['regions']]
            for r, region in enumerate(image['regions'], start=1):
                for kind in question_kinds:
                    self.samples.append(dict(
                        index=len(self.samples), image=image['image'], height=image['height'],
                        width=image['width'], region=r, question_kind=kind,
                        question=question_prompt(len(image['regions']),
                                                 QUESTIONS[kind][0].format(r=r)),
                        colour=region['colour'], kind=region['kind']))

    def image_path(self, sample: dict) -> str:
        return _image_path(self.data_root, sample['image'])

    def region_masks(self, sample: dict) -> list[np.ndarray]:
        """(H, W) bool mask of every region of the sample's image, in ``region{i}`` order."""
        H, W = sample['height'], sample['width']
        try:
            return [decode_segmentation(s, H, W) for s in self._segmentations[sample['image']]]
        except MalformedSample as exc:
            raise ValueError(f'regions of {sample["image"]}: {exc}') from exc


def load_split(
    task: str,
    data_root: str,
    dataset: str,
    split: str,
    image_folder: str | None = None,
    split_by: str | None = None,
) -> RefSegSplit | GCGSplit | RegionCaptionSplit | RegionQASplit:
    """The split of ``task``; ``image_folder`` defaults to :data:`DEFAULT_IMAGE_FOLDERS` under
    ``data_root``. ``region_qa`` reads ``data_root/region_questions_{split}.json`` (its image paths
    are relative to ``data_root``; ``dataset``, ``image_folder`` and ``split_by`` do not apply)."""
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if task == 'region_qa':
        if image_folder is not None or split_by is not None:
            raise ValueError('region_qa reads image paths from its manifest: drop --image-folder / '
                             '--split-by')
        return RegionQASplit(data_root, split)
    if image_folder is None:
        image_folder = os.path.normpath(os.path.join(data_root, DEFAULT_IMAGE_FOLDERS[task]))
    if not os.path.isdir(image_folder):
        raise FileNotFoundError(f'image folder {image_folder} not found; pass --image-folder')
    if task == 'refseg':
        return RefSegSplit(data_root, dataset, split, image_folder, split_by)
    if split_by is not None:
        raise ValueError('--split-by only applies to refseg')
    cls = GCGSplit if task == 'gcg' else RegionCaptionSplit
    return cls(data_root, dataset, split, image_folder)


__all__ = ['RefSegSplit', 'GCGSplit', 'RegionCaptionSplit', 'RegionQASplit', 'load_split', 'rle_of',
           'TASKS', 'DEFAULT_IMAGE_FOLDERS']
