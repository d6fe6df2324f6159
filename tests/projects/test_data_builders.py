"""Both tiny data builders write byte-identical files for the same seed as before their split into
modules (issue 27): a recorded-value regression test guarding that refactor.

``tests/data/tiny_data_hashes.json`` holds the SHA-256 of every file that the single-file builders
(commit c3ddb82, Osprey regions under 'annotation') wrote: ``synthetic_shapes.write_dataset`` with 3
train / 2 val / 1 testA images and seed 5, and ``build_tiny_data.build_tiny_data`` with seed 3. A
deliberate change of the generated data re-records it: the synthetic set was re-recorded when it
gained ``text_binding/`` (issue 26; every other file kept its bytes, README.md lists the new files).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import DATA_DIR, load_project_module

RECORDED = DATA_DIR / 'tiny_data_hashes.json'


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path (README.md with the root masked)."""
    hashes = {}
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        data = path.read_bytes()
        if path.name == 'README.md':
            data = data.replace(str(root).encode(), b'<root>')
        hashes[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return hashes


def build(name: str, root: Path) -> None:
    if name == 'synthetic_shapes':
        load_project_module(name).write_dataset(str(root), num_train=3, num_val=2, num_test=1,
                                                seed=5)
    else:
        load_project_module(name).build_tiny_data(str(root), seed=3)


@pytest.mark.parametrize('name', ['synthetic_shapes', 'build_tiny_data'])
def test_generated_files_are_byte_identical_to_the_recorded_ones(name, tmp_path):
    build(name, tmp_path)
    got, recorded = file_hashes(tmp_path), json.loads(RECORDED.read_text())[name]
    assert sorted(got) == sorted(recorded)
    changed = [path for path in recorded if got[path] != recorded[path]]
    assert not changed, f'{len(changed)} file(s) differ from the recorded bytes, e.g. {changed[:5]}'


def test_the_hashes_see_a_changed_byte(tmp_path):
    build('build_tiny_data', tmp_path)
    before = file_hashes(tmp_path)
    target = tmp_path / 'region_caption' / 'osprey' / 'osprey_conversation.json'
    target.write_text(target.read_text().replace('"annotation"', '"annotations"', 1))
    after = file_hashes(tmp_path)
    assert [p for p in before if before[p] != after[p]] == [str(target.relative_to(tmp_path))]
