"""Decode-step linear layers as matrix-vector products on the CPU.

A decoded token multiplies every LLM weight by one row vector. On the CPU, torch's ``F.linear``
treats that (1, in) input as a matrix product and for bf16 reads the weight at about half the
machine's memory bandwidth; ``torch.mv`` on the same weight reads it at the full bandwidth
(measured on this project's 2-core test machine, Xeon with AVX-512 BF16: 9.6-12.3 against
21.5-22.4 GB/s for bf16, 21.2 against 25.6 GB/s for fp32; fp16 is the other way round, 12.4 against
7.1 GB/s, so fp16 keeps ``F.linear``). Decode is memory-bound, so this sets its speed
(docs/performance.md). Results are equal to ``F.linear``'s (same accumulation; tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Weight dtypes whose single-row product is faster through ``torch.mv`` on the CPU (module
#: docstring).
MATRIX_VECTOR_DTYPES = (torch.bfloat16, torch.float32)


class SingleRowLinear(nn.Linear):
    """``nn.Linear`` whose one-row inputs on the CPU go through ``torch.mv``.

    Same parameters and state-dict keys as ``nn.Linear``. An input of shape (..., in_features)
    holding a single row (the decode step: (1, 1, in_features)) in the weight's dtype, on the CPU,
    outside autocast and with a weight dtype in :data:`MATRIX_VECTOR_DTYPES`, gives
    ``weight @ row (+ bias)`` shaped (..., out_features); any other input goes to ``F.linear``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self._is_single_cpu_row(x):
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(self.in_features)
        out = (torch.mv(self.weight, row) if self.bias is None
               else torch.addmv(self.bias, self.weight, row))
        return out.reshape(*x.shape[:-1], self.out_features)

    def _is_single_cpu_row(self, x: Tensor) -> bool:
        return (x.device.type == 'cpu' and x.numel() == self.in_features
                and x.dtype == self.weight.dtype and x.dtype in MATRIX_VECTOR_DTYPES
                and not torch.is_autocast_enabled('cpu'))


def is_plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` or its :class:`SingleRowLinear` form (not a subclass
    with other weights, such as a bitsandbytes or LoRA layer)."""
    return type(module) in (nn.Linear, SingleRowLinear)


def use_matrix_vector_decode_(module: nn.Module) -> int:
    """Turn every plain ``nn.Linear`` under ``module`` into a :class:`SingleRowLinear` in place
    (class swap: no weight is copied or moved). Returns how many were turned."""
    turned = 0
    for layer in module.modules():
        if type(layer) is nn.Linear:
            layer.__class__ = SingleRowLinear
            turned += 1
    return turned
