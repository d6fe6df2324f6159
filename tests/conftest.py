"""Shared test helpers: paths of the committed spec data (tests/data) and TSV manifest reading."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / 'tests' / 'data'
KEYS_DIR = DATA_DIR / 'keys'
FINETUNE_CONFIG = REPO_ROOT / 'configs' / 'omg_llava_7b_finetune_8gpus.py'
TINY_CONFIG = REPO_ROOT / 'configs' / 'tiny' / 'omg_llava_tiny_finetune.py'


def fixture_paths() -> list[Path]:
    """Every reference fixture to check: ``$OMG_LLAVA_FIXTURES`` or the committed copy."""
    root = Path(os.environ.get('OMG_LLAVA_FIXTURES', DATA_DIR / 'fixtures'))
    paths = sorted(p for p in root.glob('*.pt') if p.with_suffix('.json').is_file())
    assert paths, f'no fixture (*.pt with a .json sidecar) in {root}'
    return paths


def read_key_manifest(name: str, strip_prefix: str = '') -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``tests/data/keys/<name>`` (header ``key\\tshape``, shapes ``a,b,c``)."""
    rows = (KEYS_DIR / name).read_text().splitlines()[1:]
    manifest = {}
    for row in rows:
        key, shape = row.split('\t')
        if key.startswith(strip_prefix):
            manifest[key[len(strip_prefix):]] = tuple(int(s) for s in shape.split(',') if s)
    return manifest


@pytest.fixture(scope='session')
def reference_fixture_path() -> Path:
    return fixture_paths()[0]
