"""One loader for every weight file the project reads, with a strict key report.

Every released file goes through :func:`read_weights` (untrusted input: ``weights_only=True`` unless
the caller opts out) and :func:`load_into` (a declarative renaming table, then an exact comparison
of names and shapes). A mismatch raises :class:`CheckpointMismatchError` listing the missing,
unexpected and mis-shaped keys, together with a guess of which released file was given, so the user
can fix the path.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from omg_llava.cli_errors import UsageError, check_weight_file

__all__ = [
    'CheckpointError', 'CheckpointMismatchError', 'LoadReport', 'RenameRule', 'read_weights',
    'unwrap_state_dict', 'rename_keys', 'load_into', 'describe_checkpoint', 'FilePages'
]


class CheckpointError(RuntimeError):
    """A weight file cannot be read or does not have the expected format."""


class CheckpointMismatchError(CheckpointError):
    """A weight file was read but its keys or shapes do not fit the model."""


@dataclass(frozen=True)
class RenameRule:
    """Rename checkpoint keys matching ``pattern`` (a regex, anchored at the start) to
    ``replacement``."""

    pattern: str
    replacement: str

    def apply(self, key: str) -> str | None:
        new_key, count = re.subn('^' + self.pattern, self.replacement, key, count=1)
        return new_key if count else None


@dataclass
class LoadReport:
    """What :func:`load_into` did. ``ignored`` are file keys deliberately skipped (e.g. the text
    tower)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, limit: int = 20) -> str:
        """Human-readable report; each list is cut after ``limit`` entries with a count of the
        rest."""

        def block(title: str, rows: Sequence[str]) -> list[str]:
            if not rows:
                return []
            lines = [f'  {title} ({len(rows)}):']
            lines += [f'    {row}' for row in rows[:limit]]
            if len(rows) > limit:
                lines.append(f'    ... and {len(rows) - limit} more')
            return lines

        lines = [f'{self.source}: {len(self.loaded)} tensors loaded']
        lines += block('missing from the file', self.missing)
        lines += block('unexpected in the file', self.unexpected)
        lines += block('shape mismatch (file vs model)',
                       [f'{k}: {list(a)} vs {list(b)}' for k, a, b in self.mismatched])
        return '\n'.join(lines)


# Key signatures of the released files, used to tell the user which file they actually passed.
_KNOWN_LAYOUTS: tuple[tuple[str, str], ...] = (
    ('OMG-Seg checkpoint (omg_seg_convl.pth)', r'^panoptic_head\.'),
    ('OMG-LLaVA pretrain checkpoint (omg_llava_7b_pretrain_8gpus.pth)',
     r'^llm\.model\.tok_embeddings\.'),
    ('OMG-LLaVA finetune checkpoint (omg_llava_7b_finetune_8gpus.pth or a task finetune)',
     r'^llm\.base_model\.model\.'),
    ('open_clip CLIP checkpoint (open_clip_pytorch_model.bin / .safetensors)', r'^visual\.trunk\.'),
    ('InternLM2 HF weights (internlm2-chat-7b)', r'^model\.layers\.\d+\.attention\.wqkv\.'),
    ('merged OMG-LLaVA export', r'^visual_encoder\.'),
)


def describe_checkpoint(keys: Iterable[str]) -> str:
    """Guess which released file a key set comes from (for error messages)."""
    keys = list(keys)
    for name, pattern in _KNOWN_LAYOUTS:
        if any(re.match(pattern, k) for k in keys):
            return name
    return 'an unrecognised weight file'


def read_weights(path: str | os.PathLike, *, weights_only: bool = True,
                 mmap: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
    """Read a ``.pth`` / ``.bin`` / ``.pt`` (torch pickle) or ``.safetensors`` file on the CPU.

    Args:
        path: the file.
        weights_only: load through torch's restricted unpickler (default). Set ``False`` only for
            files you trust (e.g. full mmengine training checkpoints with optimizer state).
        mmap: map a torch zip file into memory instead of reading it (``torch.load(mmap=True)``):
            tensors are read from disk when first touched, so a large file costs no memory up front.
            Their resident pages can be dropped again after use with :class:`FilePages`. Legacy
            (non-zip) files are read as usual.

    Returns:
        The raw object: a ``dict`` of tensors (possibly wrapped, see :func:`unwrap_state_dict`) or,
        for the class-embedding file, a bare tensor.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or holds non-tensor objects.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f'weight file not found: {path!r}. Check the path (see '
                              'docs/model_zoo.md for where each released file goes).')
    # a directory, an empty file, an image, a text or HTML page: said as such (one implementation)
    try:
        check_weight_file(path, 'weight file')
    except UsageError as exc:
        raise CheckpointError(str(exc)) from None
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f'cannot read {path!r} as safetensors ({exc}). The file is '
                                  'truncated or corrupt: download it again.') from exc
    try:
        return torch.load(path, map_location='cpu', weights_only=weights_only,
                          mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if weights_only:
            raise CheckpointError(
                f'{path!r} holds Python objects other than tensors, which are refused by default '
                'because a checkpoint is untrusted input. If you trust this file (for example a '
                'full mmengine training checkpoint with optimizer state), load it with '
                'weights_only=False (CLI: --trust-checkpoint). Detail: '
                f'{str(exc).splitlines()[0]}') from exc
        raise CheckpointError(f'{path!r} is not a torch checkpoint ({exc}).') from exc
    except (EOFError, zipfile.BadZipFile, RuntimeError, ValueError) as exc:
        size = os.path.getsize(path)
        raise CheckpointError(f'cannot read {path!r} ({size} bytes): {str(exc).splitlines()[0]}. '
                              'The file is truncated or corrupt (an interrupted download?): '
                              'download it again.') from exc


#: Source bytes per step of :func:`load_into`'s copy (a memory-mapped file is then resident a chunk
#: at a time).
COPY_CHUNK_BYTES = 64 * 2 ** 20


class FilePages:
    """Drop the resident pages of tensors memory-mapped from ``path`` (:func:`read_weights` with
    ``mmap=True``).

    A mapped file's pages, once read, count in the process's resident memory until the mapping goes
    away; releasing each tensor's pages right after it was copied or merged keeps a large checkpoint
    from ever being resident as a whole. Only pages inside the file's own mappings are touched, and
    a later access reads them from the file again (for a shared mapping, from the page cache with
    any writes kept), so this is safe for any tensor that was not modified in place through a
    private mapping. Elsewhere (no ``/proc/self/maps``) it does nothing.
    """

    MADV_DONTNEED = 4

    def __init__(self, path: str | os.PathLike) -> None:
        self.ranges = (_mapped_ranges(os.path.realpath(path)) if sys.platform.startswith('linux')
                       else [])
        self._page = os.sysconf('SC_PAGE_SIZE') if self.ranges else 4096
        self._madvise = ctypes.CDLL(None, use_errno=True).madvise if self.ranges else None

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the resident pages of ``tensor`` (its storage, when not contiguous) that lie in the
        file's mappings."""
        if self._madvise is None or tensor.device.type != 'cpu':
            return
        if tensor.is_contiguous():
            start, end = (tensor.data_ptr(),
                          tensor.data_ptr() + tensor.numel() * tensor.element_size())
        else:
            storage = tensor.untyped_storage()
            start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        for lo, hi in self.ranges:
            first, last = max(start, lo) // self._page * self._page, min(end, hi)
            if first < last:
                self._madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first),
                              self.MADV_DONTNEED)


def _mapped_ranges(path: str) -> list[tuple[int, int]]:
    """Address ranges of the mappings of ``path`` in this process."""
    ranges = []
    try:
        with open('/proc/self/maps') as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip('\n') == path:
                    lo, hi = fields[0].split('-')
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


def unwrap_state_dict(obj: object, source: str = 'checkpoint') -> dict[str, torch.Tensor]:
    """Return the flat ``{name: tensor}`` dict of an mmengine ``{'state_dict': ...}`` wrapper or a
    flat dict."""
    if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'{source}: expected a dict of tensors, got {type(obj).__name__}. '
                              'Is this the class-embedding file given in place of a model '
                              'checkpoint?')
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f'{source}: entries that are not tensors: {not_tensors[:10]}. '
                              'Expected a flat state dict or an mmengine {"state_dict": ...} '
                              'checkpoint.')
    return dict(obj)


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Sequence[RenameRule],
                ignore: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply the first matching rule to each key; keys matching an ``ignore`` regex are dropped.

    With an empty ``rules`` list, keys are kept as they are. With rules, a key no rule matches is
    kept unchanged (so that it surfaces as *unexpected* in the report).

    Returns:
        ``(renamed, ignored_keys)``.
    """
    renamed, ignored = {}, []
    for key, value in state_dict.items():
        if any(re.match(p, key) for p in ignore):
            ignored.append(key)
            continue
        new_key = key
        for rule in rules:
            candidate = rule.apply(key)
            if candidate is not None:
                new_key = candidate
                break
        renamed[new_key] = value
    return renamed, ignored


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
              expected_keys: Iterable[str] | None = None, strict: bool = True,
              file_keys: Iterable[str] | None = None,
              after_copy: Callable[[torch.Tensor], None] | None = None) -> LoadReport:
    """Copy ``state_dict`` into ``module`` after checking names and shapes exactly.

    Args:
        module: the target; its ``state_dict()`` names are the reference.
        state_dict: already renamed to the module's names.
        source: a label for messages (usually the file path).
        expected_keys: the module keys this file must provide (default: all of them). Keys of the
            module outside this set are neither required nor reported.
        strict: raise :class:`CheckpointMismatchError` on any missing, unexpected or mis-shaped key.
        file_keys: every key of the file, for guessing which file it is in the error message
            (default: the keys of ``state_dict``; pass them when the caller has already set aside
            keys the model lacks).
        after_copy: called with each copied piece of a source tensor (large tensors are copied
            ``COPY_CHUNK_BYTES`` of rows at a time), e.g. :meth:`FilePages.release`.

    Returns:
        The report. Nothing is copied when ``strict`` and the report is not clean.

    Raises:
        CheckpointMismatchError: ``strict`` and a key is missing, unexpected or mis-shaped.
        CheckpointError: a copied tensor holds NaN or infinite values (all such keys are named).
    """
    # nn.Module.state_dict, not module.state_dict: OMGLLaVA narrows the latter to what checkpoints
    # hold.
    own = nn.Module.state_dict(module, keep_vars=True)
    expected = set(own) if expected_keys is None else set(expected_keys)
    report = LoadReport(source=source)
    report.missing = sorted(k for k in expected if k not in state_dict)
    report.unexpected = sorted(k for k in state_dict if k not in own)
    report.mismatched = sorted((k, tuple(v.shape), tuple(own[k].shape))
                               for k, v in state_dict.items()
                               if k in own and tuple(v.shape) != tuple(own[k].shape))
    if strict and not report.ok:
        hint = describe_checkpoint(state_dict if file_keys is None else file_keys)
        raise CheckpointMismatchError(
            f'the weights do not fit the model.\n{report.format()}\n'
            f'The file looks like: {hint}. Check that each --*-pth option points to the right file '
            '(docs/model_zoo.md lists what goes where) and that the config matches the checkpoint '
            'size.')
    from omg_llava.models.finite_weights import non_finite_keys, non_finite_message
    bad = {k for k, _, _ in report.mismatched}
    non_finite: list[str] = []
    with torch.no_grad():
        for key, value in state_dict.items():
            if key in own and key not in bad:
                target = own[key]
                if target.is_meta:
                    raise CheckpointError(f'{source}: cannot copy {key} into a meta-device model; '
                                          'build the model on a real device (cpu) before loading '
                                          'weights.')
                copy_in_chunks(target, value, after_copy)
                # the copy, in memory already (casts included)
                non_finite += non_finite_keys({key: target})
                report.loaded.append(key)
    if non_finite:
        raise CheckpointError(non_finite_message(non_finite, source))
    return report


def copy_in_chunks(target: torch.Tensor, value: torch.Tensor,
                    after_copy: Callable[[torch.Tensor], None] | None) -> None:
    """``target.copy_(value)`` (casting on the fly), ``COPY_CHUNK_BYTES`` of leading rows at a
    time."""
    row_bytes = value[0].numel() * value.element_size() if value.dim() and len(value) else 0
    if not row_bytes or value.numel() * value.element_size() <= COPY_CHUNK_BYTES:
        pieces = [(target, value)]
    else:
        step = max(1, COPY_CHUNK_BYTES // row_bytes)
        pieces = [(target[i:i + step], value[i:i + step]) for i in range(0, len(value), step)]
    for destination, source in pieces:
        destination.copy_(source)
        if after_copy is not None:
            after_copy(source)
