"""Grounded conversation generation (GCG) metrics: mask AP50, mIoU and grounded recall (spec §9.3
"GCG").

Per image the model gives a caption, its grounded phrases and one mask per phrase; the ground truth
is a set of (phrase, mask) pairs and reference captions (caption metrics:
:mod:`omg_llava.evaluation.captions`).

* **AP50**: pycocotools ``COCOeval`` (``segm``) with every ground-truth and predicted mask in
  category 1 and every prediction scored 1.0; AP at IoU 0.5 (``stats[1]``), AP over IoU .50:.95
  (``stats[0]``) as ``mask_AP``.
* **mIoU**: per image, pair ground-truth and predicted masks one-to-one, greedily by the highest
  remaining IoU, until no pair with a positive IoU is left; the image scores the mean IoU of its
  pairs (0 without a pair); the metric is the mean over images.
* **recall**: per image, the admissible pairs are those with IoU ≥ 0.5 *and* phrase similarity ≥
  0.5; they are paired one-to-one greedily by IoU; recall = Σ pairs / Σ ground-truth phrases over
  all images.

The ``reference`` protocol (docs/evaluation.md) scores mIoU and recall as the released
``evaluate_gcg.py`` does (:func:`reference_image_miou`, :func:`reference_true_positives`): the
recall's greedy pairing stops at the first highest-IoU pair that fails either threshold, and the
predicted phrases are all ``<p>…</p>`` texts of the answer, matched to the masks by position.

The reference scores phrase similarity with BERT (``bert-base-uncased``, cosine of the mean-pooled
last layer), which needs a model download. The similarity is therefore pluggable: the default
:func:`bag_of_words_cosine` is offline and deterministic, and :class:`TransformerPhraseSimilarity`
computes the reference's measure from a local Hugging Face model folder.
"""
from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

#: ``(gt_phrases, pred_phrases) -> (G, P)`` similarity matrix in [-1, 1].
PhraseSimilarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]

IOU_THRESHOLD = 0.5
SIMILARITY_THRESHOLD = 0.5

#: Words that carry no content for phrase matching ("a man" ~ "the man"); ignored unless a phrase
#: has only these.
STOP_WORDS = frozenset(
    'a an the this that these those some its his her their our my your of in on at to with and or '
    'by for from into onto near next over under is are be being'.split())
_WORD = re.compile(r'[a-z0-9]+')


# -------------------------------------------------------------------------------- phrase similarity
def _content_words(phrase: str) -> list[str]:
    words = _WORD.findall(phrase.lower())
    content = [w for w in words if w not in STOP_WORDS]
    return content or words


def bag_of_words_cosine(gt_phrases: Sequence[str], pred_phrases: Sequence[str]) -> np.ndarray:
    """Cosine of word-count vectors (lower-cased alphanumeric words, :data:`STOP_WORDS` dropped
    unless a phrase has nothing else). ``"a man"`` vs ``"the man"`` → 1.0, ``"a white dog"`` vs ``"a
    black dog"`` → 0.5.

    Returns:
        (G, P) similarities in [0, 1]; 0 for an empty phrase.
    """
    gt_bags = [Counter(_content_words(p)) for p in gt_phrases]
    pred_bags = [Counter(_content_words(p)) for p in pred_phrases]
    out = np.zeros((len(gt_bags), len(pred_bags)))
    for g, a in enumerate(gt_bags):
        for p, b in enumerate(pred_bags):
            dot = sum(n * b[w] for w, n in a.items())
            if dot:
                out[g, p] = dot / np.sqrt(sum(n * n for n in a.values()) * sum(n * n
                                                                               for n in b.values()))
    return out


def token_jaccard(gt_phrases: Sequence[str], pred_phrases: Sequence[str]) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| of the content-word sets (see :func:`bag_of_words_cosine`). (G, P) in
    [0, 1]."""
    gt_sets = [set(_content_words(p)) for p in gt_phrases]
    pred_sets = [set(_content_words(p)) for p in pred_phrases]
    out = np.zeros((len(gt_sets), len(pred_sets)))
    for g, a in enumerate(gt_sets):
        for p, b in enumerate(pred_sets):
            if a | b:
                out[g, p] = len(a & b) / len(a | b)
    return out


class TransformerPhraseSimilarity:
    """Cosine of mean-pooled last-layer states of a local Hugging Face encoder (the reference used
    ``bert-base-uncased``; pass its downloaded folder). Padding is excluded from the mean;
    [CLS]/[SEP] are kept.

    Args:
        model_path: a folder with ``config.json``, the weights and the tokenizer files (never
            downloaded).
        device: torch device.
    """

    def __init__(self, model_path: str, device: str = 'cpu') -> None:
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(model_path, local_files_only=True).eval().to(device)
        self.device = device

    def embed(self, phrases: Sequence[str]) -> torch.Tensor:
        """(N, D) float32 mean-pooled embeddings."""
        if not phrases:
            return torch.zeros((0, self.model.config.hidden_size))
        batch = self.tokenizer(list(phrases), padding=True, truncation=True,
                               return_tensors='pt').to(self.device)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state.float()  # (N, T, D)
        weights = batch['attention_mask'].unsqueeze(-1).float()  # (N, T, 1)
        return ((hidden * weights).sum(1) / weights.sum(1).clamp(min=1)).cpu()

    def __call__(self, gt_phrases: Sequence[str], pred_phrases: Sequence[str]) -> np.ndarray:
        a, b = self.embed(gt_phrases), self.embed(pred_phrases)
        if not len(a) or not len(b):
            return np.zeros((len(a), len(b)))
        return (
            torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=-1)
            .numpy()
            .astype(np.float64)
        )


# ------------------------------------------------------------------------------------------ pairing
def mask_iou_matrix(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> np.ndarray:
    """(G, P) IoU of (H, W) binary masks (0 where both are empty)."""
    if not len(gt_masks) or not len(pred_masks):
        return np.zeros((len(gt_masks), len(pred_masks)))
    gt = np.stack([np.asarray(m, bool).reshape(-1) for m in gt_masks]).astype(np.float64)  # (G, HW)
    # (P, HW)
    pred = np.stack([np.asarray(m, bool).reshape(-1) for m in pred_masks]).astype(np.float64)
    if gt.shape[1] != pred.shape[1]:
        raise ValueError(f'ground-truth masks have {gt.shape[1]} pixels, predicted masks '
                         f'{pred.shape[1]}: predicted '
                         'masks must be at the original image size')
    inter = gt @ pred.T
    union = gt.sum(1)[:, None] + pred.sum(1)[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def greedy_pairs(scores: np.ndarray,
                 admissible: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """One-to-one pairs taken greedily by the highest remaining score, as long as it is positive.

    Args:
        scores: (G, P) scores (IoUs).
        admissible: (G, P) bool; pairs outside it are never taken.

    Returns:
        ``(g, p, score)`` in the order taken.
    """
    remaining = (np.where(admissible, scores, 0.0) if admissible is not None
                 else np.array(scores, dtype=float))
    pairs = []
    while remaining.size:
        g, p = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        best = float(remaining[g, p])
        if best <= 0:
            break
        pairs.append((int(g), int(p), float(scores[g, p])))
        remaining[g, :] = 0
        remaining[:, p] = 0
    return pairs


def image_miou(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> float:
    """Mean IoU of the greedy max-IoU pairs of one image (0 without a positive pair)."""
    pairs = greedy_pairs(mask_iou_matrix(gt_masks, pred_masks))
    return float(np.mean([iou for _, _, iou in pairs])) if pairs else 0.0


def image_true_positives(gt_masks: Sequence[np.ndarray], gt_phrases: Sequence[str],
                         pred_masks: Sequence[np.ndarray],
                         pred_phrases: Sequence[str],
                         similarity: PhraseSimilarity = bag_of_words_cosine,
                         iou_threshold: float = IOU_THRESHOLD,
                         similarity_threshold: float = SIMILARITY_THRESHOLD) -> int:
    """Ground-truth phrases of one image recalled: greedy IoU pairs among those with IoU ≥
    ``iou_threshold`` and phrase similarity ≥ ``similarity_threshold``."""
    if len(gt_masks) != len(gt_phrases) or len(pred_masks) != len(pred_phrases):
        raise ValueError(f'one phrase per mask is needed: {len(gt_masks)} ground-truth masks / '
                         f'{len(gt_phrases)} phrases, {len(pred_masks)} predicted masks / '
                         f'{len(pred_phrases)} phrases')
    if not len(gt_masks) or not len(pred_masks):
        return 0
    ious = mask_iou_matrix(gt_masks, pred_masks)
    sims = np.asarray(similarity(gt_phrases, pred_phrases), dtype=float)
    return len(greedy_pairs(ious, (ious >= iou_threshold) & (sims >= similarity_threshold)))


# ------------------------------------------------------------------------------- reference protocol
def reference_iou_matrix(rows: Sequence[np.ndarray], cols: Sequence[np.ndarray]) -> np.ndarray:
    """(R, C) IoU of (H, W) binary masks as the released script computes it: NaN where both masks
    are empty."""
    if not len(rows) or not len(cols):
        return np.zeros((len(rows), len(cols)))
    a = np.stack([np.asarray(m, bool).reshape(-1) for m in rows]).astype(np.float64)  # (R, HW)
    b = np.stack([np.asarray(m, bool).reshape(-1) for m in cols]).astype(np.float64)  # (C, HW)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f'masks of {a.shape[1]} and {b.shape[1]} pixels: predicted masks must be '
                         'at the original image size')
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    with np.errstate(invalid='ignore'):
        return inter / union


def reference_image_miou(gt_masks: Sequence[np.ndarray], pred_masks: Sequence[np.ndarray]) -> float:
    """mIoU of one image as the released script pairs it: on the (P, G) matrix (predictions as
    rows), take the largest IoU (first in row-major order on ties), delete its row and column, and
    go on while the largest remaining IoU is positive (a NaN, two empty masks, ends the pairing).
    Mean of the pairs, 0 without one."""
    ious = reference_iou_matrix(pred_masks, gt_masks)
    pairs = []
    while ious.size > 0 and np.max(ious) > 0:
        p, g = np.unravel_index(np.argmax(ious), ious.shape)
        pairs.append(float(ious[p, g]))
        ious = np.delete(np.delete(ious, p, axis=0), g, axis=1)
    return float(np.mean(pairs)) if pairs else 0.0


def reference_true_positives(gt_masks: Sequence[np.ndarray], gt_labels: Sequence[str],
                             pred_masks: Sequence[np.ndarray], pred_labels: Sequence[str],
                             similarity: PhraseSimilarity = bag_of_words_cosine,
                             iou_threshold: float = IOU_THRESHOLD,
                             similarity_threshold: float = SIMILARITY_THRESHOLD) -> int:
    """Ground-truth phrases of one image recalled, as the released script counts them.

    Repeatedly take the highest remaining IoU of the (G, P) mask matrix (ties: first in row-major
    order); if its IoU is below ``iou_threshold`` *or* the similarity of the labels at the same
    (row, column) is below ``similarity_threshold``, stop; otherwise count the pair and zero its row
    and column. Labels are matched to masks by position, so a pair whose position lies outside the
    (len(gt_labels), len(pred_labels)) similarity matrix raised an IndexError that the script caught
    per image: the image then scores 0.
    """
    ious = reference_iou_matrix(gt_masks, pred_masks)
    sims = np.asarray(similarity(list(gt_labels), list(pred_labels)), dtype=float).reshape(
        len(gt_labels), len(pred_labels)
    )
    matches = 0
    while ious.size > 0:
        g, p = np.unravel_index(np.argmax(ious), ious.shape)
        if g >= sims.shape[0] or p >= sims.shape[1]:
            return 0
        if ious[g, p] < iou_threshold or sims[g, p] < similarity_threshold:
            break
        matches += 1
        ious[g, :] = 0
        ious[:, p] = 0
        sims[g, :] = 0
        sims[:, p] = 0
    return matches


# ------------------------------------------------------------------------------------------ mask AP
def mask_ap(gt_masks: Mapping[object, Sequence[dict]],
            image_sizes: Mapping[object, tuple[int, int]],
            pred_masks: Mapping[object, Sequence[dict]]) -> dict[str, float | None]:
    """Class-agnostic mask AP with pycocotools (category 1, every prediction scored 1.0).

    Args:
        gt_masks: image id → ground-truth masks as COCO RLE dicts (``size``, ``counts``).
        image_sizes: image id → (H, W), for every image evaluated.
        pred_masks: image id → predicted masks as COCO RLE dicts (images absent from it predicted
            nothing).

    Returns:
        ``{'AP50', 'mask_AP'}``: AP at IoU 0.5 and AP over IoU .50:.95 (``None`` when there is no
        ground truth).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # COCOeval sorts ids: use plain integers
    ids = {image_id: k + 1 for k, image_id in enumerate(image_sizes)}
    images = [dict(id=ids[i], height=int(h), width=int(w)) for i, (h, w) in image_sizes.items()]
    annotations = []
    for image_id, rles in gt_masks.items():
        for rle in rles:
            annotations.append(dict(id=len(annotations) + 1, image_id=ids[image_id], category_id=1,
                                    segmentation=rle,
                                    area=float(mask_utils.area(rle)),
                                    bbox=list(mask_utils.toBbox(rle)), iscrowd=0))
    if not annotations:
        return {'AP50': None, 'mask_AP': None}
    results = [dict(image_id=ids[image_id], category_id=1, segmentation=rle, score=1.0)
               for image_id, rles in pred_masks.items() for rle in rles]
    if not results:
        return {'AP50': 0.0, 'mask_AP': 0.0}
    # pycocotools prints progress and the summary table
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=images, annotations=annotations,
                          categories=[dict(id=1, name='object')])
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), 'segm')
        evaluator.params.imgIds = sorted(ids.values())
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {'AP50': max(float(evaluator.stats[1]), 0.0),
            'mask_AP': max(float(evaluator.stats[0]), 0.0)}


# ------------------------------------------------------------------------------------- all together
@dataclass
class GroundedImage:
    """Masks (COCO RLE dicts) and one phrase per mask for one image: a ground truth or a
    prediction."""

    masks: list[dict]
    phrases: list[str]


def _one_per_mask(phrases: Sequence[str], num_masks: int) -> list[str]:
    return (list(phrases) + [''] * num_masks)[:num_masks]


def gcg_mask_metrics(ground_truth: Mapping[object, GroundedImage],
                     image_sizes: Mapping[object, tuple[int, int]],
                     predictions: Mapping[object, GroundedImage],
                     similarity: PhraseSimilarity = bag_of_words_cosine,
                     protocol: str = 'corrected') -> dict[str, float | int | None]:
    """AP50, mIoU and recall over the images of ``image_sizes`` (an image without prediction
    predicts nothing).

    The recall's denominator is the number of ground-truth phrases (``labels``). ``corrected``:
    phrases and masks are paired by position (a mask without phrase gets ``''``, a phrase without
    mask cannot be recalled), pairs by :func:`image_true_positives`, mIoU by :func:`image_miou`.
    ``reference``: :func:`reference_true_positives` and :func:`reference_image_miou`.

    Returns:
        ``{'AP50', 'mask_AP', 'mIoU', 'recall', 'num_images', 'num_gt_phrases',
        'num_true_positives'}``.
    """
    if protocol not in ('corrected', 'reference'):
        raise ValueError(f"protocol must be 'corrected' or 'reference', got {protocol!r}")
    ious, true_positives, gt_phrases = [], 0, 0
    empty = GroundedImage([], [])
    for image_id, (H, W) in image_sizes.items():
        gt = ground_truth.get(image_id, empty)
        pred = predictions.get(image_id, empty)
        gt_masks = [mask_utils.decode(r).astype(bool) for r in gt.masks]
        pred_masks = [mask_utils.decode(r).astype(bool) for r in pred.masks]
        if protocol == 'reference':
            ious.append(reference_image_miou(gt_masks, pred_masks))
            true_positives += reference_true_positives(gt_masks, gt.phrases, pred_masks,
                                                       pred.phrases, similarity)
        else:
            ious.append(image_miou(gt_masks, pred_masks))
            true_positives += image_true_positives(gt_masks,
                                                   _one_per_mask(gt.phrases, len(gt_masks)),
                                                   pred_masks,
                                                   _one_per_mask(pred.phrases, len(pred_masks)),
                                                   similarity)
        gt_phrases += len(gt.phrases)
    metrics = mask_ap({i: ground_truth.get(i, empty).masks for i in image_sizes}, image_sizes,
                      {i: predictions.get(i, empty).masks for i in image_sizes})
    metrics.update(mIoU=float(np.mean(ious)) if ious else 0.0,
                   recall=true_positives / gt_phrases if gt_phrases else 0.0,
                   num_images=len(image_sizes), num_gt_phrases=gt_phrases,
                   num_true_positives=true_positives)
    return metrics


__all__ = ['PhraseSimilarity', 'bag_of_words_cosine', 'token_jaccard',
           'TransformerPhraseSimilarity',
           'mask_iou_matrix', 'greedy_pairs', 'image_miou', 'image_true_positives',
           'reference_iou_matrix',
           'reference_image_miou', 'reference_true_positives', 'mask_ap', 'GroundedImage',
           'gcg_mask_metrics']
