"""train_tiny.py's command line and the options it gives `xtuner train` (the run itself:
tests/e2e)."""
from __future__ import annotations

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_project_module


def test_short_run_is_never_installed():
    train_tiny = load_project_module('train_tiny')
    with pytest.raises(SystemExit) as exc:
        train_tiny.main(['--short', '--install'])
    assert exc.value.code == 2


@pytest.mark.parametrize('stage', ['language', 'omg_seg', 'pretrain', 'finetune'])
def test_iteration_options_reach_the_loop_and_the_cosine_end(stage):
    train_tiny = load_project_module('train_tiny')
    cfg = Config.fromfile(str(REPO_ROOT / train_tiny.CONFIGS[stage]))
    cfg.merge_from_dict(dict(option.split('=') for option in train_tiny._iterations(123)))
    assert int(cfg.train_cfg.max_iters) == 123 and int(cfg.param_scheduler[1]['end']) == 123
    assert cfg.param_scheduler[0]['end'] < 123  # warm-up first


@pytest.mark.parametrize('stage', ['language', 'omg_seg', 'pretrain', 'finetune'])
def test_each_config_alone_runs_the_full_recipes_schedule(stage):
    """`xtuner train CONFIG` without options trains as long as train_tiny.py's full run
    (docs/tiny_model.md)."""
    train_tiny = load_project_module('train_tiny')
    cfg = Config.fromfile(str(REPO_ROOT / train_tiny.CONFIGS[stage]))
    full = train_tiny.FULL[{'omg_seg': 'pre_iters'}.get(stage, f'{stage}_iters')]
    assert int(cfg.train_cfg.max_iters) == full and int(cfg.param_scheduler[1]['end']) == full


@pytest.mark.parametrize('stage', ['language', 'omg_seg', 'pretrain', 'finetune'])
def test_two_processes_share_each_step_of_the_same_size(stage):
    """With --processes 2 each process takes half of every per-step count, so a step trains on as
    many rows."""
    train_tiny = load_project_module('train_tiny')
    path = str(REPO_ROOT / train_tiny.CONFIGS[stage])
    cfg = Config.fromfile(path)
    assert (cfg.runner_type.__name__ == 'CPUDataParallelRunner'
            and cfg.env_cfg.dist_cfg.backend == 'gloo')
    assert train_tiny.per_process_batch(path, 1) == []
    halved = dict(option.split('=') for option in train_tiny.per_process_batch(path, 2))
    assert int(halved['train_dataloader.batch_size']) * 2 == cfg.train_dataloader.batch_size
    for i, term in enumerate(cfg.model.get('auxiliary_losses', ())):
        if term.get('rows'):
            assert int(halved[f'model.auxiliary_losses.{i}.rows']) * 2 == term['rows']
        # None (TextOnlyLMLoss: every allowed row of each process's batch) or no such argument
        else:
            assert f'model.auxiliary_losses.{i}.rows' not in halved
    with pytest.raises(SystemExit, match='does not split over 3 processes'):
        train_tiny.per_process_batch(path, 3)


def test_more_than_one_process_runs_xtuner_train_under_torchrun():
    train_tiny = load_project_module('train_tiny')
    single = train_tiny.xtuner_train('CONFIG', 1)
    assert single[1:] == ['-m', 'xtuner.tools.train', 'CONFIG']
    parallel = train_tiny.xtuner_train('CONFIG', 2)
    assert parallel[1:4] == ['-m', 'torch.distributed.run', '--standalone']
    assert '--nproc_per_node=2' in parallel and parallel[-3:] == ['CONFIG', '--launcher', 'pytorch']
    with pytest.raises(SystemExit):
        train_tiny.main(['--processes', '0'])


def test_the_name_binding_language_stage_starts_from_the_binding_parts_folder():
    """Run alone in a work dir, the variant's language config finds what name_binding.py wrote
    there (the folder train_tiny.py --name-binding also passes explicitly)."""
    from omg_llava.models.language_model_trainer import LANGUAGE_MODEL_FOLDER
    train_tiny = load_project_module('train_tiny')
    cfg = Config.fromfile(str(REPO_ROOT / train_tiny.NAME_BINDING_CONFIGS['language']))
    assert cfg.model.llm.pretrained_model_name_or_path == f'./name_binding/{LANGUAGE_MODEL_FOLDER}'
    datasets = cfg.train_dataloader.dataset.datasets
    assert datasets[-1].data_path.endswith('text_binding/language.json')
    assert list(cfg.train_dataloader.dataset.repeats) == [1] * (len(datasets) - 1) + [3]
    assert int(cfg.train_cfg.max_iters) == train_tiny.FULL['binding_language_iters']


@pytest.mark.parametrize('stage', ['pretrain', 'finetune'])
def test_the_name_binding_pretrain_and_finetune_keep_binding_rows(stage):
    train_tiny = load_project_module('train_tiny')
    default = Config.fromfile(str(REPO_ROOT / train_tiny.CONFIGS[stage]))
    cfg = Config.fromfile(str(REPO_ROOT / train_tiny.NAME_BINDING_CONFIGS[stage]))
    paths = [d.get('data_path', '') for d in cfg.train_dataloader.dataset.datasets]
    assert paths[-1].endswith('text_binding/mixture.json')
    default_loader = default.train_dataloader
    # the rest as in the installed recipe
    assert cfg.train_cfg == default.train_cfg and cfg.model == default.model
    assert cfg.train_dataloader.sampler == default_loader.sampler


def test_name_binding_runs_are_never_installed():
    train_tiny = load_project_module('train_tiny')
    for extra in (['--install'], ['--committed-stages']):
        with pytest.raises(SystemExit) as exc:
            train_tiny.main(['--name-binding', *extra])
        assert exc.value.code == 2


def test_a_stage_that_crashed_after_its_final_checkpoint_counts_as_finished(tmp_path):
    train_tiny = load_project_module('train_tiny')
    stage = tmp_path / 'finetune'
    stage.mkdir()
    assert not train_tiny.stage_finished(str(stage), 500)  # nothing saved
    (stage / 'iter_500.pth').write_bytes(b'x')
    (stage / 'last_checkpoint').write_text(str(stage / 'iter_400.pth'))
    assert not train_tiny.stage_finished(str(stage), 500)  # an earlier checkpoint
    (stage / 'last_checkpoint').write_text(str(stage / 'iter_500.pth'))
    assert train_tiny.stage_finished(str(stage), 500)
    language = tmp_path / 'language'
    language.mkdir()
    (language / 'iter_500.pth').write_bytes(b'x')
    (language / 'last_checkpoint').write_text(str(language / 'iter_500.pth'))
    assert not train_tiny.stage_finished(str(language), 500)  # llm/ not exported yet
    (language / 'llm').mkdir()
    (language / 'llm' / 'config.json').write_text('{}')
    assert train_tiny.stage_finished(str(language), 500)
