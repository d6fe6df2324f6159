"""docs/chat.md's flags table lists exactly the options of tools/chat.py's parser, with their
defaults: a flag added, removed or given another default in the parser shows up here."""
from __future__ import annotations

import argparse
import re

import pytest

from conftest import REPO_ROOT, load_tool

DOC = REPO_ROOT / 'docs' / 'chat.md'


def table_rows(text: str) -> dict[str, tuple[str, str]]:
    """``{flag: (default cell, what cell)}`` of the table under ``## Flags`` (``CONFIG`` for the
    positional)."""
    section = text.split('\n## Flags\n', 1)[1].split('\n## ', 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split(' | ')]
        if not line.startswith('| `') or len(cells) != 3:
            continue
        for flag in re.findall(r'`([^`]+)`', cells[0]):
            rows[flag] = (cells[1], cells[2])
    return rows


def parser_options() -> dict[str, argparse.Action]:
    """``{flag: action}`` of the chat parser: each long option, ``CONFIG`` for the positional."""
    options = {}
    for action in load_tool('chat').build_parser()._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = [s for s in action.option_strings if s.startswith('--')] or [action.dest.upper()]
        for name in names:
            options[name] = action
    return options


ROWS = table_rows(DOC.read_text(encoding='utf-8'))
OPTIONS = parser_options()


def test_the_table_lists_every_option_and_no_other():
    assert set(ROWS) == set(OPTIONS), (f'in the parser only: {sorted(set(OPTIONS) - set(ROWS))}; '
                                       f'in docs/chat.md only: {sorted(set(ROWS) - set(OPTIONS))}')


def documented_default(action: argparse.Action) -> str | None:
    """The default the table must show: the parser's value, ``off`` for a switch, or the
    ``(default X`` of the help when the parser's default is ``None`` (resolved later, as
    ``--dtype``'s)."""
    default = action.default
    if isinstance(action, argparse._StoreTrueAction):
        return 'off'
    if isinstance(default, str) and default.startswith(str(REPO_ROOT) + '/'):
        return default[len(str(REPO_ROOT)) + 1:]  # a package asset, shown repository-relative
    if isinstance(default, (str, int, float)) and not isinstance(default, bool):
        return str(default)
    found = re.search(r'\(default ([\w./-]+)', action.help or '')
    return found.group(1).rstrip('.;,') if found else None


@pytest.mark.parametrize('flag', sorted(OPTIONS))
def test_the_default_column_shows_the_parser_default(flag):
    if flag not in ROWS:
        pytest.fail(f'{flag} is not in the table')
    cell = ROWS[flag][0]
    expected = documented_default(OPTIONS[flag])
    if expected is None:
        return
    shown = {expected}
    if isinstance(OPTIONS[flag].default, float):
        shown.add(f'{OPTIONS[flag].default:g}')  # 0.0 may be written 0
    assert any(re.search(rf'(?<![\w.]){re.escape(s)}(?![\w])', cell) for s in shown), \
        f'{flag}: the table says {cell!r}, the parser {expected!r}'


def test_choices_are_listed():
    """An option with a fixed set of values names each of them in its row."""
    for flag, action in OPTIONS.items():
        for choice in action.choices or ():
            assert f'`{choice}`' in ' '.join(ROWS[flag]), f'{flag}: {choice!r} is not in the table'
