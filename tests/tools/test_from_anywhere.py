"""The tools and the Python API find the built-in configs by name from any directory, in a checkout
and after a non-editable install (omg_llava/.mim/{configs,tools}), and the console scripts /
``python -m omg_llava`` run them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omg_llava.assets import TINY_SYNTHETIC_PTH
from omg_llava.config_paths import builtin_configs, find_config, same_config
from omg_llava.inference import defaults

from conftest import REPO_ROOT, load_tool

DEFAULT = REPO_ROOT / 'configs' / 'tiny' / 'omg_llava_tiny_synthetic_finetune.py'


@pytest.mark.parametrize('name', ['configs/tiny/omg_llava_tiny_synthetic_finetune.py',
                                  './configs/tiny/omg_llava_tiny_synthetic_finetune',
                                  'tiny/omg_llava_tiny_synthetic_finetune.py',
                                  'omg_llava_tiny_synthetic_finetune'])
def test_builtin_config_found_by_name_from_another_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(find_config(name), DEFAULT)
    assert defaults.is_default_config(name)
    assert defaults.checkpoint_for(name, None) == TINY_SYNTHETIC_PTH
    assert os.path.samefile(find_config('omg_llava_7b_finetune_8gpus'),
                            REPO_ROOT / 'configs' / 'omg_llava_7b_finetune_8gpus.py')


def test_a_file_in_the_working_directory_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / 'configs' / 'tiny' / 'omg_llava_tiny_synthetic_finetune.py'
    own.parent.mkdir(parents=True)
    own.write_text('model = None\n')
    assert find_config('configs/tiny/omg_llava_tiny_synthetic_finetune.py') == \
        'configs/tiny/omg_llava_tiny_synthetic_finetune.py'
    assert not defaults.is_default_config('configs/tiny/omg_llava_tiny_synthetic_finetune.py')
    assert defaults.checkpoint_for('configs/tiny/omg_llava_tiny_synthetic_finetune.py',
                                   None) is None


def test_unknown_config_lists_the_builtin_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        find_config('omg_llava_13b')
    message = str(info.value)
    assert message.startswith('config file not found: omg_llava_13b') and '\n' not in message
    assert ('omg_llava_7b_finetune_8gpus' in message
            and 'tiny/omg_llava_tiny_synthetic_finetune' in message)
    assert '_base_' not in message
    assert not same_config('omg_llava_13b', defaults.DEFAULT_CONFIG)


def test_builtin_configs_are_the_repository_configs():
    on_disk = sorted(str(p.relative_to(REPO_ROOT / 'configs'))
                     for p in (REPO_ROOT / 'configs').rglob('*.py')
                     if '_base_' not in p.parts)
    assert builtin_configs() == on_disk


def test_tools_resolve_configs_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # chat: the default config is found, then the next check (a bad flag value) answers before any
    # model build
    assert load_tool('chat').main(['--max-new-tokens', '0', '--prompt', 'hi']) == 2
    assert capsys.readouterr().err.strip() == 'error: --max-new-tokens must be at least 1, got 0'
    args = load_tool('test').parse_args(['--task', 'region_qa', '--data-root', 'd', '--split',
                                         'val'])
    assert os.path.samefile(args.config, DEFAULT) and args.pth == TINY_SYNTHETIC_PTH
    args = load_tool('test').parse_args(['omg_llava_7b_finetune_8gpus', '--task', 'region_qa',
                                         '--data-root', 'd', '--split', 'val'])
    assert args.config.endswith('omg_llava_7b_finetune_8gpus.py') and args.pth is None
    with pytest.raises(SystemExit) as info:
        load_tool('app').build_parser().parse_args(['omg_llava_13b'])
    assert info.value.code == 2
    assert 'config file not found: omg_llava_13b' in capsys.readouterr().err


def test_segment_image_default_is_the_trained_encoder_with_its_classes(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.chdir(tmp_path)
    assert load_tool('segment_image').main(['--out-dir', 'out']) == 0
    out = capsys.readouterr().out
    assert 'classes: the 24 shape classes' in out and 'random' not in out
    header = next(line for line in out.splitlines() if line.startswith('panoptic:'))
    threshold = float(header.split('score > ')[1].split()[0])
    info = json.loads((tmp_path / 'out' / 'panoptic.json').read_text())
    assert len(info['categories']) == 24 and info['categories'][0]['name'] == 'red circle'
    segments = info['segments_info']
    assert segments, 'the trained encoder finds the shapes of the demo image'
    assert all(s['score'] > threshold for s in segments)  # what the header says is what is listed
    listed = [line.split()[0:2] for line in out.splitlines() if ' score ' in line
              and 'area' in line]
    assert sorted(' '.join(words) for words in listed) == sorted(s['name'] for s in segments)
    assert all(name.split()[1] in ('circle', 'square', 'triangle', 'star')
               for name in (s['name'] for s in segments))


def test_synthetic_class_names_follow_the_encoder_config():
    from mmengine.config import Config
    cfg = Config.fromfile(find_config('omg_seg_tiny_synthetic'))
    assert list(defaults.SYNTHETIC_CLASS_NAMES) == list(cfg.class_names)


# --------------------------------------------------------------------------- a non-editable install
@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> Path:
    """The package installed from a wheel into a folder of its own (no dependencies: the venv
    provides them)."""
    # a copy: the build writes build/ and *.egg-info next to setup.py
    source = tmp_path_factory.mktemp('source')
    shutil.copy(REPO_ROOT / 'setup.py', source)
    for folder in ('omg_llava', 'configs', 'tools'):
        shutil.copytree(REPO_ROOT / folder, source / folder,
                        ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    target = tmp_path_factory.mktemp('site')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                    '--no-build-isolation',
                    '--no-index', '--target', str(target), str(source)], check=True, cwd=target,
                   env=dict(os.environ, PIP_NO_CACHE_DIR='1'))
    return target


def _run_installed(installed: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    # before the venv's editable checkout on sys.path
    env = dict(os.environ, PYTHONPATH=str(installed))
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_installed_package_finds_configs_and_tools_by_name(installed, tmp_path):
    assert (
        installed
        / 'omg_llava'
        / '.mim'
        / 'configs'
        / 'tiny'
        / 'omg_llava_tiny_synthetic_finetune.py'
    ).is_file()
    assert (installed / 'omg_llava' / '.mim' / 'tools' / 'chat.py').is_file()
    script = ('import json, os, sys, omg_llava\n'
              'from omg_llava.config_paths import find_config\n'
              'from omg_llava.inference.defaults import DEFAULT_CONFIG, checkpoint_for\n'
              'from omg_llava.inference.encoder_builder import resolve_encoder_weights, '
              'visual_encoder_config\nfrom omg_llava.cli import tools_dir\n'
              'part, cfg = visual_encoder_config(find_config(DEFAULT_CONFIG))\n'
              'print(json.dumps(dict(package=omg_llava.__file__, '
              'default=find_config(DEFAULT_CONFIG),\n    '
              'seven_b=find_config("omg_llava_7b_finetune_8gpus"), '
              'pth=checkpoint_for(DEFAULT_CONFIG, None),\n    '
              'weights=resolve_encoder_weights(part, DEFAULT_CONFIG), tools=tools_dir(), '
              'llm=cfg.model.llm.get(\n        "pretrained_model_name_or_path"), '
              'modules=[m.__file__ for n, m in list(sys.modules.items())\n        if '
              'n.startswith("omg_llava") and getattr(m, "__file__", None)])))\n')
    done = _run_installed(installed, tmp_path, sys.executable, '-c', script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    mim = str(installed / 'omg_llava' / '.mim')
    assert found['package'].startswith(str(installed))
    assert found['modules'] and all(m.startswith(str(installed)) for m in found['modules']), found[
        'modules'
    ]
    assert found['default'].startswith(mim) and found['seven_b'].startswith(mim)
    assert found['tools'] == os.path.join(mim, 'tools')
    assert found['pth'].startswith(str(installed)) and os.path.isfile(found['pth'])
    assert all(p.startswith(str(installed)) and os.path.isfile(p)
               for p in found['weights'].values())


def test_installed_console_scripts_and_module_form(installed, tmp_path):
    done = _run_installed(installed, tmp_path, str(installed / 'bin' / 'omg-llava-test'), '--help')
    assert done.returncode == 0 and done.stdout.startswith('usage: omg-llava-test'), done.stderr
    done = _run_installed(installed, tmp_path, sys.executable, '-m', 'omg_llava', 'chat',
                          'omg_llava_13b')
    assert done.returncode == 2
    assert done.stderr.startswith('omg-llava-chat: error: argument config: config file not found: '
                                  'omg_llava_13b')
    done = _run_installed(installed, tmp_path, str(installed / 'bin' / 'omg-llava-chat'),
                          '--max-new-tokens', '0')
    assert (done.returncode == 2
            and done.stderr.strip() == 'error: --max-new-tokens must be at least 1, got 0')
    entry_points = next(installed.glob('omg_llava-*.dist-info')) / 'entry_points.txt'
    from omg_llava.cli import TOOLS
    assert {f'omg-llava-{c}' for c in TOOLS} <= {line.split(' = ')[0]
                                                 for line in entry_points.read_text().splitlines()}
