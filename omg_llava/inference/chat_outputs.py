"""What the chat tools write and print: a coloured overlay, one PNG per mask, ``answer.json`` with
COCO RLE masks, and the answer text with each ``<p> … </p>`` phrase in the colour of its mask.

    paths = write_answer('outputs/chat', answer, np.asarray(image),
                         question='Please segment the cat.')
    print(render_answer(answer.text, ansi=sys.stdout.isatty()))

Mask ``i`` (the ``i``-th generated ``[SEG]``) gets colour ``PALETTE[i % 7]``; the ``i``-th phrase is
shown in the same colour, since the model writes ``<p> phrase </p> [SEG]`` pairs in order. The
overlay keeps the original image size (the reference chat blended over the padded square).
"""
from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..cli_errors import check_output_spares_inputs, same_file
from .chat import ChatAnswer

SEG_TAG = '[SEG]'
MASK_FILE = re.compile(r'mask_\d+\.png')
_TAGS = re.compile(r'(<p>|</p>|\[SEG\])')
ANSI_RESET = '\x1b[0m'


@dataclass(frozen=True)
class MaskColour:
    """A named overlay colour; ``ansi`` is the 24-bit terminal escape for the same RGB."""

    name: str
    rgb: tuple[int, int, int]

    @property
    def ansi(self) -> str:
        return '\x1b[1;38;2;{};{};{}m'.format(*self.rgb)


# The reference chat cycles 7 colours (spec §9.1); these are distinct and readable on dark and light
# terminals.
PALETTE = (MaskColour('red', (230, 25, 75)), MaskColour('green', (60, 180, 75)),
           MaskColour('blue', (67, 99, 216)),
           MaskColour('yellow', (255, 225, 25)), MaskColour('magenta', (240, 50, 230)),
           MaskColour('cyan', (66, 212, 244)), MaskColour('orange', (245, 130, 49)))


def mask_colour(index: int) -> MaskColour:
    """Colour of mask ``index`` (and of phrase ``index``)."""
    return PALETTE[index % len(PALETTE)]


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend mask ``i`` in :func:`mask_colour` ``(i)`` over an (H, W, 3) uint8 image; later masks on
    top."""
    out = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(mask_colour(i).rgb,
                                                                 dtype=np.float32)
    return out.clip(0, 255).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool mask → COCO RLE ``{"size": [H, W], "counts": str}`` (compressed, JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle`: an (H, W) bool mask."""
    return mask_utils.decode({'size': rle['size'],
                              'counts': rle['counts'].encode('ascii')}).astype(bool)


def printable(text: str) -> str:
    """Drop control characters other than newline and tab (a random model emits bells and
    escapes)."""
    return ''.join(c for c in text if c in '\n\t' or unicodedata.category(c) != 'Cc')


def render_answer(text: str, ansi: bool) -> str:
    """The answer for a terminal: tags removed, phrase ``i`` in colour ``i`` when ``ansi``, spaces
    tidied."""
    return _render(text, ansi, close=True).strip()


def _render(text: str, ansi: bool, close: bool) -> str:
    # Prefix-stable (a longer answer renders to a longer string), so a streamer can print the
    # difference.
    out, phrase, inside, last = [], 0, False, '\n'
    for piece in _TAGS.split(printable(text)):
        if piece == '<p>':
            inside = True
            out.append(mask_colour(phrase).ansi if ansi else '')
        elif piece == '</p>':
            if inside:
                spaced = bool(out) and out[-1].endswith(' ')  # the space goes after the colour
                if spaced:
                    out[-1] = out[-1].rstrip(' ')
                out.append((ANSI_RESET if ansi else '') + (' ' if spaced else ''))
                phrase += 1
            inside = False
        elif piece != SEG_TAG:
            piece = re.sub(r'[ \t]+', ' ', piece)
            if last in ' \n':
                piece = piece.lstrip(' \t')
            if piece:
                out.append(piece)
                last = piece[-1]
    if ansi and inside and close:
        out.append(ANSI_RESET)
    return ''.join(out)


def describe_masks(answer: ChatAnswer, ansi: bool = False) -> list[str]:
    """One line per mask: file, colour, the phrase it belongs to, area."""
    lines = []
    for i, mask in enumerate(answer.masks):
        colour = mask_colour(i)
        name = f'{colour.ansi}{colour.name}{ANSI_RESET}' if ansi else colour.name
        phrase = f' "{answer.phrases[i]}"' if i < len(answer.phrases) else ''
        lines.append(f'mask_{i}.png ({name}){phrase}: {100 * mask.mean():.1f}% of the image')
    return lines


def write_answer(out_dir: str | os.PathLike, answer: ChatAnswer, rgb: np.ndarray,
                 inputs: Sequence[str | os.PathLike] = (), **metadata: Any) -> dict[str, Any]:
    """Write ``overlay.png``, ``mask_{i}.png`` (i from 0, one per ``[SEG]``) and ``answer.json``
    into ``out_dir``.

    Nothing but these files is written or removed: an earlier answer's extra ``mask_*.png`` are
    deleted only when that answer's ``answer.json`` lists them, and never a file that is one of
    ``inputs``.

    Args:
        out_dir: created if needed.
        answer: from :meth:`OMGLLaVAChat.ask`; masks at the image size.
        rgb: the (H, W, 3) uint8 original image.
        inputs: files the question read (image, mask prompts): an output that would overwrite one of
            them (same path after symlinks, or a hard link) raises ``UsageError`` before anything is
            written.
        metadata: JSON-serialisable fields stored in ``answer.json`` too (image path, question,
            prompts, ...).

    Returns:
        ``{"overlay": path, "json": path, "masks": [path of mask_0.png, ...]}``.
    """
    out_dir = os.fspath(out_dir)
    H, W = rgb.shape[:2]
    for mask in answer.masks:
        if mask.shape != (H, W):
            raise ValueError(f'a mask of shape {mask.shape} does not fit the {W}x{H} image')
    overlay_path = os.path.join(out_dir, 'overlay.png')
    json_path = os.path.join(out_dir, 'answer.json')
    mask_paths = [os.path.join(out_dir, f'mask_{i}.png') for i in range(len(answer.masks))]
    for path in (overlay_path, json_path, *mask_paths):
        check_output_spares_inputs(path, inputs, '--out-dir: output')
    stale = [path for path in previous_mask_files(out_dir) if path not in mask_paths
             and not any(same_file(path, given) for given in inputs)]
    os.makedirs(out_dir, exist_ok=True)
    for path in stale:
        os.remove(path)
    Image.fromarray(overlay_masks(rgb, answer.masks)).save(overlay_path)
    for path, mask in zip(mask_paths, answer.masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    record = dict(metadata)
    record.update(text=answer.text, clean_text=answer.clean_text, phrases=answer.phrases,
                  image_size=[H, W], masks=[encode_rle(m) for m in answer.masks],
                  mask_files=[os.path.basename(p) for p in mask_paths],
                  mask_colours=[mask_colour(i).name for i in range(len(answer.masks))])
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    return {'overlay': overlay_path, 'json': json_path, 'masks': mask_paths}


def previous_mask_files(out_dir: str | os.PathLike) -> list[str]:
    """The ``mask_{i}.png`` files an earlier :func:`write_answer` wrote in ``out_dir``, as its
    ``answer.json`` lists them (existing files only; none without a readable ``answer.json``)."""
    try:
        with open(os.path.join(out_dir, 'answer.json'), encoding='utf-8') as f:
            names = json.load(f).get('mask_files', [])
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(names, list):
        return []
    return [os.path.join(out_dir, name) for name in names
            if isinstance(name, str) and MASK_FILE.fullmatch(name)
            and os.path.isfile(os.path.join(out_dir, name))]


class PhraseStreamer:
    """A transformers streamer (``put`` / ``end``) that prints the answer as it is generated,
    rendered like :func:`render_answer`: stop tokens and ``[SEG]`` dropped, phrases coloured when
    ``ansi``.

    ``generate`` first puts the prompt ids (none when it runs on embeddings, as OMG-LLaVA does);
    they are skipped. The whole answer is decoded at each step (SentencePiece pieces decode
    differently alone) and only the new characters are printed; an unfinished UTF-8 character waits
    for its next byte.

    Args:
        tokenizer: the chat's tokenizer.
        skip_token_ids: ids never shown (the stop tokens).
        ansi: colour the phrases.
        prefix: printed when generation starts (e.g. ``'answer: '``).
        stream: where to print (default ``sys.stdout``).
    """

    def __init__(self, tokenizer, skip_token_ids: Sequence[int] = (), ansi: bool = False,
                 prefix: str = '', stream=None) -> None:
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.skip_token_ids = set(skip_token_ids)
        self.ansi = ansi
        self.stream = stream
        self._ids: list[int] = []
        self._printed = ''
        self._prompt_pending = True

    def put(self, value) -> None:
        if self._prompt_pending:
            self._prompt_pending = False
            self._write(self.prefix)
            return
        ids = value.tolist()
        ids = ids[0] if ids and isinstance(ids[0], list) else ids
        self._ids += [i for i in ids if i not in self.skip_token_ids]
        text = self.tokenizer.decode(self._ids, skip_special_tokens=False)
        if not text.endswith('\ufffd'):  # an unfinished UTF-8 character waits for its next byte
            self._show(_render(text, self.ansi, close=False))

    def end(self) -> None:
        text = self.tokenizer.decode(self._ids, skip_special_tokens=False)
        self._show(_render(text, self.ansi, close=True).rstrip(' '), final=True)
        self._write('\n')
        self._ids, self._printed, self._prompt_pending = [], '', True

    def _show(self, rendered: str, final: bool = False) -> None:
        # trailing spaces wait for the next word: a closing </p> moves them after the colour
        if not final:
            rendered = rendered.rstrip(' ')
        # == len(printed) but for a changed decode
        common = len(os.path.commonprefix([self._printed, rendered]))
        self._write(rendered[common:])
        self._printed = rendered

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()
