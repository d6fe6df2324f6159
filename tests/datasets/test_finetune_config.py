"""The 7B finetune mixture reads the released files from the released folders, concatenated in the
released config's order, and permutes them as the released CombineDataset does (spec §8.3)."""
from __future__ import annotations

import numpy as np
from mmengine.config import Config
from torch.utils.data import Dataset

from conftest import FINETUNE_CONFIG, REPO_ROOT
from omg_llava.datasets import CombinedDataset


def entries(config) -> list[tuple]:
    out = []
    for d in Config.fromfile(str(config)).train_dataloader.dataset.datasets:
        name = d['type'] if isinstance(d['type'], str) else d['type'].__name__
        key = d.get('dataset') or d.get('kind') or (d.get('annotation_file')
                                                    or d.get('data_path', '')).split('/')[-1]
        out.append((name, key, d.get('image_folder')))
    return out


def test_mixture_order_files_and_folders_are_the_released_ones():
    mixture = entries(FINETUNE_CONFIG)
    assert len(mixture) == 41
    assert [m[1] for m in mixture[:5]] == ['llava_v1_5_mix665k.json',
                                           'flickr_mergedGT_GCG_train.json',
                                           'RefCOCOg_GCG_train.json', 'GranDf_HA_GCG_train.json',
                                           'OpenPsgGCG_train.json']
    assert [m[1] for m in mixture[5:11]] == ['ade20k', 'cocostuff'] * 3  # interleaved, as released
    assert [m[1] for m in mixture[11:23]] == ['refcoco', 'refcoco+', 'refcocog', 'refclef'] * 3
    assert [m[0] for m in mixture[23:25]] == ['OspreyRegionCaptionDataset',
                                              'OspreyRegionConversationDataset']
    coco2014, coco2017 = ('./data/glamm_data/images/coco2014/train2014/',
                          './data/glamm_data/images/coco2017/train2017/')
    ade, vg = ('./data/semantic_seg/ADEChallengeData2016/images/training/',
               './data/llava_data/llava_images/vg/VG_100K')
    assert [(m[1], m[2]) for m in mixture[25:]] == [
        ('gpt4v_ade20k_detailed_caption_point.json', ade),
        ('gpt4v_cocostuff_10k_detailed_caption_point.json', coco2014),
        ('gpt4v_cocostuff_164k_detailed_caption_point.json', coco2017),
        ('gpt4v_vg_detailed_caption_point.json', vg),
        ('gpt4v_lvis_brief_caption_point.json', coco2017),
        ('gpt4v_vg_brief_caption_point.json', vg),
        ('gpt4v_ade20k_brief_caption_point.json', ade),
        ('gpt4v_cocostuff_10k_brief_caption_point.json', coco2014),
        ('gpt4v_cocostuff_164k_brief_caption_point.json', coco2017),
        ('gpt4v_vg_QA_point.json', vg),
        ('gpt4v_lvis_QA_point.json', coco2017),
        ('gpt4v_ade20k_QA_point.json', ade),
        ('gpt4v_cocostuff_10k_QA_point.json', coco2014),
        ('gpt4v_cocostuff_164k_QA_point.json', coco2017),
        ('Flicker30K_multi_points_to_caption.json',
         './data/glamm_data/images/flickr30k/Flickr30K/'),
        ('OpenPsgGCG_train_multi_points_to_caption.json', coco2017)]
    assert Config.fromfile(str(FINETUNE_CONFIG)).train_dataloader.dataset.repeats[:5] == [1, 1, 1,
                                                                                          10, 1]


def test_task_finetunes_keep_the_released_order():
    refseg = entries(REPO_ROOT / 'configs/specific_tasks_finetune/finetune_refseg.py')
    assert [m[1] for m in refseg] == ['refcoco', 'refcoco+', 'refcocog', 'refclef'] * 3
    gcg = entries(REPO_ROOT / 'configs/specific_tasks_finetune/finetune_gcg.py')
    assert [m[0] for m in gcg] == ['FlickrGCGDataset', 'RefCOCOgGCGDataset', 'GranDfGCGDataset',
                                   'OpenPsgGCGDataset']


class Numbers(Dataset):
    def __init__(self, tag: str, n: int) -> None:
        self.items = [f'{tag}{i}' for i in range(n)]
        self.modality_length = [1] * n

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> str:
        return self.items[i]


def test_permutation_is_the_released_combine_datasets():
    """The reference: concatenate (a repeated dataset's index wraps round), np.random.seed(42),
    shuffle an arange."""
    sizes, repeats = [5, 3, 4], [1, 10, 1]
    mixed = CombinedDataset([Numbers(t, n) for t, n in zip('abc', sizes)], repeats=repeats,
                            shuffle_seed=42)
    concatenated = [f'{t}{i % n}' for t, n, r in zip('abc', sizes, repeats) for i in range(n * r)]
    np.random.seed(42)
    order = np.arange(len(concatenated))
    np.random.shuffle(order)
    assert [mixed[i] for i in range(len(mixed))] == [concatenated[j] for j in order]
