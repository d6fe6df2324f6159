"""CocoInstanceDataset: pad-to-square masks, category order, skipped malformed rows, collate."""
import json

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from omg_llava.datasets import CocoInstanceDataset, instance_collate_fn


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')}


def test_samples_geometry_and_skips(tmp_path):
    H, W = 40, 80  # wide image: padded 20 px above and below
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / 'a.png')
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / 'b.png')
    mask = np.zeros((H, W), bool)
    mask[0:10, 0:20] = True
    coco = dict(images=[dict(id=1, file_name='a.png', height=H, width=W),
                        dict(id=2, file_name='b.png', height=H, width=W),
                        dict(id=3, file_name='missing.png', height=H, width=W)],
                annotations=[dict(id=1, image_id=1, category_id=7, segmentation=_rle(mask),
                                  iscrowd=0),
                             dict(id=2, image_id=1, category_id=3,
                                  segmentation=[[0, 0, 10, 0, 10, 10, 0, 10]], iscrowd=0),
                             dict(id=3, image_id=2, category_id=3,
                                  segmentation={'size': [H, W], 'counts': [5]}, iscrowd=0)],
                categories=[dict(id=7, name='circle'), dict(id=3, name='square')])
    path = tmp_path / 'instances.json'
    path.write_text(json.dumps(coco))
    dataset = CocoInstanceDataset(str(path), str(tmp_path), image_size=32)
    assert dataset.category_names == ['square', 'circle']  # sorted by id
    sample = dataset[0]
    assert sample['pixel_values'].shape == (3, 32, 32)
    assert sample['gt_labels'].tolist() == [1, 0]
    assert sample['gt_masks'].dtype == torch.uint8 and sample['gt_masks'].shape == (2, 32, 32)
    # the 20x10 box at the top-left of the original sits at rows 20/80*32 = 8 .. 12, columns 0 .. 8
    assert sample['gt_masks'][0].nonzero()[:, 0].min() == 8 and sample['gt_masks'][0].sum() == 4 * 8
    # rows 1 (bad RLE) and 2 (missing image) are skipped, counted, and the next good row is served
    assert dataset[1]['gt_labels'].tolist() == [1, 0]
    assert sum(dataset.skipped.values()) == 2
    batch = instance_collate_fn([dataset[0], dataset[0]])
    assert batch['data_samples'] is None and batch['data']['pixel_values'].shape == (2, 3, 32, 32)
    assert len(batch['data']['gt_masks']) == 2
    only_circles = CocoInstanceDataset(str(path), str(tmp_path), image_size=32,
                                       category_names=['circle'])
    assert only_circles[0]['gt_labels'].tolist() == [0]


def test_referring_expressions_follow_their_instances(tmp_path):
    import pickle

    import pytest
    H = W = 32
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(tmp_path / 'a.png')
    left, right, tiny = np.zeros((H, W), bool), np.zeros((H, W), bool), np.zeros((H, W), bool)
    left[8:20, 2:12] = True
    right[8:20, 18:30] = True
    tiny[3, 3] = True  # between the sample points at 8 px: dropped, with its expression
    coco = dict(images=[dict(id=1, file_name='a.png', height=H, width=W)],
                annotations=[dict(id=10, image_id=1, category_id=1, segmentation=_rle(tiny),
                                  iscrowd=0),
                             dict(id=11, image_id=1, category_id=1, segmentation=_rle(left),
                                  iscrowd=0),
                             dict(id=12, image_id=1, category_id=2, segmentation=_rle(right),
                                  iscrowd=0)],
                categories=[dict(id=1, name='circle'), dict(id=2, name='square')])
    (tmp_path / 'instances.json').write_text(json.dumps(coco))
    refs = [dict(image_id=1, ann_id=12, split='train',
                 sentences=[dict(sent='the square'), dict(sent='right one.')]),
            dict(image_id=1, ann_id=11, split='train',
                 sentences=[dict(sent='the circle on the left')]),
            dict(image_id=1, ann_id=10, split='train', sentences=[dict(sent='the dot')]),
            dict(image_id=1, ann_id=11, split='val', sentences=[dict(sent='held out')]),
            dict(image_id=9, ann_id=99, split='train', sentences=[dict(sent='another file')])]
    with open(tmp_path / 'refs.p', 'wb') as f:
        pickle.dump(refs, f)
    dataset = CocoInstanceDataset(str(tmp_path / 'instances.json'), str(tmp_path), image_size=8,
                                  refs_file=str(tmp_path / 'refs.p'))
    sample = dataset[0]
    assert sample['gt_labels'].tolist() == [0, 1]  # the tiny instance is gone
    pairs = sorted(zip(sample['ref_sentences'], sample['ref_targets'].tolist()))
    assert pairs == [('right one', 1), ('the circle on the left', 0), ('the square', 1)]
    batch = instance_collate_fn([sample, sample])
    assert batch['data']['ref_sentences'] == [sample['ref_sentences']] * 2
    assert len(batch['data']['ref_targets']) == 2
    with pytest.raises(ValueError, match='no \'test\' ref names an instance'):
        CocoInstanceDataset(str(tmp_path / 'instances.json'), str(tmp_path), image_size=8,
                            refs_file=str(tmp_path / 'refs.p'), refs_split='test')
