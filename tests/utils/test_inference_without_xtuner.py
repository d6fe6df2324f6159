"""The inference entry points (chat, app, test, export, segment_image) import and run with xtuner
blocked: xtuner is a training dependency only."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT

# Runs in a fresh interpreter: any import of xtuner (or a submodule) raises, then every entry
# point's modules are imported and the README's one-shot chat runs on the built-in default model.
SCRIPT = textwrap.dedent('''
    import importlib.abc, importlib.util, json, sys

    class BlockXtuner(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] == 'xtuner':
                raise ImportError(f'xtuner is blocked in this test (imported: {name})')
            return None

    sys.meta_path.insert(0, BlockXtuner())
    out_dir, = sys.argv[1:]

    def load_tool(name):
        spec = importlib.util.spec_from_file_location(f'tool_{name}', f'tools/{name}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    tools = {name: load_tool(name)
             for name in ('chat', 'app', 'test', 'export_hf', 'segment_image')}
    # what the tools import when they run (their heavy imports are deferred to main)
    import omg_llava.checkpoint, omg_llava.export, omg_llava.evaluation.gcg
    import omg_llava.evaluation.runner, omg_llava.evaluation.splits, omg_llava.inference.app_ui
    import omg_llava.inference.chat, omg_llava.inference.chat_outputs, omg_llava.inference.image_io
    import omg_llava.inference.model_builder, omg_llava.segmentation.builder
    import omg_llava.segmentation.outputs, omg_llava.models.llm

    code = tools['chat'].main(['--prompt', 'Please segment the largest shape in this image.',
                               '--out-dir', out_dir])
    from omg_llava.inference.app_ui import build_demo
    from omg_llava.inference.chat import OMGLLaVAChat
    from omg_llava.inference.defaults import DEFAULT_CONFIG
    demo = build_demo(OMGLLaVAChat.from_config(DEFAULT_CONFIG, seed=0)[0])
    print(json.dumps({'code': code,
                      'xtuner': sorted(m for m in sys.modules if m.split('.')[0] == 'xtuner'),
                      'demo': type(demo).__name__}))
''')


def test_entry_points_run_with_xtuner_blocked(tmp_path):
    # installed: the block is what keeps it out
    assert importlib.util.find_spec('xtuner') is not None
    done = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {'code': 0, 'xtuner': [], 'demo': 'Blocks'}
    answer = json.loads((tmp_path / 'answer.json').read_text())
    assert '[SEG]' in answer['text'] and len(answer['masks']) == answer['text'].count('[SEG]') >= 1
    assert (tmp_path / 'overlay.png').is_file() and (tmp_path / 'mask_0.png').is_file()
