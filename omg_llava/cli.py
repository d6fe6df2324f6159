"""Console entry points: the tools of ``tools/`` from anywhere, installed or not.

    omg-llava-chat --prompt "Please segment the largest shape in this image."
    omg-llava-test --task region_qa --data-root data/synthetic_shapes --split val
    python -m omg_llava chat --help          # the same without the console scripts on PATH

Each command runs the ``main`` of its ``tools/<file>.py``, which stays the one implementation: in a
checkout or an editable install the repository's ``tools/``; in a non-editable install the copy
``setup.py`` ships in ``omg_llava/.mim/tools`` (the layout mmdet and mim use, next to
``.mim/configs``). Only the standard library is imported here, so ``--help`` and argument errors
come back at once.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

__all__ = ['TOOLS', 'tools_dir', 'load_tool', 'run', 'main']

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: command (``omg-llava-<command>``, ``python -m omg_llava <command>``) -> file in ``tools/``
TOOLS = {'chat': 'chat', 'app': 'app', 'test': 'test', 'segment': 'segment_image',
         'segment-video': 'segment_video',
         'convert': 'convert_to_pth', 'export-hf': 'export_hf', 'benchmark': 'benchmark',
         'model-keys': 'model_keys', 'class-embeddings': 'make_class_embeddings'}


def tools_dir() -> str:
    """The folder holding the tool files: the installed copy, else the checkout's ``tools/``."""
    for folder in (os.path.join(_PACKAGE_DIR, '.mim', 'tools'),
                   os.path.join(os.path.dirname(_PACKAGE_DIR), 'tools')):
        if os.path.isfile(os.path.join(folder, 'chat.py')):
            return folder
    raise FileNotFoundError(f'the tool files are missing: neither {_PACKAGE_DIR}/.mim/tools (an '
                            'installed package) nor a tools/ folder next to the package (a '
                            'checkout); reinstall omg_llava')


def load_tool(command: str) -> ModuleType:
    """Import the tool file of ``command`` (a key of :data:`TOOLS`) as module
    ``omg_llava_tool_<file>``."""
    name = TOOLS[command]
    module_name = f'omg_llava_tool_{name}'
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name,
                                                  os.path.join(tools_dir(), f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run(command: str, argv: list[str] | None = None) -> int:
    """Run the tool of ``command`` with ``argv`` (default ``sys.argv[1:]``); its exit status."""
    return load_tool(command).main(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m omg_llava <command> [args]``: run one tool; without a command, list them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in TOOLS:
        out = sys.stdout if argv and argv[0] in ('-h', '--help') else sys.stderr
        if argv and argv[0] not in ('-h', '--help'):
            print(f'error: unknown command {argv[0]!r}; choose one of: {", ".join(TOOLS)}',
                  file=out)
        print('usage: python -m omg_llava COMMAND [ARGS]  (or omg-llava-COMMAND [ARGS])\ncommands: '
              + ', '.join(f'{c} (tools/{f}.py)' for c, f in TOOLS.items()) + '\nCOMMAND --help '
                                                                             'describes one.',
              file=out)
        return 0 if out is sys.stdout else 2
    # argparse names the command in usage and error lines
    sys.argv = [f'omg-llava-{argv[0]}'] + argv[1:]
    return run(argv[0], argv[1:])


def _entry(command: str):
    def entry() -> int:
        return run(command)
    entry.__name__ = entry.__qualname__ = command.replace('-', '_')
    entry.__doc__ = f'``omg-llava-{command}``: tools/{TOOLS[command]}.py'
    return entry


# console_scripts targets (setup.py): omg-llava-chat = omg_llava.cli:chat, ...
(
    chat,
    app,
    test,
    segment,
    segment_video,
    convert,
    export_hf,
    benchmark,
    model_keys,
    class_embeddings,
) = (_entry(c) for c in TOOLS)
