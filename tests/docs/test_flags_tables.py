"""The options tables of docs/chat.md and docs/app.md list exactly the options of their tool's
parser, with its defaults: a flag added, removed or given another default in a parser shows up
here."""
from __future__ import annotations

import argparse
import re

import pytest

from conftest import REPO_ROOT, load_tool

#: (doc, tool, the line the table follows)
TABLES = (('docs/chat.md', 'chat', '## Flags'), ('docs/app.md', 'app', 'The options are:'))


def table_rows(text: str, after: str) -> dict[str, tuple[str, str]]:
    """``{flag: (default cell, what cell)}`` of the first table after the first line that holds
    ``after`` (``CONFIG`` for the positional; a cell's ``--flag METAVAR`` counts as ``--flag``)."""
    lines = text.splitlines()
    marker = next(i for i, line in enumerate(lines) if after in line)
    start = next(i for i in range(marker, len(lines)) if lines[i].startswith('|'))
    rows = {}
    for line in lines[start:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        if not line.startswith('| `') or len(cells) != 3:
            continue
        for flag in re.findall(r'`([^`]+)`', cells[0]):
            rows[flag.split()[0]] = (cells[1], cells[2])
    return rows


def parser_options(tool: str) -> dict[str, argparse.Action]:
    """``{flag: action}`` of a tool's parser: each long option, ``CONFIG`` for the positional."""
    options = {}
    for action in load_tool(tool).build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = [s for s in action.option_strings if s.startswith('--')] or [action.dest.upper()]
        for name in names:
            options[name] = action
    return options


ROWS = {tool: table_rows((REPO_ROOT / doc).read_text(encoding='utf-8'), after)
        for doc, tool, after in TABLES}
OPTIONS = {tool: parser_options(tool) for _, tool, _ in TABLES}
CASES = [(tool, flag) for _, tool, _ in TABLES for flag in sorted(OPTIONS[tool])]


@pytest.mark.parametrize('doc, tool, after', TABLES)
def test_the_table_lists_every_option_and_no_other(doc, tool, after):
    rows, options = set(ROWS[tool]), set(OPTIONS[tool])
    assert rows == options, (f'in tools/{tool}.py only: {sorted(options - rows)}; '
                             f'in {doc} only: {sorted(rows - options)}')


def documented_default(action: argparse.Action) -> str | None:
    """The default the table must show: the parser's value, ``off`` for a switch, or the
    ``(default X`` of the help when the parser's default is ``None`` (resolved later, as chat's
    ``--dtype``)."""
    default = action.default
    if isinstance(action, argparse._StoreTrueAction):
        return 'off'
    if isinstance(default, str) and default.startswith(str(REPO_ROOT) + '/'):
        return default[len(str(REPO_ROOT)) + 1:]  # a package asset, shown repository-relative
    if isinstance(default, (str, int, float)) and not isinstance(default, bool):
        return str(default)
    found = re.search(r'\(default ([\w./-]+)', action.help or '')
    return found.group(1).rstrip('.;,') if found else None


@pytest.mark.parametrize('tool, flag', CASES)
def test_the_default_column_shows_the_parser_default(tool, flag):
    if flag not in ROWS[tool]:
        pytest.fail(f'{flag} is not in the table')
    cell = ROWS[tool][flag][0]
    action = OPTIONS[tool][flag]
    expected = documented_default(action)
    if expected is None:
        return
    shown = {expected}
    if isinstance(action.default, float):
        shown.add(f'{action.default:g}')  # 0.0 may be written 0
    assert any(re.search(rf'(?<![\w.]){re.escape(s)}(?![\w])', cell) for s in shown), \
        f'{flag}: the table says {cell!r}, the parser {expected!r}'


@pytest.mark.parametrize('doc, tool, after', TABLES)
def test_choices_are_listed(doc, tool, after):
    """An option with a fixed set of values names each of them in its row."""
    for flag, action in OPTIONS[tool].items():
        for choice in action.choices or ():
            assert f'`{choice}`' in ' '.join(ROWS[tool][flag]), \
                f'{doc} {flag}: {choice!r} is not in the table'


def test_a_changed_default_is_caught():
    text = (REPO_ROOT / 'docs' / 'chat.md').read_text(encoding='utf-8')
    rows = table_rows(text.replace('| `--top-k` | 40 |', '| `--top-k` | 50 |'), '## Flags')
    expected = documented_default(OPTIONS['chat']['--top-k'])
    assert expected == '40' and rows['--top-k'][0] == '50'
