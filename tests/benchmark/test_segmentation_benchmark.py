"""``tools/benchmark.py segment`` on the tiny bundle: every universal-segmentation mode runs through
the bundle's encoder files and reports build / encode / post with memory, and what the task
produced."""
from __future__ import annotations

import json

import pytest

from omg_llava.benchmark import write_bundle
from omg_llava.benchmark.segmentation import POINTS, SEGMENTATION_TASKS

from conftest import load_tool


@pytest.fixture(scope='module')
def tiny_bundle(tmp_path_factory):
    return write_bundle('tiny', tmp_path_factory.mktemp('bundle'), log=lambda line: None)


@pytest.mark.parametrize('task', SEGMENTATION_TASKS)
def test_every_mode_reports_its_stages(tiny_bundle, tmp_path, task):
    out = tmp_path / f'{task}.json'
    assert load_tool('benchmark').main(['segment', tiny_bundle.root, '--task', task, '--side',
                                        '128', '--frames', '4', '--json', str(out)]) == 0
    record = json.loads(out.read_text())
    assert record['task'] == task and record['side'] == 128 and record['parameters'] > 0
    stages = {s['stage']: s for s in record['stages']}
    assert list(stages) == ['build', 'encode', 'post']
    assert all(s['peak_rss_gb'] >= s['rss_gb'] > 0 and s['seconds'] >= 0 for s in stages.values())
    post = stages['post']
    if task == 'interactive':
        assert post['masks'] == len(POINTS) + 1  # one mask per point and per box
    elif task == 'video':
        assert stages['encode']['frames'] == 4 and len(post['segments_per_frame']) == 4
    else:
        assert stages['encode']['frames'] == 1
        assert {'panoptic': 'segments', 'semantic': 'classes',
                'instance': 'instances'}[task] in post


def test_not_a_bundle_is_one_line(tmp_path, capsys):
    assert load_tool('benchmark').main(['segment', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: ')


def test_stage_rows_are_flat():
    from omg_llava.benchmark.runner import Stage
    row = Stage('encode', 1.5, 2.0, 1.0, {'frames': 3}).flat()
    assert row == {'stage': 'encode', 'seconds': 1.5, 'peak_rss_gb': 2.0, 'rss_gb': 1.0,
                   'frames': 3}
    assert Stage.from_flat(row) == Stage('encode', 1.5, 2.0, 1.0, {'frames': 3})
