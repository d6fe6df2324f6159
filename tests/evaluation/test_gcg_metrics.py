"""GCG metrics (greedy-pair mIoU, recall, AP50, phrase similarity) under both protocols, the GranD-f
ground truth and the GCG loop with injected answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omg_llava.evaluation.gcg import (GroundedImage, TransformerPhraseSimilarity,
                                      bag_of_words_cosine,
                                      gcg_mask_metrics, greedy_pairs, image_miou,
                                      image_true_positives, mask_ap,
                                      mask_iou_matrix, reference_image_miou,
                                      reference_true_positives, token_jaccard)
from omg_llava.evaluation.runner import evaluate
from omg_llava.evaluation.splits import load_split, rle_of

from voc_fixtures import (GCG_CAPTION, GCG_IMAGE_IDS, GCG_OBJECTS, MASKS, Answer, gcg_answer,
                          write_gcg)

#: The released GCG evaluation's questions, verbatim and in order (spec prompts.md,
#: tools/gcg_omg_seg_llava.py).
RELEASED_GCG_QUESTIONS = [
    'Could you please give me a detailed description of the image? Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
    'Can you provide a thorough description of the this image? Please output with interleaved '
    'segmentation masks for the corresponding phrases.',
    'Please describe in detail the contents of the image. Please respond with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
    'Could you give a comprehensive explanation of what can be found within this picture? Please '
    'output with interleaved segmentation masks for the corresponding phrases.',
    'Could you give me an elaborate explanation of this picture? Please respond with interleaved '
    'segmentation masks for the corresponding phrases.',
    'Could you provide me with a detailed analysis of this photo? Please output with interleaved '
    'segmentation masks for the corresponding parts of the answer.',
]


def strip(cols, width=10):
    """A 1 x width mask covering ``cols``."""
    mask = np.zeros((1, width), bool)
    mask[0, cols] = True
    return mask


G0, G1 = strip(slice(0, 4)), strip(slice(6, 10))
# IoU(G0,P0) 2/4, IoU(G1,P1) 4/5, P2 touches none
P0, P1, P2 = strip(slice(0, 2)), strip(slice(5, 10)), strip(4)


def test_iou_matrix_and_greedy_pairs():
    assert mask_iou_matrix([G0, G1], [P0, P1, P2]) == pytest.approx(np.array([[0.5, 0, 0],
                                                                              [0, 0.8, 0]]))
    scores = np.array([[0.9, 0.5], [0.6, 0.0]])
    assert greedy_pairs(scores) == [(0, 0, 0.9)]  # then only (1, 1) = 0 is left: no positive IoU
    assert greedy_pairs(scores, admissible=scores < 0.8) == [(1, 0, 0.6), (0, 1, 0.5)]
    assert greedy_pairs(np.zeros((0, 3))) == []


def test_miou_by_hand():
    assert image_miou([G0, G1], [P0, P1, P2]) == pytest.approx((0.5 + 0.8) / 2)
    assert image_miou([G0, G1], [P2]) == 0.0  # no positive pair
    assert image_miou([G0], []) == 0.0


def test_offline_phrase_similarity():
    sims = bag_of_words_cosine(['a man', 'a white dog', 'the'],
                               ['the man', 'a black dog', 'the', ''])
    assert sims == pytest.approx(np.array([[1, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]]))
    assert token_jaccard(['a red car'], ['red cars', 'car red']) == pytest.approx(np.array([[1 / 3,
                                                                                             1.0]]))


def test_recall_needs_mask_and_phrase():
    gt_masks, gt_phrases = [G0, G1], ['a man', 'a red car']
    assert image_true_positives(gt_masks, gt_phrases, [strip(slice(0, 3)), G1],
                                ['the man', 'a blue bus']) == 1
    assert image_true_positives(gt_masks, gt_phrases, [G1, G0], ['red car', 'man']) == 2
    # IoU 0.5 passes
    assert image_true_positives(gt_masks, gt_phrases, [P0, G1], ['man', 'red car']) == 2
    # IoU 0.25
    assert image_true_positives(gt_masks, gt_phrases, [strip(0), G1], ['man', 'red car']) == 1
    custom = image_true_positives(gt_masks, gt_phrases, [G0], ['anything'],
                                  similarity=lambda g, p: np.ones((len(g), len(p))))
    assert custom == 1


def test_reference_recall_stops_at_the_first_failing_pair():
    gt_masks, gt_labels = [G0, G1], ['a man', 'a red car']
    # the best pair (G0, exact copy, IoU 1) has the wrong phrase: the reference stops there, the
    # corrected protocol goes on to the admissible (G1, P1) pair
    pred_masks, pred_labels = [G0, P1], ['a blue bus', 'the red car']
    assert reference_true_positives(gt_masks, gt_labels, pred_masks, pred_labels) == 0
    assert image_true_positives(gt_masks, gt_labels, pred_masks, pred_labels) == 1
    # highest IoU first, both pass: two pairs in both protocols
    assert reference_true_positives(gt_masks, gt_labels, [P1, G0], ['red car', 'man']) == 2
    # best IoU 0.8 passes, next best IoU 0.5 passes the IoU test (>= 0.5) but not the phrase: 1
    assert reference_true_positives(gt_masks, gt_labels, [P0, P1], ['a dog', 'red car']) == 1


def test_reference_recall_matches_labels_by_position():
    # two masks but one phrase: the best pair's column (1) lies outside the 1 x 1 similarity matrix;
    # the reference's IndexError was caught per image, which then scores 0
    assert reference_true_positives([G0], ['a man'], [P2, G0], ['the man']) == 0
    assert reference_true_positives([G0], ['a man'], [G0, P2], ['the man']) == 1
    # no label for the ground-truth mask
    assert reference_true_positives([G0], [], [G0], ['the man']) == 0
    assert reference_true_positives([G0], ['a man'], [], []) == 0


def test_reference_miou():
    assert reference_image_miou([G0, G1], [P0, P1, P2]) == pytest.approx((0.5 + 0.8) / 2)
    assert reference_image_miou([G0], [P2]) == 0.0 and reference_image_miou([G0], []) == 0.0
    empty = np.zeros((1, 10), bool)
    # two empty masks: IoU NaN ends the pairing
    assert reference_image_miou([empty, G0], [empty, G0]) == 0.0
    assert image_miou([empty, G0], [empty, G0]) == 1.0


def test_mask_metrics_per_protocol():
    gt = {'x': GroundedImage([rle_of(G0), rle_of(G1)], ['a man', 'a red car'])}
    pred = {'x': GroundedImage([rle_of(G0), rle_of(P1)], ['a blue bus', 'the red car'])}
    corrected = gcg_mask_metrics(gt, {'x': (1, 10)}, pred)
    reference = gcg_mask_metrics(gt, {'x': (1, 10)}, pred, protocol='reference')
    assert corrected['recall'] == 0.5 and reference['recall'] == 0.0
    assert corrected['mIoU'] == reference['mIoU'] == pytest.approx(0.9)
    assert corrected['AP50'] == reference['AP50'] == 1.0
    # one label fewer than masks: the corrected protocol pairs by position, the missing phrase never
    # matches
    short = {'x': GroundedImage([rle_of(G0), rle_of(G1)], ['a man'])}
    metrics = gcg_mask_metrics(short, {'x': (1, 10)},
                               {'x': GroundedImage([rle_of(G0), rle_of(G1)], ['man', 'car'])})
    assert metrics['num_gt_phrases'] == 1 and metrics['recall'] == 1.0
    with pytest.raises(ValueError, match='protocol'):
        gcg_mask_metrics(gt, {'x': (1, 10)}, pred, protocol='paper')


def test_mask_ap50_on_a_tiny_coco_set():
    sizes = {'a': (1, 10), 'b': (1, 10)}
    gt = {'a': [rle_of(G0), rle_of(G1)], 'b': [rle_of(P1)]}
    assert mask_ap(gt, sizes, gt) == {'AP50': 1.0, 'mask_AP': 1.0}
    disjoint = {'a': [rle_of(strip(4)), rle_of(strip(5))], 'b': [rle_of(strip(slice(0, 4)))]}
    assert mask_ap(gt, sizes, disjoint) == {'AP50': 0.0, 'mask_AP': 0.0}
    assert mask_ap(gt, sizes, {}) == {'AP50': 0.0, 'mask_AP': 0.0}
    assert mask_ap({'a': [], 'b': []}, sizes, gt)['AP50'] is None  # nothing to find


def test_transformer_similarity_from_a_local_folder(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer
    words = ['a', 'the', 'man', 'dog', 'red', 'car']
    (tmp_path / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]',
                                                   '[MASK]'] + words))
    BertTokenizer(str(tmp_path / 'vocab.txt')).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    similarity = TransformerPhraseSimilarity(str(tmp_path))
    sims = similarity(['a man', 'the red car'], ['a man', 'dog', 'the red car'])
    assert sims.shape == (2, 3)
    assert sims[0, 0] == pytest.approx(1.0) and sims[1, 2] == pytest.approx(1.0)
    batch = similarity.tokenizer(['dog'], return_tensors='pt')
    with torch.no_grad():
        # the reference: mean over all positions
        expected = similarity.model(**batch).last_hidden_state.mean(1)
    # padding excluded
    assert torch.allclose(similarity.embed(['dog', 'the red car'])[:1], expected, atol=1e-6)


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp('gcg')
    write_gcg(root)
    return load_split('gcg', str(root), 'gcg_val_test', 'val', image_folder=str(root / 'images'))


def test_split_reads_the_grandf_files(split):
    assert [s['image_id'] for s in split.samples] == list(GCG_IMAGE_IDS)
    # the caption file's images carry only ids
    assert split.samples[0]['file_name'] == f'{GCG_IMAGE_IDS[0]}.jpg'
    # from the mask file
    assert (split.samples[0]['height'], split.samples[0]['width']) == MASKS[0].shape
    first = split.ground_truth[GCG_IMAGE_IDS[0]]
    assert first.phrases == [p for _, p in GCG_OBJECTS]  # the caption file's labels
    assert [m['counts'] for m in first.masks] == [rle_of(MASKS[k])['counts']
                                                  for k, _ in GCG_OBJECTS]
    assert split.captions == {i: [GCG_CAPTION] for i in GCG_IMAGE_IDS}


def _grandf(tmp_path, caption_annotation: dict, mask_image: dict | None = None):
    """A one-image GranD-f pair of files with the given caption annotation; returns the split
    loader."""
    folder = tmp_path / 'gcg_val_test'
    folder.mkdir()
    (tmp_path / 'images').mkdir()
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    image = mask_image if mask_image is not None else dict(id='sa_1', height=4, width=6)
    (folder / 'val_gcg_coco_mask_gt.json').write_text(json.dumps(dict(
        images=[image],
        annotations=[dict(id=1, image_id='sa_1', category_id=1, segmentation=rle_of(mask))])))
    (folder / 'val_gcg_coco_caption_gt.json').write_text(json.dumps(dict(
        images=[dict(id='sa_1')], annotations=[dict(id=1, image_id='sa_1', **caption_annotation)])))
    return lambda: load_split('gcg', str(tmp_path), 'gcg_val_test', 'val',
                              image_folder=str(tmp_path / 'images'))


def test_split_without_labels_or_size_is_explained(tmp_path):
    with pytest.raises(ValueError, match='lacks "caption" or "labels"'):
        _grandf(tmp_path, dict(caption='A box.'))()


def test_split_size_from_the_rle_when_the_image_entry_has_none(tmp_path):
    split = _grandf(tmp_path, dict(caption='A <p> box </p>.', labels=['box']),
                    mask_image=dict(id='sa_1'))()
    assert (split.samples[0]['height'], split.samples[0]['width']) == (4, 6)
    assert split.ground_truth['sa_1'].phrases == ['box']


def test_split_needs_the_caption_file(tmp_path):
    write_gcg(tmp_path)
    (tmp_path / 'gcg_val_test' / 'val_gcg_coco_caption_gt.json').unlink()
    with pytest.raises(FileNotFoundError, match='GCG caption ground truth not found'):
        load_split('gcg', str(tmp_path), 'gcg_val_test', 'val',
                   image_folder=str(tmp_path / 'images'))


def test_questions_are_the_released_ones_in_order(split):
    asked = []

    # the first image answers with masks at the third question, the second never
    def predict(image_path, question):
        asked.append((image_path, question))
        if image_path.endswith(f'{GCG_IMAGE_IDS[0]}.jpg') and len(asked) == 3:
            return gcg_answer([(p, MASKS[k]) for k, p in GCG_OBJECTS])
        return Answer('A room.', [])

    metrics = evaluate(split, predict, None, progress=False, java=None)
    assert [q for _, q in asked] == RELEASED_GCG_QUESTIONS[:3] + RELEASED_GCG_QUESTIONS
    assert metrics['num_without_seg'] == 1


def run(split, predict, tmp_path):
    # a new predictor each time
    return evaluate(split, predict, str(tmp_path), progress=False, java=None, resume=False)


def test_ground_truth_answers_score_one(split, tmp_path):
    calls = []

    def predict(image_path, question):
        calls.append(question)
        # the first two questions of the first image get no [SEG]: the loop asks again
        if len(calls) <= 2:
            return Answer('A room.', [])
        return gcg_answer([(p, MASKS[k]) for k, p in GCG_OBJECTS])

    metrics = run(split, predict, tmp_path)
    assert len(calls) == 4 and calls[0] != calls[2]
    assert metrics['AP50'] == 1.0 and metrics['mIoU'] == 1.0 and metrics['recall'] == 1.0
    assert metrics['num_gt_phrases'] == 6 and metrics['num_without_seg'] == 0
    assert metrics['METEOR'] is None and metrics['tokenizer'] == 'python'
    record = json.loads((tmp_path / 'predictions.jsonl').read_text().splitlines()[0])
    assert record['question_index'] == 2
    assert record['caption'] == 'A scene with a person and a wooden chair and the bottle .'
    assert record['phrases'] == record['mask_phrases'] == ['a person', 'a wooden chair',
                                                           'the bottle']
    assert len(record['pred_masks']) == 3


def test_right_masks_wrong_phrases(split, tmp_path):
    metrics = run(split,
                  lambda image, q: gcg_answer([('a tree', MASKS[k]) for k, _ in GCG_OBJECTS]),
                  tmp_path)
    assert metrics['mIoU'] == 1.0 and metrics['AP50'] == 1.0 and metrics['recall'] == 0.0


def test_disjoint_masks_and_no_answer(split, tmp_path):
    metrics = run(split, lambda image, q: gcg_answer([(p, MASKS[1]) for _, p in GCG_OBJECTS]),
                  tmp_path)
    assert metrics['mIoU'] == 0.0 and metrics['AP50'] == 0.0 and metrics['recall'] == 0.0
    metrics = run(split, lambda image, q: Answer('Nothing to see.', []), tmp_path)
    assert metrics['mIoU'] == 0.0 and metrics['AP50'] == 0.0 and metrics['num_without_seg'] == 2
