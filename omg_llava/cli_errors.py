"""One error style for every tool: a bad input is answered with one ``error: …`` line on stderr and
exit status 2.

    from omg_llava.cli_errors import OneLineParser, UsageError, check_weight_file, one_line_errors

    @one_line_errors
    def main(argv: list[str] | None = None) -> int:
        args = OneLineParser(description=__doc__).parse_args(argv)
        check_weight_file(args.pth, '--pth')   # says what the file is when it is not a weight file
        ...
        raise UsageError('--max-new-tokens must be at least 1, got 0')

:func:`one_line_errors` turns the exceptions that mean "the input is wrong" (:class:`UsageError`,
the loaders' ``CheckpointError``, ``OSError``, ``ValueError``, ``ImportError``, ``KeyError``, PIL's
decompression-bomb error) into that line; anything else is a bug and keeps its traceback.
``OMG_LLAVA_TRACEBACK=1`` shows the traceback of input errors too. This module imports only the
standard library (``--help`` stays fast); torch is imported by :func:`check_device` when it runs.
"""
from __future__ import annotations

import argparse
import codecs
import functools
import os
import sys
from typing import Callable

__all__ = ['UsageError', 'OneLineParser', 'one_line_errors', 'error_message', 'is_input_error',
           'describe_file', 'add_precision_options', 'check_file', 'check_weight_file',
           'check_device', 'check_out_dir', 'same_file', 'check_output_spares_inputs',
           'check_new_out_dir', 'EXIT_USAGE', 'TRACEBACK_ENV']

EXIT_USAGE = 2
TRACEBACK_ENV = 'OMG_LLAVA_TRACEBACK'


class UsageError(Exception):
    """A bad command-line input: printed as one ``error:`` line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (not the whole usage block), exit status
    2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f'{self.prog}: error: {message} (see --help)\n')


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a bad input (file, argument, environment) rather than a bug."""
    kinds = [UsageError, OSError, ValueError, ImportError, KeyError]
    checkpoint = sys.modules.get('omg_llava.checkpoint')  # loaded by whoever could raise its errors
    if checkpoint is not None:
        kinds.append(checkpoint.CheckpointError)
    image = sys.modules.get('PIL.Image')
    if image is not None:
        kinds.append(image.DecompressionBombError)
    return isinstance(exc, tuple(kinds))


def error_message(exc: BaseException) -> str:
    """The text of ``exc`` for the ``error:`` line (a ``KeyError``'s without its quotes; never
    empty)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0],
                                                                                str) else str(exc)
    text = text.strip()
    return text or f'{type(exc).__name__} (no message)'


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a tool's ``main(argv=None) -> int``: an input error (:func:`is_input_error`) prints
    ``error: <message>`` on stderr and returns 2; other exceptions propagate with their
    traceback."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except Exception as exc:
            if not is_input_error(exc) or os.environ.get(TRACEBACK_ENV):
                raise
            print(f'error: {error_message(exc)}', file=sys.stderr, flush=True)
            return EXIT_USAGE

    return wrapper


# ------------------------------------------------------------------------------------- quantization
def add_precision_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The model-precision options chat, test and app share: ``--encoder-dtype`` and the mutually
    exclusive LLM quantizations ``--load-in-4bit`` / ``--load-in-8bit`` (bitsandbytes, CUDA) and
    ``--quantize int8`` (weight-only, CPU); read the latter back with :func:`quantization_of` and
    check them with :func:`check_quantization_device`."""
    parser.add_argument('--encoder-dtype', choices=('auto', 'fp32', 'fp16', 'bf16'),
                        default='auto',
                        help='visual encoder dtype: auto (default: bf16 when the model runs bf16 '
                             'on a CPU, else fp32), fp32 (as the reference) or bf16 (half its '
                             'memory; masks agree within rounding)')
    quant = parser.add_mutually_exclusive_group()
    quant.add_argument('--load-in-4bit', action='store_true',
                       help='NF4 LLM via bitsandbytes (CUDA only): the base the released LoRA was '
                            'trained on; without a quantization option the LLM is unquantized in '
                            '--dtype, whatever the config says')
    quant.add_argument('--load-in-8bit', action='store_true',
                       help='int8 LLM via bitsandbytes (CUDA only)')
    quant.add_argument('--quantize', choices=('int8', ),
                       help='int8 weight-only LLM on the CPU (about half the memory of bf16, '
                            'faster decoding)')


def quantization_of(args: argparse.Namespace) -> str:
    """``'4bit'``, ``'8bit'`` (bitsandbytes), ``'int8'`` (CPU weight-only) or ``'none'`` from the
    tools' mutually exclusive ``--load-in-4bit`` / ``--load-in-8bit`` / ``--quantize`` options."""
    if args.load_in_4bit:
        return '4bit'
    if args.load_in_8bit:
        return '8bit'
    return args.quantize or 'none'


def check_quantization_device(quantization: str, device: str) -> None:
    """Raise :class:`UsageError` when ``quantization`` (:func:`quantization_of`) cannot run on
    ``device`` (a device string such as ``cpu`` or ``cuda:1``): bitsandbytes needs CUDA, int8
    weight-only is for the CPU."""
    if quantization in ('4bit', '8bit') and not device.startswith('cuda'):
        raise UsageError(f'--load-in-{quantization} needs a CUDA GPU with bitsandbytes, but '
                         f'--device is {device}; '
                         'drop the flag to run the LLM unquantized in --dtype')
    if quantization == 'int8' and device != 'cpu':
        raise UsageError(f'--quantize int8 is for the CPU, but --device is {device}; add --device '
                         'cpu, or on a GPU use --load-in-8bit or --load-in-4bit')


# ----------------------------------------------------------------------------------- what a file is
_MAGIC = ((b'\x89PNG\r\n\x1a\n', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
          (b'GIF8', 'a GIF image'),
          (b'%PDF', 'a PDF document'), (b'\x1f\x8b', 'a gzip archive'),
          (b'RIFF', 'a RIFF file (WebP, WAV)'),
          (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'))
_WEIGHT_KINDS = ('a torch zip checkpoint', 'a torch pickle', 'a safetensors file')


#: what :func:`describe_file` calls a file that starts as a zip but lacks the directory at its end
TRUNCATED_ZIP = 'a truncated zip file (its directory at the end is missing)'


def describe_file(path: str | os.PathLike) -> str:
    """What ``path`` is, from its type and first bytes: ``'missing'``, ``'a directory'``, ``'an
    empty file (0 bytes)'``, ``'a PNG image'``, ``'an HTML page'``, ``'a text file'``, ``'a torch
    zip checkpoint'``, ``'a torch pickle'``, ``'a safetensors file'``, ... or ``'a binary
    file'``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return 'missing'
    if os.path.isdir(path):
        return 'a directory'
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(1024)
    except OSError as exc:
        return f'unreadable ({exc.strerror})'
    if size == 0:
        return 'an empty file (0 bytes)'
    if head.startswith(b'PK\x03\x04'):
        import zipfile
        # a zip's directory is at its end: a cut download starts right but has none
        return 'a torch zip checkpoint' if zipfile.is_zipfile(path) else TRUNCATED_ZIP
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return 'a torch pickle'
    if len(head) >= 10 and head[8:10] == b'{"' and int.from_bytes(head[:8], 'little') < size:
        return 'a safetensors file'
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if b'\x00' not in head:
        try:  # incremental: a character cut by the 1024-byte read is not an error
            text = codecs.getincrementaldecoder('utf-8')().decode(head, final=size <= len(head))
        except UnicodeDecodeError:
            return 'a binary file'
        if text.lstrip().lower().startswith(('<!doctype html', '<html')):
            return 'an HTML page'
        return 'a text file'
    return 'a binary file'


def check_file(path: str | os.PathLike, flag: str) -> None:
    """Raise :class:`UsageError` unless ``path`` is a non-empty file, saying what it is
    otherwise."""
    kind = describe_file(path)
    if kind == 'missing':
        raise UsageError(f'{flag} file not found: {path}')
    if kind == 'a directory':
        raise UsageError(f'{flag} {path} is a directory, not a file: give the file inside it')
    if kind == 'an empty file (0 bytes)':
        raise UsageError(f'{flag} {path} is an empty file (0 bytes): an interrupted download or '
                         'copy? Fetch it again')
    if kind.startswith('unreadable'):
        raise UsageError(f'{flag} {path} is {kind}: check its permissions')


def check_weight_file(path: str | os.PathLike, flag: str, allow_directory: bool = False) -> None:
    """Raise :class:`UsageError` unless ``path`` can be a weight file (torch zip or pickle,
    safetensors, or a binary file of unknown kind); the message says what it is instead (an image,
    an HTML page, a text file ...). ``allow_directory`` accepts a folder (a DeepSpeed
    checkpoint)."""
    if allow_directory and os.path.isdir(path):
        return
    check_file(path, flag)
    kind = describe_file(path)
    if kind in _WEIGHT_KINDS or kind == 'a binary file':
        return
    if kind == TRUNCATED_ZIP:
        raise UsageError(f'{flag} {path} is truncated or corrupt ({kind}: an interrupted download '
                         'or copy?): download or copy it again')
    hint = {'an HTML page': ' (a download that returned an error page?)',
            'a text file': ' (a config or a list given in place of the weights?)'}.get(kind, '')
    raise UsageError(f'{flag} {path} is {kind}{hint}, not a weight file: give the .pth / .bin / '
                     '.safetensors file')


def check_device(device: str, flag: str = '--device') -> str:
    """Raise :class:`UsageError` unless ``device`` is a torch device this machine has (checked
    before any model is built); returns it."""
    import torch
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f'{flag} {device!r} is not a torch device ({exc}); use cpu, cuda or '
                         'cuda:N') from exc
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{flag} {device}: torch sees no CUDA GPU here '
                             f'(torch.cuda.is_available() is False; torch {torch.__version__}); '
                             f'use {flag} cpu, or a CUDA build of torch on a GPU machine')
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise UsageError(f'{flag} {device}: this machine has {count} CUDA GPU(s) (cuda:0 to '
                             f'cuda:{count - 1})')
    elif parsed.type not in ('cpu', 'meta'):
        available = getattr(getattr(torch, parsed.type, None), 'is_available', None)
        if available is None or not available():
            raise UsageError(f'{flag} {device}: no {parsed.type} device is available here; use cpu '
                             'or cuda')
    return device


def check_out_dir(path: str | os.PathLike, flag: str = '--out-dir') -> str:
    """Raise :class:`UsageError` unless ``path`` is a folder, or can be created as one, that files
    can be written in (nothing is created here). Returns it."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f'{flag} {path} is a file, not a folder: give a folder path (it is '
                         'created if needed)')
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UsageError(f'{flag} {path} cannot be created: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f'{flag} {path}: {existing} is not writable; give a folder you can write '
                         'to')
    return path


# ----------------------------------------------------------------------------- outputs spare inputs
def _identity(path: str | os.PathLike):
    """What names one file: (device, inode) when it exists (hard links, symlinks), else the resolved
    path."""
    try:
        stat = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return stat.st_dev, stat.st_ino


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether writing ``a`` would write ``b``: the same path after symlinks and ``..`` are
    resolved, or the same inode (a hard link)."""
    return _identity(a) == _identity(b) or os.path.realpath(a) == os.path.realpath(b)


def check_output_spares_inputs(output: str | os.PathLike, inputs, flag: str) -> None:
    """Raise :class:`UsageError` when writing (or replacing) ``output`` would destroy one of
    ``inputs`` (paths; ``None`` entries are skipped), or when an input folder would be overwritten
    by an output inside it."""
    for given in inputs:
        if given is None:
            continue
        if same_file(output, given) or (
            os.path.isdir(given)
            and os.path.realpath(output).startswith(os.path.realpath(given) + os.sep)
        ):
            raise UsageError(f'{flag} {output} would overwrite the input {given}: write the output '
                             'somewhere else')


def check_new_out_dir(path: str | os.PathLike, flag: str, overwrite: bool) -> str:
    """:func:`check_out_dir`, and refuse a folder that already holds files unless ``overwrite``.
    Returns it."""
    path = check_out_dir(path, flag)
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise UsageError(f'{flag} {path} is not empty: give a new or empty folder, or add '
                         '--overwrite to replace its content')
    return path
