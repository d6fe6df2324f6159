"""The tiny training set: built into a temporary folder, then read by every dataset class of the
mixture."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_project_module
from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets import CombinedDataset, omg_llava_collate_fn
from omg_llava.datasets.gcg import GranDfGCGDataset, RefCOCOgGCGDataset
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.datasets.mdpv import MDPVPointDataset
from omg_llava.datasets.osprey import OspreyRegionCaptionDataset, OspreyRegionConversationDataset
from omg_llava.datasets.refer_seg import ReferSegDataset, load_refs
from omg_llava.datasets.semantic_seg import SemanticSegDataset
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import MARK_TOKEN, REGION_TOKEN, SEG_TOKEN

S = 64


def load_builder():
    return load_project_module('build_tiny_data')


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny') / 'data'
    counts = load_builder().main(['--root', str(root)])
    return root, counts


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def make_datasets(root, tokenizer) -> dict[str, object]:
    """Every dataset of the tiny mixture, keyed like the builder's counts, configured as the full
    config does."""
    common = dict(tokenizer=tokenizer, image_size=S)
    coco = str(root / 'glamm_data/images/coco2014/train2014')
    ade = root / 'ade20k/ADEChallengeData2016'
    refer = dict(data_root=str(root / 'ref_seg'), image_folder=coco, dataset='refcoco',
                 split_by='unc', **common)
    return dict(
        llava_pretrain=LLaVADataset(
            str(root / 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'),
            str(root / 'llava_data/LLaVA-Pretrain/images'),
            **common,
        ),
        llava_instruct=LLaVADataset(
            str(root / 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json'),
            str(root / 'llava_data/llava_images'),
            **common,
        ),
        grandf_gcg=GranDfGCGDataset(
            str(root / 'glamm_data/annotations/GranDf_HA_GCG_train.json'),
            str(root / 'glamm_data/images/grandf/train'),
            **common,
        ),
        refcocog_gcg=RefCOCOgGCGDataset(
            str(root / 'glamm_data/annotations/RefCOCOg_GCG_train.json'), coco, **common
        ),
        refcoco_train=ReferSegDataset(split='train', **refer),
        refcoco_val=ReferSegDataset(split='val', **refer),
        ade20k=SemanticSegDataset(
            str(ade / 'images/training'),
            str(ade / 'annotations/training'),
            str(root / 'ade20k/ade20k_classes.json'),
            kind='ade20k',
            **common,
        ),
        osprey_detail_description=OspreyRegionCaptionDataset(
            str(root / 'region_caption/osprey/osprey_detail_description.json'), coco, **common
        ),
        osprey_conversation=OspreyRegionConversationDataset(
            str(root / 'region_caption/osprey/osprey_conversation.json'), coco, **common
        ),
        mdpv_point=MDPVPointDataset(
            str(root / 'mdpv_point/gpt4v_tiny_point.json'),
            str(root / 'mdpv_point/images'),
            **common,
        ),
    )


@pytest.fixture(scope='module')
def datasets(built, tokenizer):
    return make_datasets(built[0], tokenizer)


def test_layout_size_and_determinism(built, tmp_path):
    root, counts = built
    for path in ('llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json',
                 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json',
                 'glamm_data/annotations/GranDf_HA_GCG_train.json', 'ref_seg/refcoco/refs(unc).p',
                 'ref_seg/refcoco/instances.json', 'ade20k/ade20k_classes.json',
                 'mdpv_point/gpt4v_tiny_point.json',
                 'region_caption/osprey/osprey_detail_description.json', 'README.md'):
        assert (root / path).is_file(), path
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)
    assert size < 5 * 2 ** 20
    assert counts['refcoco_train'] > counts['refcoco_val'] > 0
    assert all(10 <= counts[k] <= 20 for k in counts if k not in ('refcoco_val', 'refcoco_refs'))
    # ADE label maps: single-channel, VOC index + 1, with their image alongside
    ade = root / 'ade20k/ADEChallengeData2016'
    classes = json.loads((root / 'ade20k/ade20k_classes.json').read_text())
    assert len(classes) == 20 and classes[14] == 'person'
    for label_path in sorted((ade / 'annotations/training').glob('*.png')):
        label = np.asarray(Image.open(label_path))
        assert label.ndim == 2 and 0 < label.max() <= len(classes)
        assert (
            Image.open(ade / 'images/training' / (label_path.stem + '.jpg')).size
            == label.shape[::-1]
        )
    # the data-only unpickler accepts the file
    refs = load_refs(root / 'ref_seg/refcoco/refs(unc).p')
    assert {r['split'] for r in refs} == {'train', 'val'} and all(r['sentences'] for r in refs)
    # same seed → same annotations
    again = load_builder().build_tiny_data(str(tmp_path / 'again'))
    assert again == counts
    for path in ('glamm_data/annotations/GranDf_HA_GCG_train.json',
                 'mdpv_point/gpt4v_tiny_point.json',
                 'region_caption/osprey/osprey_conversation.json'):
        assert (tmp_path / 'again' / path).read_text() == (root / path).read_text()


def test_every_dataset_reads_every_row(built, datasets):
    counts = built[1]
    for name, ds in datasets.items():
        assert len(ds) == counts[name], name
        tok = ds.tokenizer
        seg, region, mark = (tok.convert_tokens_to_ids(t)
                             for t in (SEG_TOKEN, REGION_TOKEN, MARK_TOKEN))
        for i in range(len(ds)):
            item = ds[i]
            ids = item['input_ids']
            assert (ids == seg).sum() == len(item['masks']), (name, i)
            assert (ids == region).sum() == len(item['regions']), (name, i)
            assert (ids == mark).sum() == len(item['points']), (name, i)
            for mask in list(item['masks']) + list(item['regions']):
                assert mask.shape == (S, S) and mask.any(), (name, i)
            if len(item['points']):
                assert ((item['points'] >= 0) & (item['points'] < S)).all()
        assert not ds.skipped, (name, dict(ds.skipped))
    grounded = ('grandf_gcg', 'refcocog_gcg', 'refcoco_train', 'refcoco_val', 'ade20k',
                'osprey_detail_description')
    assert all(len(datasets[n][0]['masks']) for n in grounded)
    assert (len(datasets['osprey_conversation'][0]['regions'])
            and len(datasets['mdpv_point'][0]['points']))
    instruct = datasets['llava_instruct']
    assert sum(instruct[i]['pixel_values'] is None for i in range(len(instruct))) == 2
    assert sum(m < 0 for m in datasets['llava_instruct'].modality_length) == 2


def test_combined_mixture_collates(datasets):
    combined = CombinedDataset(list(datasets.values()))
    assert len(combined) == sum(len(ds) for ds in datasets.values())
    assert len(combined.modality_length) == len(combined)
    picked = {}  # the first item of each dataset in the mixture's order, then a text-only one
    for i, (d, _) in enumerate(combined.index):
        picked.setdefault(d, i)
    instruct = list(datasets).index('llava_instruct')
    text_only = next(i for i, (d, j) in enumerate(combined.index)
                     if d == instruct and 'image' not in datasets['llava_instruct'].records[j])
    batch = omg_llava_collate_fn([combined[i] for i in [*picked.values(), text_only]])['data']
    B = len(datasets) + 1
    assert batch['input_ids'].shape == batch['labels'].shape == batch['attention_mask'].shape
    assert batch['pixel_values'].shape == (B, 3, S, S)
    assert sum(m is not None for m in batch['masks']) >= 6
    assert batch['regions'].shape[1:] == (S, S) and batch['points'].shape[1] == 2
    # blank image
    assert torch.isfinite(batch['pixel_values']).all() and not batch['pixel_values'][-1].any()
