"""Shared test helpers: paths of the committed spec data (tests/data) and TSV manifest reading."""
from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / 'tests' / 'data'
KEYS_DIR = DATA_DIR / 'keys'
FINETUNE_CONFIG = REPO_ROOT / 'configs' / 'omg_llava_7b_finetune_8gpus.py'
PRETRAIN_CONFIG = REPO_ROOT / 'configs' / 'omg_llava_7b_pretrain_8gpus.py'
TINY_CONFIG = REPO_ROOT / 'configs' / 'tiny' / 'omg_llava_tiny_finetune.py'


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (for a process group or a server)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


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


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (tools are scripts, not a package) so tests can call its
    ``main(argv)``."""
    spec = importlib.util.spec_from_file_location(f'omg_llava_tool_{name}',
                                                  REPO_ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def reference_fixture_path() -> Path:
    return fixture_paths()[0]


def load_project_module(name: str) -> ModuleType:
    """Import ``projects/tiny_omg_llava/<name>.py`` (scripts, not a package) under its own name."""
    folder = REPO_ROOT / 'projects' / 'tiny_omg_llava'
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # train_tiny imports benchmark as a sibling
    spec = importlib.util.spec_from_file_location(name, folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
