"""Referring-segmentation figures of a tiny synthetic run, per expression kind.

* :func:`kind_figures`: cIoU and right-object share (IoU > 0.5) per kind of expression (attribute,
  superlative, position, relation: ``synthetic_shapes.expression_kind``), from ``tools/test.py``'s
  ``predictions.jsonl``.
* :func:`repeated_expression_share`: how many answers repeat the asked-for expression as their
  ``<p>`` phrase (the ``[SEG]`` follows the words the answer says, so a swapped word usually selects
  another object).
* :func:`evaluate_pre_stage`: the same figures for the OMG-Seg pre-stage's own referring lookups:
  each held-out expression made a query by the pre-stage's bag-of-words encoder and decoded alone
  through its decoder. Which lookups the decoder can do bounds what a ``[SEG]`` can select
  (docs/tiny_model_history.md, "Which cues a run learns").

    python projects/tiny_omg_llava/referring_figures.py --stage-dir WORK/omg_seg \\
        --data-root WORK/data/synthetic_shapes
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from typing import Iterable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from synthetic_shapes import EXPRESSION_KINDS, expression_kind  # noqa: E402

RIGHT_OBJECT_IOU = 0.5


def kind_figures(records: Iterable[tuple[str, int, int]]) -> dict[str, dict]:
    """(sentence, intersection, union) per expression → per kind and ``'all'``: ``cIoU``
    (:func:`~omg_llava.evaluation.refseg.refseg_metrics`), ``right_object`` (share with IoU > 0.5)
    and ``expressions`` (count). Kinds without expressions are left out."""
    from omg_llava.evaluation.refseg import MaskOverlap, refseg_metrics
    overlaps = defaultdict(list)
    for sentence, intersection, union in records:
        for kind in (expression_kind(sentence), 'all'):
            overlaps[kind].append(MaskOverlap(int(intersection), int(union)))
    figures = {}
    for kind in (*EXPRESSION_KINDS, 'all'):
        found = overlaps[kind]
        if found:
            right = sum(o.iou > RIGHT_OBJECT_IOU for o in found)
            figures[kind] = dict(cIoU=refseg_metrics(found)['cIoU'],
                                 right_object=right / len(found), expressions=len(found))
    return figures


def read_predictions(path: str) -> list[dict]:
    """The rows of a ``tools/test.py --task refseg`` ``predictions.jsonl``."""
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def repeated_expression_share(rows: list[dict]) -> float:
    """Share of answers whose ``[SEG]`` phrase (the ``<p> … </p>`` the evaluated mask belongs to,
    :func:`~omg_llava.evaluation.runner.phrases_per_mask`) is the asked-for sentence
    (case-insensitive)."""
    from omg_llava.evaluation.runner import phrases_per_mask
    repeated = sum(phrases_per_mask(row['answer'], 1)[0].lower() == row['sentence'].strip().lower()
                   for row in rows)
    return repeated / max(len(rows), 1)


def load_pre_stage(stage_dir: str):
    """The pre-stage's :class:`OMGSegTrainer` from its work dir: the config mmengine saved there,
    the exported encoder files and ``referring_queries.pth`` (all read with
    ``weights_only=True``)."""
    import omg_llava  # noqa: F401  (registers the modules)
    from mmengine.config import Config
    from omg_llava.checkpoint import load_into, read_weights, unwrap_state_dict
    from omg_llava.models.omg_seg_trainer import ENCODER_FILES, REFERRING_QUERIES_FILE
    from omg_llava.registry import MODELS
    configs = glob.glob(os.path.join(stage_dir, '*.py'))
    queries_path = os.path.join(stage_dir, REFERRING_QUERIES_FILE)
    if len(configs) != 1 or not os.path.isfile(queries_path):
        raise FileNotFoundError(f'{stage_dir} is not the work dir of a pre-stage trained with a '
                                'referring term: expected one saved config (*.py, found '
                                f'{len(configs)}) and {REFERRING_QUERIES_FILE}')
    cfg = Config.fromfile(configs[0])
    cfg.model.visual_encoder.weights = {k: os.path.join(stage_dir, name)
                                        for k, name in ENCODER_FILES.items()}
    model = MODELS.build(cfg.model)
    model.visual_encoder.init_weights()
    load_into(model.referring_queries, unwrap_state_dict(read_weights(queries_path), queries_path),
              source=queries_path)
    return model.eval(), cfg


@torch.no_grad()
def evaluate_pre_stage(stage_dir: str, data_root: str, split: str = 'val') -> dict[str, dict]:
    """:func:`kind_figures` of the pre-stage's referring lookups on the REFER ``split`` of the
    synthetic data."""
    from omg_llava.datasets.coco_instances import CocoInstanceDataset
    model, cfg = load_pre_stage(stage_dir)
    dataset = CocoInstanceDataset(os.path.join(data_root, 'ref_seg', 'refcoco', 'instances.json'),
                                  os.path.join(data_root, 'glamm_data', 'images', 'coco2014',
                                               'train2014', ''),
                                  cfg.image_size, category_names=cfg.class_names,
                                  refs_file=os.path.join(data_root, 'ref_seg', 'refcoco',
                                                         'refs(unc).p'),
                                  refs_split=split)
    records = []
    for index in range(len(dataset)):
        sample = dataset[index]
        sentences = sample['ref_sentences']
        if not sentences:
            continue
        _, features, _ = model.encode(sample['pixel_values'][None])
        logits = model.decode_referring(features, sentences,
                                        [0] * len(sentences)).mask_logits[-1][:, 0]
        masks = F.interpolate(logits[:, None], size=sample['gt_masks'].shape[-2:],
                              mode='bilinear')[:, 0] > 0
        targets = sample['gt_masks'][sample['ref_targets']].bool()
        for sentence, mask, target in zip(sentences, masks, targets):
            records.append((sentence, int((mask & target).sum()), int((mask | target).sum())))
    if not records:
        raise ValueError(f'no {split!r} referring expressions under {data_root}: is it '
                         'synthetic_shapes.py output?')
    return kind_figures(records)


def format_kind_figures(figures: dict[str, dict]) -> str:
    """One line per kind: cIoU, right-object share and count."""
    return '\n'.join(f'  {kind:<12} cIoU {f["cIoU"]:.3f}   right object {f["right_object"]:6.1%}   '
                     f'({f["expressions"]} expressions)' for kind, f in figures.items())


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--stage-dir', required=True,
                        help="the pre-stage's work dir (train_tiny.py: WORK/omg_seg)")
    parser.add_argument('--data-root', required=True, help='synthetic_shapes.py output folder')
    parser.add_argument('--split', default='val', help='REFER split (default: the held-out val)')
    args = parser.parse_args(argv)
    figures = evaluate_pre_stage(args.stage_dir, args.data_root, args.split)
    print(f"pre-stage referring lookups, {args.split}:\n{format_kind_figures(figures)}")
    return figures


if __name__ == '__main__':
    main()
