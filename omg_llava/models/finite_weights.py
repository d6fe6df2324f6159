"""Which tensors of a weight file hold NaN or infinite values (a checkpoint written by a diverged
run, a corrupt download): a file full of NaN loads without any key or shape error and then answers
``<unk>`` tokens.

    bad = non_finite_keys(state_dict)
    if bad:
        raise CheckpointError(non_finite_message(bad, path))
"""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ['non_finite_keys', 'non_finite_message', 'CHUNK_ELEMENTS']

#: Elements checked at a time: the temporary mask stays small even for a 7B model's embedding.
CHUNK_ELEMENTS = 1 << 24


def _all_finite(tensor: torch.Tensor) -> bool:
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + CHUNK_ELEMENTS]).all())
               for i in range(0, flat.numel(), CHUNK_ELEMENTS))


def non_finite_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys, in file order, of floating-point tensors holding a NaN or an infinity (integer,
    boolean and meta tensors are skipped). Memory: ``CHUNK_ELEMENTS`` booleans at a time."""
    return [key for key, tensor in state_dict.items()
            if isinstance(tensor, torch.Tensor)
            and (tensor.is_floating_point() or tensor.is_complex())
            and not tensor.is_meta and not _all_finite(tensor)]


def non_finite_message(keys: list[str], source: str, limit: int = 5) -> str:
    """One line naming the file, how many tensors are not finite and the first ``limit`` of them,
    and the fix."""
    shown = ', '.join(keys[:limit]) + (f' and {len(keys) - limit} more' if len(keys) > limit
                                       else '')
    return (f'{source}: {len(keys)} tensor(s) hold NaN or infinite values ({shown}): the '
            'checkpoint comes from a run that diverged or the file is corrupt; use an earlier '
            'checkpoint or download it again')
