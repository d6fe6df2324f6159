"""GCG metrics (greedy-pair mIoU, recall, AP50, phrase similarity) and the GCG loop with injected answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omg_llava.evaluation.gcg import (TransformerPhraseSimilarity, bag_of_words_cosine, greedy_pairs, image_miou,
                                      image_true_positives, mask_ap, mask_iou_matrix, token_jaccard)
from omg_llava.evaluation.runner import evaluate
from omg_llava.evaluation.splits import load_split, rle_of

from voc_fixtures import GCG_CAPTION, GCG_OBJECTS, MASKS, Answer, gcg_answer, write_gcg


def strip(cols, width=10):
    """A 1 x width mask covering ``cols``."""
    mask = np.zeros((1, width), bool)
    mask[0, cols] = True
    return mask


G0, G1 = strip(slice(0, 4)), strip(slice(6, 10))
P0, P1, P2 = strip(slice(0, 2)), strip(slice(5, 10)), strip(4)  # IoU(G0,P0) 2/4, IoU(G1,P1) 4/5, P2 touches none


def test_iou_matrix_and_greedy_pairs():
    assert mask_iou_matrix([G0, G1], [P0, P1, P2]) == pytest.approx(np.array([[0.5, 0, 0], [0, 0.8, 0]]))
    scores = np.array([[0.9, 0.5], [0.6, 0.0]])
    assert greedy_pairs(scores) == [(0, 0, 0.9)]  # then only (1, 1) = 0 is left: no positive IoU
    assert greedy_pairs(scores, admissible=scores < 0.8) == [(1, 0, 0.6), (0, 1, 0.5)]
    assert greedy_pairs(np.zeros((0, 3))) == []


def test_miou_by_hand():
    assert image_miou([G0, G1], [P0, P1, P2]) == pytest.approx((0.5 + 0.8) / 2)
    assert image_miou([G0, G1], [P2]) == 0.0  # no positive pair
    assert image_miou([G0], []) == 0.0


def test_offline_phrase_similarity():
    sims = bag_of_words_cosine(['a man', 'a white dog', 'the'], ['the man', 'a black dog', 'the', ''])
    assert sims == pytest.approx(np.array([[1, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1, 0]]))
    assert token_jaccard(['a red car'], ['red cars', 'car red']) == pytest.approx(np.array([[1 / 3, 1.0]]))


def test_recall_needs_mask_and_phrase():
    gt_masks, gt_phrases = [G0, G1], ['a man', 'a red car']
    assert image_true_positives(gt_masks, gt_phrases, [strip(slice(0, 3)), G1], ['the man', 'a blue bus']) == 1
    assert image_true_positives(gt_masks, gt_phrases, [G1, G0], ['red car', 'man']) == 2
    assert image_true_positives(gt_masks, gt_phrases, [P0, G1], ['man', 'red car']) == 2  # IoU 0.5 passes
    assert image_true_positives(gt_masks, gt_phrases, [strip(0), G1], ['man', 'red car']) == 1  # IoU 0.25
    custom = image_true_positives(gt_masks, gt_phrases, [G0], ['anything'],
                                  similarity=lambda g, p: np.ones((len(g), len(p))))
    assert custom == 1


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
    (tmp_path / 'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + words))
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
        expected = similarity.model(**batch).last_hidden_state.mean(1)  # the reference: mean over all positions
    assert torch.allclose(similarity.embed(['dog', 'the red car'])[:1], expected, atol=1e-6)  # padding excluded


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp('gcg')
    write_gcg(root)
    return load_split('gcg', str(root), 'gcg_val_test', 'val', image_folder=str(root / 'images'))


def test_split(split):
    assert [s['image_id'] for s in split.samples] == ['img_a', 'img_b']
    assert split.ground_truth['img_a'].phrases == [p for _, p in GCG_OBJECTS]
    assert split.captions == {'img_a': [GCG_CAPTION], 'img_b': [GCG_CAPTION]}


def run(split, predict, tmp_path):
    return evaluate(split, predict, str(tmp_path), progress=False, java=None)


def test_ground_truth_answers_score_one(split, tmp_path):
    calls = []

    def predict(image_path, question):
        calls.append(question)
        if len(calls) <= 2:  # the first two questions of the first image get no [SEG]: the loop asks again
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
    assert record['phrases'] == record['mask_phrases'] == ['a person', 'a wooden chair', 'the bottle']
    assert len(record['pred_masks']) == 3


def test_right_masks_wrong_phrases(split, tmp_path):
    metrics = run(split, lambda image, q: gcg_answer([('a tree', MASKS[k]) for k, _ in GCG_OBJECTS]), tmp_path)
    assert metrics['mIoU'] == 1.0 and metrics['AP50'] == 1.0 and metrics['recall'] == 0.0


def test_disjoint_masks_and_no_answer(split, tmp_path):
    metrics = run(split, lambda image, q: gcg_answer([(p, MASKS[1]) for _, p in GCG_OBJECTS]), tmp_path)
    assert metrics['mIoU'] == 0.0 and metrics['AP50'] == 0.0 and metrics['recall'] == 0.0
    metrics = run(split, lambda image, q: Answer('Nothing to see.', []), tmp_path)
    assert metrics['mIoU'] == 0.0 and metrics['AP50'] == 0.0 and metrics['num_without_seg'] == 2
