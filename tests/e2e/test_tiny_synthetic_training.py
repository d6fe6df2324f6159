"""The short CI version of the trained tiny default (projects/tiny_omg_llava/train_tiny.py --short): synthetic data →
OMG-Seg pre-stage → pretrain → finetune, each through `xtuner train`, then tools/test.py on held-out images.
The losses must fall, and the held-out cIoU must clear a floor that the same pipeline without OMG-LLaVA training
(same trained encoder, untrained LLM and projectors, forced to answer with a [SEG]) does not reach."""
from __future__ import annotations

import os

import pytest

from conftest import REPO_ROOT, load_project_module
from omg_llava.evaluation.runner import ModelPredictor, evaluate
from omg_llava.evaluation.splits import load_split
from omg_llava.inference.chat import OMGLLaVAChat

CIOU_FLOOR = 0.15


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('tiny_synthetic_short')
    train_tiny = load_project_module('train_tiny')
    figures = train_tiny.main(['--short', '--work-dir', str(work_dir)])
    return work_dir, figures, train_tiny


def test_every_stage_learns(short_run):
    work_dir, figures, train_tiny = short_run
    losses = figures['losses']
    assert losses['omg_seg']['loss']['last'] < 0.6 * losses['omg_seg']['loss']['first'], losses['omg_seg']
    assert losses['pretrain']['loss_proj']['last'] < 0.5 * losses['pretrain']['loss_proj']['first'], losses
    assert losses['finetune']['loss_lm']['last'] < 0.5 * losses['finetune']['loss_lm']['first'], losses['finetune']
    assert (work_dir / 'curves.png').stat().st_size > 10_000
    for name in (train_tiny.CHECKPOINT_NAME, *train_tiny.ENCODER_FILES.values()):
        assert (work_dir / name).is_file(), name
    assert figures['timings']['finetune']['seconds'] > 0


def test_held_out_cIoU_clears_what_an_untrained_model_reaches(short_run):
    work_dir, figures, train_tiny = short_run
    refseg, region_qa = figures['refseg'], figures['region_qa']
    assert refseg['num_expressions'] == train_tiny.SHORT['refseg_samples'] and refseg['num_without_seg'] <= 3
    encoder = {k: str(work_dir / name) for k, name in train_tiny.ENCODER_FILES.items()}
    config = str(REPO_ROOT / train_tiny.CONFIGS['finetune'])
    untrained, _ = OMGLLaVAChat.from_config(config, **encoder)  # no pth: random LLM and projectors
    force_seg = dict(sequence_bias={(untrained.model.token_ids.seg, ): 100.0})
    data_root = work_dir / 'data' / 'synthetic_shapes'
    split = load_split('refseg', str(data_root / 'ref_seg'), 'refcoco', 'val',
                       image_folder=str(data_root / 'glamm_data/images/coco2014/train2014'))
    baseline = evaluate(split, ModelPredictor(untrained, max_new_tokens=4, generation_kwargs=force_seg), None,
                        max_samples=refseg['num_expressions'], progress=False)
    print(f'short run: cIoU {refseg["cIoU"]:.3f} vs untrained (forced [SEG]) {baseline["cIoU"]:.3f}; region QA '
          f'{region_qa}')
    assert baseline['num_without_seg'] == 0 and baseline['cIoU'] < CIOU_FLOOR
    assert refseg['cIoU'] >= CIOU_FLOOR
    assert 0 <= region_qa['accuracy_colour'] <= 1 and region_qa['num_colour'] > 0
    assert os.path.isfile(work_dir / 'test' / 'refseg' / 'predictions.jsonl')
