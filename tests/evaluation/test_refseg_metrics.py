"""cIoU / gIoU against hand-computed values under both protocols, the reference's ground-truth
decoding, and the refseg loop on a REFER folder built from VOC masks."""
from __future__ import annotations

import numpy as np
import pytest

from omg_llava.evaluation.refseg import (MaskOverlap, mask_overlap, reference_gt_mask,
                                         reference_refseg_metrics, refseg_metrics)
from omg_llava.evaluation.runner import evaluate
from omg_llava.evaluation.splits import load_split

from voc_fixtures import MASKS, Answer, sentence_of, write_refer


def block(rows, cols, shape=(4, 4)):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_metrics_by_hand():
    overlaps = [
        # I 4, U 8: IoU 0.5
        mask_overlap(block(slice(0, 2), slice(1, 4)), block(slice(0, 2), slice(0, 3))),
        mask_overlap(np.zeros((4, 4), bool), np.zeros((4, 4), bool)),  # empty union: IoU 1
        mask_overlap(None, block(slice(2, 4), slice(2, 4))),  # no [SEG]: I 0, U = GT area 4
        mask_overlap(block(3, slice(0, 3)), block(3, slice(0, 3))),  # exact: I 3, U 3
    ]
    assert [(o.intersection, o.union) for o in overlaps] == [(4, 8), (0, 0), (0, 4), (3, 3)]
    assert [o.iou for o in overlaps] == [0.5, 1.0, 0.0, 1.0]
    metrics = refseg_metrics(overlaps)
    assert metrics['cIoU'] == pytest.approx(7 / 15)  # (4 + 0 + 0 + 3) / (8 + 0 + 4 + 3)
    assert metrics['gIoU'] == pytest.approx(2.5 / 4)
    assert metrics['num_expressions'] == 4
    assert refseg_metrics([(4, 8), (0, 0)]) == refseg_metrics([MaskOverlap(4, 8),
                                                               MaskOverlap(0, 0)])


def test_reference_metrics_by_hand():
    overlaps = [MaskOverlap(4, 8), MaskOverlap(0, 0), MaskOverlap(0, 4), MaskOverlap(3, 3)]
    # the third answer had no [SEG]: skipped for cIoU, 0 for gIoU
    has_seg = [True, True, False, True]
    metrics = reference_refseg_metrics(overlaps, has_seg)
    # (4 + 0 + 3) / (8 + 0 + 3 + 1e-10)
    assert metrics['cIoU'] == pytest.approx(7 / (11 + 1e-10), abs=1e-15)
    assert metrics['gIoU'] == pytest.approx((4 / (8 + 1e-5) + 1.0 + 3 / (3 + 1e-5)) / 4, abs=1e-15)
    assert metrics['num_expressions'] == 4
    assert reference_refseg_metrics([MaskOverlap(0, 4)], [False]) == {'cIoU': 0.0, 'gIoU': 0.0,
                                                                       'num_expressions': 1}
    assert reference_refseg_metrics([], []) == {'cIoU': 0.0, 'gIoU': 0.0, 'num_expressions': 0}


def rect(x0, y0, x1, y1):
    """A COCO polygon: pycocotools fills rows y0..y1-1 and columns x0..x1-1 of it."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def test_reference_ground_truth_counts_overlapping_polygons_once():
    a, b = rect(0, 0, 4, 4), rect(2, 0, 6, 4)  # one object, two polygons overlapping on columns 2-3
    assert np.array_equal(reference_gt_mask([[a]], 6, 8), block(slice(0, 4), slice(0, 4), (6, 8)))
    expected = block(slice(0, 4), slice(0, 6), (6, 8)) & ~block(slice(0, 4), slice(2, 4), (6, 8))
    # counts 2 are not ground truth
    assert np.array_equal(reference_gt_mask([[a, b]], 6, 8), expected)
    # two annotations of one ref: their counts are OR-ed bitwise (1 | 1 = 1, 1 | 2 = 3), then == 1
    c = rect(0, 4, 2, 6)
    union = reference_gt_mask([[a, b], [a, c]], 6, 8)
    assert np.array_equal(union, expected | block(slice(4, 6), slice(0, 2), (6, 8)))
    # RLE lists are summed too; an empty segmentation is an empty mask
    # column 0, columns 0-1
    strips = [dict(size=[6, 8], counts=[0, 6, 42]), dict(size=[6, 8], counts=[0, 12, 36])]
    assert np.array_equal(reference_gt_mask([strips], 6, 8), block(slice(0, 6), 1, (6, 8)))
    assert not reference_gt_mask([[]], 6, 8).any()


def test_metric_edge_cases():
    assert refseg_metrics([]) == {'cIoU': 0.0, 'gIoU': 0.0, 'num_expressions': 0}
    assert refseg_metrics([(0, 0)])['cIoU'] == 1.0
    with pytest.raises(ValueError, match='differ in size'):
        mask_overlap(np.zeros((3, 4), bool), np.zeros((4, 4), bool))


@pytest.fixture(scope='module')
def refer(tmp_path_factory):
    root = tmp_path_factory.mktemp('ref_seg')
    truth = write_refer(root, dataset='refcoco+', split='testA')
    return load_split('refseg', str(root), 'refcoco_plus', 'testA',
                      image_folder=str(root / 'images')), truth


def test_split_has_every_sentence_of_the_split(refer):
    split, truth = refer
    assert len(split.samples) == 2 * len(MASKS) == len(truth)
    assert [s['index'] for s in split.samples] == list(range(len(split.samples)))
    assert all(s['sentence'] in truth for s in split.samples)  # the 'train' ref is not there
    for sample in split.samples[:4]:
        assert np.array_equal(split.gt_mask(sample), truth[sample['sentence']])


@pytest.mark.parametrize('answer_with, cIoU, gIoU', [
    ('truth', 1.0, 1.0),
    ('other instance', 0.0, 0.0),  # VOC instances are disjoint
    ('nothing', 0.0, 0.0),
])
def test_loop_with_injected_predictions(refer, tmp_path, answer_with, cIoU, gIoU):
    split, truth = refer
    seen_images = set()

    def predict(image_path, prompt):
        seen_images.add(image_path)
        mask = truth[sentence_of(prompt)]
        if answer_with == 'truth':
            return Answer('<p> It </p> [SEG].', [mask])
        if answer_with == 'other instance':
            other = next(m for m in MASKS if not (m & mask).any())
            return Answer('<p> It </p> [SEG] [SEG].', [other, mask])  # only the first [SEG] counts
        return Answer('I cannot find it.', [])

    metrics = evaluate(split, predict, str(tmp_path), progress=False)
    assert metrics['cIoU'] == cIoU and metrics['gIoU'] == gIoU
    assert metrics['num_expressions'] == metrics['num_samples'] == len(split.samples)
    assert metrics['num_without_seg'] == (len(split.samples) if answer_with == 'nothing' else 0)
    reference = evaluate(split, predict, None, progress=False, protocol='reference')
    # no [SEG]: 0 / 1e-10
    assert reference['protocol'] == 'reference' and reference['cIoU'] == pytest.approx(cIoU)
    assert seen_images == {split.image_path(split.samples[0])}
    lines = (tmp_path / 'predictions.jsonl').read_text().splitlines()
    assert len(lines) == len(split.samples)
    assert (tmp_path / 'metrics.json').is_file()


def test_expressions_without_seg_count_as_empty_predictions(refer):
    split, truth = refer

    def predict(image, prompt):  # answers only the first sentence of each ref ('... from the left')
        sentence = sentence_of(prompt)
        return (Answer('[SEG]', [truth[sentence]]) if sentence.endswith('from the left')
                else Answer('No.', []))

    metrics = evaluate(split, predict, None, progress=False)
    assert metrics['num_without_seg'] == len(MASKS) and metrics['protocol'] == 'corrected'
    # both sentences of a ref share its mask
    assert metrics['gIoU'] == 0.5 and metrics['cIoU'] == 0.5
    reference = evaluate(split, predict, None, progress=False, protocol='reference')
    assert reference['cIoU'] == pytest.approx(1.0) and reference['gIoU'] == pytest.approx(0.5,
                                                                                          abs=1e-6)
    with pytest.raises(ValueError, match='protocol must be one of'):
        evaluate(split, predict, None, progress=False, protocol='paper')


def test_max_samples(refer):
    split, truth = refer
    metrics = evaluate(split, lambda image, prompt: Answer('[SEG]', [truth[sentence_of(prompt)]]),
                       None, max_samples=5, progress=False)
    assert metrics['num_expressions'] == 5 and metrics['cIoU'] == 1.0


def test_missing_files_are_explained(tmp_path):
    (tmp_path / 'images').mkdir()
    with pytest.raises(FileNotFoundError, match=r'refs\(umd\).p not found'):
        load_split('refseg', str(tmp_path), 'refcocog', 'val',
                   image_folder=str(tmp_path / 'images'))
    with pytest.raises(FileNotFoundError, match='--image-folder'):
        load_split('refseg', str(tmp_path), 'refcocog', 'val')
