"""Atomic file writes: a reader (or a resumed run) sees the old file or the whole new one, never
half of one.

A file is written under a temporary name in its destination folder, flushed to disk (``fsync``),
renamed over the destination (``os.replace``, atomic within one file system) and the folder entry is
synced too. A kill at any moment leaves the destination as it was; at worst a stray
``.<name>.<pid>.tmp`` file stays behind (:func:`remove_stale_temporaries` deletes those).

Used by the checkpoint hook (:class:`~omg_llava.engine.hooks.AtomicCheckpointHook`) and meant for
every tool that writes a weight file (converters, exporters): ``atomic_save(state_dict, path)``
instead of ``torch.save(state_dict, path)``, or ``with atomic_path(path) as tmp: writer(tmp)`` for
writers that take a path (``safetensors.torch.save_file``).
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
from typing import Any, Iterator

TEMPORARY_SUFFIX = '.tmp'


def temporary_path(path: str | os.PathLike, pid: int | None = None) -> str:
    """The temporary name ``path`` is written under: ``.<name>.<pid>.tmp`` in the same folder (so
    the final rename stays on one file system, and two writers never share a temporary).

    Args:
        path: the destination.
        pid: the writing process (default this one); processes writing one file together (the ranks
            of a DeepSpeed save) pass the pid of the one that publishes it.
    """
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid() if pid is None else pid}{TEMPORARY_SUFFIX}')


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) data to disk. Folders cannot be opened on every platform;
    there it is a no-op."""
    flags = os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temporary: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make a fully written ``temporary`` file the file at ``path``: sync it, rename it over
    ``path``, then sync the folder so the rename itself survives a power loss. A temporary folder (a
    DeepSpeed checkpoint) has every file in it synced; a folder already at ``path`` is renamed aside
    first and deleted after."""
    if not os.path.isdir(temporary):
        fsync_path(temporary)
        os.replace(temporary, path)
    else:
        for folder, _, files in os.walk(temporary):
            for name in files:
                fsync_path(os.path.join(folder, name))
            fsync_path(folder)
        aside = temporary_path(f'{path}.old') if os.path.isdir(path) else None
        if aside:
            os.replace(path, aside)
        os.replace(temporary, path)
        if aside:
            shutil.rmtree(aside, ignore_errors=True)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path to write ``path``'s content to; published at ``path`` when the block ends
    normally, deleted when it raises (``path`` is then untouched).

    Example::

        with atomic_path('model.safetensors') as tmp:
            safetensors.torch.save_file(tensors, tmp)
    """
    temporary = temporary_path(path)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb', **open_kwargs: Any) -> Iterator[Any]:
    """``open(path, mode)`` that publishes the file only once the block has written all of it.

    Args:
        path: destination file.
        mode: ``'wb'`` or ``'w'`` (text; pass ``encoding``).
        **open_kwargs: passed to :func:`open`.
    """
    if mode not in ('w', 'wb'):
        raise ValueError("atomic_write writes a whole file: mode must be 'w' or 'wb', got "
                         f"{mode!r}")
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as f:
        yield f
        f.flush()


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch
    with atomic_write(path) as f:
        torch.save(obj, f)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, atomically."""
    with atomic_write(path, 'w', encoding='utf-8') as f:
        f.write(text)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """A temporary sibling folder to write ``path``'s content into; renamed to ``path`` when the
    block ends normally, deleted when it raises (``path`` is then untouched). A reader sees no
    folder, the old one or the whole new one, never a half-written one.

    Args:
        path: destination folder; when it exists it must be empty unless ``overwrite``, which
            replaces it (its old content is moved aside and deleted only after the new folder is in
            place).
        overwrite: allow replacing a non-empty ``path``.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(f'{path} is not empty (pass overwrite=True to replace it)')
    temporary = temporary_path(path)
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporaries a killed writer left in ``folder`` (``.<name>.<pid>.tmp`` of a process
    that is no longer running); returns their paths."""
    removed = []
    for temporary in glob.glob(os.path.join(glob.escape(os.fspath(folder)),
                                            f'.*{TEMPORARY_SUFFIX}')):
        pid = temporary[:-len(TEMPORARY_SUFFIX)].rsplit('.', 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _is_running(int(pid)):
            if os.path.isdir(temporary):
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(temporary)
            removed.append(temporary)
    return removed


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ['atomic_path', 'atomic_folder', 'atomic_write', 'atomic_save', 'atomic_write_text',
           'publish', 'fsync_path', 'temporary_path', 'remove_stale_temporaries']
