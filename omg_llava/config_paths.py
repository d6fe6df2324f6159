"""Find a config by path or by name, from any working directory, in a checkout or an installed
package.

    from omg_llava.config_paths import find_config

    find_config('configs/tiny/omg_llava_tiny_synthetic_finetune.py')  # from anywhere
    find_config('omg_llava_7b_finetune_8gpus')                         # by name
    find_config('tiny/omg_llava_tiny_finetune')                        # relative to configs/

The repository's ``configs/`` ships inside the installed package as ``omg_llava/.mim/configs``
(copied by ``setup.py`` at build time, the layout mmdet and mim use); in a checkout or an editable
install the repository's own ``configs/`` is used. A path that exists relative to the working
directory always wins, so a user's own config is never shadowed. Only the standard library is
imported (the tools call this before any heavy import).
"""
from __future__ import annotations

import argparse
import os

__all__ = ['find_config', 'config_argument', 'config_roots', 'builtin_configs', 'same_config']

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
#: the copy made by setup.py in a non-editable install
PACKAGED_CONFIGS = os.path.join(_PACKAGE_DIR, '.mim', 'configs')
#: the repository's own folder (checkout or editable install)
CHECKOUT_CONFIGS = os.path.join(os.path.dirname(_PACKAGE_DIR), 'configs')


def config_roots() -> list[str]:
    """The folders holding the built-in configs, in search order: the installed copy, then the
    checkout's."""
    roots = []
    for root in (PACKAGED_CONFIGS, CHECKOUT_CONFIGS):
        if (os.path.isdir(root)
                and os.path.isfile(os.path.join(root, 'tiny',
                                                'omg_llava_tiny_synthetic_finetune.py'))):
            roots.append(root)
    return roots


def builtin_configs() -> list[str]:
    """The names of the built-in configs relative to ``configs/``
    (``tiny/omg_llava_tiny_finetune.py``, ...), without the ``_base_`` fragments."""
    names = set()
    for root in config_roots():
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(('_', '.')))
            names.update(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, '/')
                         for f in files if f.endswith('.py') and not f.startswith('_'))
    return sorted(names)


def _relative_name(name: str) -> str:
    """``./configs/tiny/x`` -> ``tiny/x.py``: the name relative to ``configs/``, with the ``.py``
    suffix."""
    rel = name.replace('\\', '/')
    while rel.startswith('./'):
        rel = rel[2:]
    if rel.startswith('configs/'):
        rel = rel[len('configs/'):]
    return rel if rel.endswith('.py') else rel + '.py'


def find_config(name: str | os.PathLike, search_cwd: bool = True) -> str:
    """The config file ``name`` refers to.

    Args:
        name: a path that exists (relative to the working directory or absolute), or a built-in
            config named relative to the repository (``configs/tiny/x.py``), relative to
            ``configs/`` (``tiny/x.py``) or by its file name alone
            (``omg_llava_7b_finetune_8gpus``); the ``.py`` suffix is optional.
        search_cwd: ``False`` looks at the built-in configs only (the built-in default, whatever the
            working directory holds).

    Returns:
        The path itself when it exists, else the built-in config's absolute path.

    Raises:
        FileNotFoundError: neither a file nor a built-in config (the message lists the built-in
            names), or a bare file name matching several built-in configs.
    """
    name = os.fspath(name)
    if search_cwd and os.path.isfile(name):
        return name
    rel = _relative_name(name)
    for root in config_roots():
        candidate = os.path.join(root, *rel.split('/'))
        if os.path.isfile(candidate):
            return candidate
    if '/' not in rel:
        matches = [n for n in builtin_configs() if n.rsplit('/', 1)[-1] == rel]
        if len(matches) == 1:
            return find_config(matches[0], search_cwd=False)
        if len(matches) > 1:
            raise FileNotFoundError(f'config name {name!r} matches several built-in configs '
                                    f'({", ".join(matches)}): '
                                    'give one of these paths')
    if search_cwd and os.path.isdir(name):
        raise FileNotFoundError(f'config {name} is a directory: give a .py config file')
    known = builtin_configs()
    listing = (', '.join(n[:-3] for n in known) if known
               else 'none found (is the package installed completely?)')
    raise FileNotFoundError(f'config file not found: {name} (neither a file here nor a built-in '
                            f'config; built-in: {listing})')


def config_argument(name: str) -> str:
    """``argparse`` ``type=`` for a config argument: :func:`find_config`, its error as a one-line
    usage error."""
    try:
        return find_config(name)
    except FileNotFoundError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def same_config(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` name the same config file (either may be a built-in name); ``False``
    when either is not found."""
    try:
        return os.path.samefile(find_config(a), find_config(b))
    except (FileNotFoundError, OSError):
        return False
