"""Int8 weight-only quantization of the LLM for CPU inference (``--quantize int8``).

Every ``nn.Linear`` of the LLM (attention, feed-forward, LM head; not the embedding) becomes an
:class:`Int8WeightOnlyLinear`: an int8 weight with one scale per output row (symmetric, ``max|w| / 127``), activations
stay in the model dtype. Decoding (a few rows) runs torch's own fused kernel ``aten._weight_int8pack_mm``, which
reads the int8 weight directly (half the bytes of bf16, so up to twice the memory-bound decode speed); prefill (many
rows) dequantizes one layer's weight at a time and uses the ordinary matmul, which is faster there.

Why this route: it needs nothing beyond torch (the same kernel torchao's int8 weight-only layout calls on CPU, without
torchao's version coupling to torch), keeps bf16 activations (``torch.ao.quantization.quantize_dynamic`` wants fp32
activations and quantizes them too), and leaves the CUDA paths to bitsandbytes.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

#: Up to this many rows (batch x positions) the fused int8 kernel is used; above it, dequantize + matmul.
FUSED_MAX_ROWS = 16


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale)^T + b`` with an int8 ``q`` (out, in) and per-row ``scale`` (out,) in the compute dtype."""

    def __init__(self, weight_int8: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape[1], weight_int8.shape[0]
        self.register_buffer('weight_int8', weight_int8)
        self.register_buffer('scales', scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows_per_chunk: int = 4096) -> 'Int8WeightOnlyLinear':
        """Quantize ``linear`` (its weight dtype becomes the compute dtype), a chunk of rows at a time so no fp32
        copy of a whole large weight (the LM head) is made."""
        weight = linear.weight.data
        q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
        for start in range(0, weight.shape[0], rows_per_chunk):
            rows = weight[start:start + rows_per_chunk].float()
            scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q[start:start + rows_per_chunk] = torch.round(rows / scale[:, None]).clamp(-128, 127).to(torch.int8)
            scales[start:start + rows_per_chunk] = scale
        bias = None if linear.bias is None else linear.bias.data
        return cls(q, scales.to(weight.dtype), bias)

    def dequantized(self) -> Tensor:
        """(out, in) weight in the compute dtype."""
        return self.weight_int8.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        x = x.to(self.scales.dtype)
        if x.device.type == 'cpu' and rows <= FUSED_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(rows, self.in_features), self.weight_int8,
                                                     self.scales).view(*x.shape[:-1], self.out_features)
        else:
            out = x @ self.dequantized().T
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, int8 weight-only'


def quantize_llm_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model.llm`` by an :class:`Int8WeightOnlyLinear`, one at a time (each
    float weight is freed as soon as its int8 copy exists). Returns the number of layers replaced.

    Raises:
        ValueError: the LLM still holds LoRA adapters (build with the LoRA merged) or is not on the CPU.
    """
    llm = model.llm
    if hasattr(llm, 'peft_config'):
        raise ValueError('--quantize int8 needs the LoRA merged into the LLM; drop --keep-lora')
    device = next(llm.parameters()).device
    if device.type != 'cpu':
        raise ValueError(f'--quantize int8 is for CPU inference (the LLM is on {device}); on CUDA use '
                         '--quantization 8bit or 4bit (bitsandbytes)')
    names = [name for name, module in llm.named_modules() if type(module) is nn.Linear]
    for name in names:
        parent_name, _, child = name.rpartition('.')
        parent = llm.get_submodule(parent_name) if parent_name else llm
        setattr(parent, child, Int8WeightOnlyLinear.from_linear(getattr(parent, child)))
    return len(names)
