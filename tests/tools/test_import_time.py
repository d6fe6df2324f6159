"""``--help`` and argument errors of every tool come back without importing torch (the 15-20 s
import): the heavy imports sit after the argument parsing (timings in docs/installation.md)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

HEAVY = ('torch', 'transformers', 'deepspeed', 'gradio', 'mmdet', 'xtuner')
#: tool file -> arguments that are refused by the parser (or the first check) before any model is
#: built
BAD_ARGUMENTS = {'chat': ['--point', '1'], 'app': ['--dtype', 'fp64'], 'test': ['--task', 'nope'],
                 'segment_image': ['--task', 'nope'], 'segment_video': [], 'convert_to_pth': [],
                 'export_hf': [], 'benchmark': ['--nope'],
                 'model_keys': ['omg_llava_7b_finetune_8gpus', '--part', 'x'],
                 'make_class_embeddings': [], 'check_reference': [], 'app_screenshots': ['--nope']}

_PROBE = '''
import contextlib, io, json, sys
sys.path.insert(0, {tests!r})
from conftest import load_tool
heavy = {heavy!r}
report = {{}}
for name, argv in {cases!r}:
    for args in (['--help'], argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = load_tool(name).main(args)
            except SystemExit as exc:
                code = exc.code
        report[name + ' ' + ' '.join(args)] = dict(code=code,
                                                   heavy=[m for m in heavy if m in sys.modules])
print(json.dumps(report))
'''


def test_help_and_argument_errors_do_not_import_torch():
    cases = list(BAD_ARGUMENTS.items())
    probe = _PROBE.format(tests=str(REPO_ROOT / 'tests'), heavy=HEAVY, cases=cases)
    done = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT / 'tests')
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report) == 2 * len(cases)
    for command, result in report.items():
        assert result['heavy'] == [], f'{command} imported {result["heavy"]}'
        assert result['code'] == (0 if command.endswith('--help') else 2), (command, result)


def test_model_keys_parts_are_the_verification_parts():
    from omg_llava.verification.model_keys import PARTS

    from conftest import load_tool
    assert load_tool('model_keys').PARTS == PARTS
