"""The commands of README.md and docs/*.md work as printed.

A fenced block whose line before is ``<!-- runs-offline -->`` is run (bash, ``set -eo pipefail``)
in a scratch folder that links the repository's files (so what it writes, ``outputs/``, ``data/``,
``exports/``, lands there, not in the tree), with this interpreter's ``bin/`` for any
``.../.venv/bin/`` and first on ``PATH`` (a bare ``python`` is the venv's). It must exit 0, and each
``# prints: TEXT`` comment in it must appear in its output. Only fast offline blocks are marked
(the built-in tiny model); every other shell block is checked without running it: the project
tools it calls must exist and take the ``--flags`` it gives them (their ``--help``), and the
``make`` targets it names must exist. The docs refer to files of the repository, never to
``../shared``.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO_ROOT

DOCS = [REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md'))]
OFFLINE_MARK = '<!-- runs-offline -->'
SHELL_INFOS = ('bash', 'sh', 'shell', 'console')
#: folders the commands write into, kept out of the scratch folder's links
NOT_LINKED = {'.git', 'outputs', 'data', 'work_dirs', 'exports', 'bundles', 'pretrained', 'build',
              '.pytest_cache'}
#: seconds one marked block may take (the test machine: 2 shared cores)
BLOCK_TIMEOUT = 300
SHELL_OPERATORS = {'|', '||', '&&', ';', '>', '>>', '2>', '&', '<', '(', ')'}
BINDIR = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    """One fenced block: file, 1-based line of its opening fence, info string, text, and
    whether it is marked."""

    path: Path
    line: int
    info: str
    text: str
    offline: bool

    @property
    def where(self) -> str:
        return f'{self.path.relative_to(REPO_ROOT)}:{self.line}'


def doc_blocks(paths: list[Path] = DOCS) -> list[Block]:
    """Every fenced block of ``paths`` (fences of three backticks, possibly indented)."""
    blocks = []
    for path in paths:
        lines = path.read_text(encoding='utf-8').splitlines()
        i = 0
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith('```'):
                end = next((j for j in range(i + 1, len(lines))
                            if lines[j].strip().startswith('```')), None)
                assert end is not None, f'{path}:{i + 1}: fence not closed'
                marked = i > 0 and lines[i - 1].strip() == OFFLINE_MARK
                text = '\n'.join(lines[i + 1:end])
                blocks.append(Block(path, i + 1, stripped[3:].strip(), text, marked))
                i = end
            i += 1
    return blocks


BLOCKS = doc_blocks()
OFFLINE = [b for b in BLOCKS if b.offline]


def test_the_marks_sit_on_shell_blocks():
    """Every mark is right before a shell block (a mark elsewhere would silently run nothing)."""
    marks = sum(p.read_text(encoding='utf-8').count(OFFLINE_MARK) for p in DOCS)
    assert marks == len(OFFLINE) >= 6
    assert all(b.info in SHELL_INFOS for b in OFFLINE), \
        [b.where for b in OFFLINE if b.info not in SHELL_INFOS]


def expected_outputs(text: str) -> list[str]:
    """The ``# prints: TEXT`` comments of a block."""
    return [m.strip() for m in re.findall(r'#\s*prints:\s*(.+)$', text, flags=re.M)]


def _scratch(folder: Path) -> Path:
    """``folder`` with a link to each entry of the repository root but the output folders."""
    for entry in os.listdir(REPO_ROOT):
        if entry not in NOT_LINKED and not entry.startswith('.venv'):
            (folder / entry).symlink_to(REPO_ROOT / entry)
    return folder


def _environment() -> dict[str, str]:
    env = dict(os.environ, PATH=f'{BINDIR}{os.pathsep}{os.environ.get("PATH", "")}', NO_COLOR='1')
    env.pop('OMG_LLAVA_TRACEBACK', None)
    return env


@pytest.mark.parametrize('block', OFFLINE, ids=[b.where for b in OFFLINE])
def test_marked_block_runs(block: Block, tmp_path):
    script = re.sub(r'[^\s\'"=]*\.venv/bin/', f'{BINDIR}/', block.text)  # $REPO/.venv/bin/ too
    start = time.perf_counter()
    env = dict(_environment(), TMPDIR=str(tmp_path))  # mktemp stays in the scratch folder
    run = subprocess.run(['bash', '-eo', 'pipefail', '-c', script], cwd=_scratch(tmp_path),
                         env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f'{block.where} exit {run.returncode}:\n{output[-4000:]}'
    flat = ' '.join(output.split())
    for text in expected_outputs(block.text):
        assert ' '.join(text.split()) in flat, \
            f'{block.where}: {text!r} is not in the output:\n{output[-4000:]}'
    print(f'{block.where}: {time.perf_counter() - start:.1f} s')


def test_expected_outputs_are_parsed():
    assert expected_outputs('tool --x  # prints: answer: The largest shape .\n# prints:  ok ') == [
        'answer: The largest shape .', 'ok']
    assert sum(bool(expected_outputs(b.text)) for b in OFFLINE) >= 3


# ------------------------------------------------------ blocks that are not run: tools and flags
@dataclass(frozen=True)
class Call:
    """A project tool called in a shell block: its script (repository-relative) and the words
    after it."""

    where: str
    script: str
    words: tuple[str, ...]  # the arguments after the script, up to the next shell operator


def _logical_lines(text: str) -> list[str]:
    """The block's command lines, backslash continuations joined."""
    return text.replace('\\\n', ' ').splitlines()


def _script_of(words: list[str]) -> tuple[str, int] | None:
    """The repository script a command runs and the index of its first argument, if it runs one."""
    from omg_llava.cli import TOOLS
    for i, word in enumerate(words):
        if word in SHELL_OPERATORS:
            return None
        tool = re.search(r'(?:^|/)((?:tools|projects/tiny_omg_llava)/\w+\.py)$', word)
        if tool:
            return tool.group(1), i + 1
        console = re.fullmatch(r'(?:.*/)?omg-llava-([\w-]+)', word)
        if console and console.group(1) in TOOLS:
            return f'tools/{TOOLS[console.group(1)]}.py', i + 1
        if word == 'omg_llava' and i > 0 and words[i - 1] == '-m' and words[i + 1:i + 2] and \
                words[i + 1] in TOOLS:
            return f'tools/{TOOLS[words[i + 1]]}.py', i + 2
    return None


def tool_calls(blocks: list[Block]) -> list[Call]:
    """The project tools called in the shell blocks (a line ``... --flag`` continues the previous
    call)."""
    calls = []
    for block in blocks:
        if block.info not in SHELL_INFOS:
            continue
        previous = None
        for line in _logical_lines(block.text):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # a heredoc body or prose
                continue
            if words[:1] == ['...'] and previous is not None:
                found, words = (previous, 1), words
            else:
                found = _script_of(words)
            if found is None:
                continue
            script, first = found
            rest = words[first:]
            end = next((i for i, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
            calls.append(Call(block.where, script, tuple(rest[:end])))
            previous = script
    return calls


@functools.lru_cache(maxsize=None)
def help_text(script: str, subcommand: str = '') -> str:
    command = [sys.executable, script, *([subcommand] if subcommand else []), '--help']
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env=_environment())
    assert run.returncode == 0, \
        f'{" ".join(command[1:])} exit {run.returncode}:\n{run.stderr[-2000:]}'
    return run.stdout


def _subcommands(help: str) -> list[str]:
    usage = help.split('\n\n')[0]
    found = re.search(r'\{([\w,-]+)\} \.\.\.', usage)  # argparse's subparsers: {a,b} ...
    return found.group(1).split(',') if found else []


CALLS = tool_calls(BLOCKS)
SCRIPTS = sorted({c.script for c in CALLS})


def test_the_calls_are_found():
    scripts = set(SCRIPTS)
    assert {'tools/chat.py', 'tools/test.py', 'tools/segment_image.py', 'tools/model_keys.py',
            'tools/benchmark.py', 'tools/export_hf.py'} <= scripts, scripts


@pytest.mark.parametrize('script', SCRIPTS)
def test_documented_flags_exist(script):
    """Each ``--flag`` the docs give a tool is one of its options (a subcommand's: its own)."""
    assert (REPO_ROOT / script).is_file(), f'{script} does not exist'
    missing = []
    for call in (c for c in CALLS if c.script == script):
        text = help_text(script)
        subcommand = next((w for w in call.words if not w.startswith('-')), '')
        if subcommand in _subcommands(text):
            text = help_text(script, subcommand)
        for word in call.words:
            flag = word.strip('[]').split('=')[0]
            if not flag.startswith('--') or flag == '--help':
                continue
            if not re.search(rf'(?<![\w-]){re.escape(flag)}(?![\w-])', text):
                missing.append(f'{call.where}: {script} {subcommand} has no {flag}')
    assert not missing, '\n'.join(missing)


def test_documented_make_targets_exist():
    makefile = (REPO_ROOT / 'Makefile').read_text(encoding='utf-8')
    targets = set(re.findall(r'^([\w-]+):', makefile, flags=re.M))
    used = {(b.where, w[1]) for b in BLOCKS if b.info in SHELL_INFOS
            for line in _logical_lines(b.text)
            for w in [line.split()] if len(w) > 1 and w[0] == 'make'}
    assert used and all(t in targets for _, t in used), sorted(used)


def test_docs_do_not_point_outside_the_repository():
    """A clone has no ``../shared`` folder: the docs (and the tools' help) name the copies in the
    repository (``docs/spec/``, ``tests/data/``)."""
    texts = DOCS + sorted((REPO_ROOT / 'tools').glob('*.py')) + sorted(
        (REPO_ROOT / 'tests' / 'data').rglob('README.md'))
    bad = [f'{p.relative_to(REPO_ROOT)}:{n}' for p in texts
           for n, line in enumerate(p.read_text(encoding='utf-8').splitlines(), 1)
           if re.search(r'(?<![\w/])(?:\.\./)*shared/(?:spec|fixtures)\b', line)]
    assert not bad, bad


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation but
    ``-``/``_`` dropped, spaces to ``-``, ``-1``, ``-2`` ... for repeats)."""
    anchors, seen, inside = set(), {}, False
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.strip().startswith('```'):
            inside = not inside
        heading = None if inside else re.match(r'#{1,6} (.*)', line)
        if heading:
            slug = re.sub(r'[^\w\- ]', '', heading.group(1).strip().lower()).replace(' ', '-')
            anchors.add(f'{slug}-{seen[slug]}' if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_heading_anchors():
    assert {'inference-modepredict-generate-the-chat-api', 'loading-the-released-checkpoints'} \
        <= heading_anchors(REPO_ROOT / 'docs' / 'model.md')


def test_relative_links_resolve():
    """Every relative Markdown link of the docs names a file or folder of the repository, and its
    ``#anchor`` a heading of that file."""
    broken = []
    for path in DOCS:
        text = path.read_text(encoding='utf-8')
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+://|mailto:', target):
                continue
            name, _, anchor = target.partition('#')
            linked = path.parent / name if name else path
            if not linked.exists():
                broken.append(f'{path.relative_to(REPO_ROOT)}: {target}')
            elif anchor and linked.suffix == '.md' and anchor not in heading_anchors(linked):
                broken.append(f'{path.relative_to(REPO_ROOT)}: {target} (no such heading)')
    assert not broken, broken
