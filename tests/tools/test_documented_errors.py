"""docs/troubleshooting.md lists errors the code raises: each documented message shares at least
three consecutive literal words (between its placeholders) with the sources of omg_llava/ and
tools/, so a message that the code no longer raises shows up here."""
from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT

DOC = REPO_ROOT / 'docs' / 'troubleshooting.md'
#: Sections whose messages come from other programs (pip, mmcv, xtuner, transformers, Java).
FOREIGN = ('## Set-up',)
#: A placeholder inside a documented message: N, M, K, X, Y, R, H, W, WxH, [a, b], …, ... and quoted
#: names.
PLACEHOLDER = re.compile(
    r"…|\.\.\.|\[[^\]]*\]|'[^']*'|\b(?:[NMKXYRHW]|WxH|W'xH'|CONFIG)\b|\([^)]*…[^)]*\)"
)


def _sources() -> str:
    text = []
    for path in sorted((REPO_ROOT / 'omg_llava').rglob('*.py')) + sorted(
        (REPO_ROOT / 'tools').glob('*.py')
    ):
        source = path.read_text(encoding='utf-8')
        # implicit concatenation joined
        text.append(re.sub(r"['\"]\s*\n\s*(?:f|rf|fr|r)?['\"]", '', source))
    return '\n'.join(text)


def _documented_messages() -> list[str]:
    messages, section = [], ''
    for line in DOC.read_text(encoding='utf-8').splitlines():
        if line.startswith('## '):
            section = line
        elif line.startswith('| `') and not section.startswith(FOREIGN):
            first_cell = line.split(' | ')[0]
            messages += re.findall(r'`([^`]+)`', first_cell)
    return messages


def _windows(message: str) -> list[str]:
    """Every three consecutive words of ``message`` not interrupted by a placeholder."""
    windows = []
    for run in PLACEHOLDER.split(message):
        words = run.strip(' :;,.()').split()
        windows += [' '.join(words[i:i + 3]) for i in range(len(words) - 2)]
    return windows


MESSAGES = _documented_messages()


def test_the_document_lists_many_messages():
    assert len(MESSAGES) > 40 and sum(bool(_windows(m)) for m in MESSAGES) > 35


@pytest.mark.parametrize('message', [m for m in MESSAGES if _windows(m)])
def test_each_documented_message_is_raised_somewhere(message):
    sources = ' '.join(_sources().split())
    assert any(window in sources for window in _windows(message)), f'{message!r} is not in the code'
