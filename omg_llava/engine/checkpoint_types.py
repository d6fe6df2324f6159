"""Resume mmengine training checkpoints under torch's safe (``weights_only``) loader, trusting
nothing else.

Since torch 2.6 ``torch.load`` refuses every pickled Python object that is not on its allow-list,
and an mmengine checkpoint holds a few: the message hub's :class:`~mmengine.logging.HistoryBuffer`
logs (numpy arrays and scalars) whose ``statistics_methods`` pickle as ``getattr(HistoryBuffer,
'min')``. ``--resume`` then failed with "Weights only load failed … HistoryBuffer".
:func:`allow_mmengine_checkpoint_types` puts exactly these on the allow-list
(``torch.serialization.add_safe_globals``); ``getattr`` is replaced by
:func:`history_buffer_statistic`, which returns a statistics method of ``HistoryBuffer`` and refuses
anything else, so a checkpoint that smuggles another call still fails to load. It runs when
:mod:`omg_llava.engine` is imported, which every training config of this project does.

    from omg_llava.engine.checkpoint_types import mmengine_checkpoint_types
    with torch.serialization.safe_globals(mmengine_checkpoint_types()):
        state = torch.load('work_dirs/run/iter_500.pth', weights_only=True)
"""
from __future__ import annotations

import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

__all__ = ['mmengine_checkpoint_types', 'allow_mmengine_checkpoint_types',
           'history_buffer_statistic']

#: the statistics HistoryBuffer registers itself (``HistoryBuffer._set_default_statistics``)
DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def history_buffer_statistic(owner, name: str):
    """The ``getattr`` of an mmengine checkpoint's pickle, limited to what it uses: a statistics
    method of :class:`HistoryBuffer` (``min``, ``max``, ``current``, ``mean`` or one registered with
    ``HistoryBuffer.register_statistics``).

    Raises:
        pickle.UnpicklingError: any other object or attribute (the checkpoint is not an mmengine
            one).
    """
    allowed = set(DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if owner is not HistoryBuffer or not isinstance(name, str) or name not in allowed:
        raise pickle.UnpicklingError('refusing '
                                     f'getattr({getattr(owner, "__name__", type(owner).__name__)}, '
                                     f'{name!r}) in a checkpoint: only the statistics methods of '
                                     'mmengine\'s HistoryBuffer are allowed (load files you trust '
                                     'with weights_only=False)')
    return getattr(HistoryBuffer, name)


def _numpy_multiarray(name: str) -> list[tuple[object, str]]:
    """``numpy.core.multiarray.<name>`` under both spellings (numpy 1 writes ``numpy.core``, numpy 2
    ``numpy._core``), so that a checkpoint saved with either loads."""
    core = getattr(np, '_core', None) or np.core
    function = getattr(core.multiarray, name)
    return [(function, f'numpy.core.multiarray.{name}'),
            (function, f'numpy._core.multiarray.{name}')]


def mmengine_checkpoint_types() -> list:
    """The globals an mmengine checkpoint pickles beyond tensors and containers, for
    ``torch.serialization.add_safe_globals`` / ``safe_globals``: ``HistoryBuffer``, numpy
    ``ndarray`` / ``dtype`` and their reconstructors, and ``builtins.getattr`` as
    :func:`history_buffer_statistic`."""
    return [HistoryBuffer, np.ndarray, np.dtype, *_numpy_multiarray('_reconstruct'),
            *_numpy_multiarray('scalar'),
            *(type(np.dtype(kind)) for kind in ('float64', 'float32', 'int64', 'int32', 'bool')),
            (history_buffer_statistic, 'builtins.getattr')]


def allow_mmengine_checkpoint_types() -> None:
    """Add :func:`mmengine_checkpoint_types` to torch's safe globals (a no-op before torch 2.4,
    whose ``torch.load`` does not restrict globals by default)."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_types())
