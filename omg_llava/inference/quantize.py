"""Int8 weight-only quantization of the LLM for CPU inference (``--quantize int8``).

Every ``nn.Linear`` of the LLM (attention, feed-forward, LM head; not the embedding) becomes an
:class:`Int8WeightOnlyLinear`: an int8 weight with one scale per output row (symmetric, ``max|w| /
127``), activations stay in the model dtype. Decoding (a few rows) runs torch's own fused kernel
``aten._weight_int8pack_mm``, which reads the int8 weight directly (half the bytes of bf16, so up to
twice the memory-bound decode speed); prefill (many rows) converts the int8 weight to the compute
dtype :data:`DEQUANTIZE_BLOCK_ROWS` output rows at a time (a block small enough to stay in cache),
multiplies with the ordinary matmul and scales the product's columns, which is faster there.

Why this route: it needs nothing beyond torch (the same kernel torchao's int8 weight-only layout
calls on CPU, without torchao's version coupling to torch), keeps bf16 activations
(``torch.ao.quantization.quantize_dynamic`` wants fp32 activations and quantizes them too), and
leaves the CUDA paths to bitsandbytes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import torch
from torch import Tensor, nn

from omg_llava.checkpoint import (CheckpointMismatchError, FilePages, copy_in_chunks, read_weights,
                                  unwrap_state_dict)
from omg_llava.models.lora import (ADAPTER, LORA_KEY, build_lora_config, lora_scaling,
                                   lora_target_paths, merge_lora_delta_)
from omg_llava.models.released_weights import PEFT_PREFIX
from omg_llava.utils.allocator import release_free_memory

from .memory import map_embedding_to_file_
from .safetensors_reader import iter_tensors
from .single_row_linear import is_plain_linear

#: Up to this many rows (batch x positions) the fused int8 kernel is used; above it, dequantize +
#: matmul. Per 14336x4096 weight on 2 cores (bf16): fused 12 / 48 / 65 / 126 ms for 1 / 16 / 31 / 64
#: rows, block-dequantized 97 / 102 ms for 31 / 64 rows (the whole weight dequantized at once:
#: 256-295 ms whatever the rows).
FUSED_MAX_ROWS = 32
#: Output rows of the int8 weight converted per block by the many-row path.
DEQUANTIZE_BLOCK_ROWS = 2048


class Int8WeightOnlyLinear(nn.Module):
    """``y = x @ (q * scale)^T + b`` with an int8 ``q`` (out, in) and per-row ``scale`` (out,) in
    the compute dtype."""

    def __init__(self, weight_int8: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight_int8.shape[1], weight_int8.shape[0]
        self.register_buffer('weight_int8', weight_int8)
        self.register_buffer('scales', scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rows_per_chunk: int = 1024) -> 'Int8WeightOnlyLinear':
        """Quantize ``linear`` (its weight dtype becomes the compute dtype), a chunk of rows at a
        time so no fp32 copy of a whole large weight (the LM head) is made."""
        return cls.from_weight(linear.weight.data,
                               None if linear.bias is None else linear.bias.data, rows_per_chunk)

    @classmethod
    def from_weight(cls, weight: Tensor, bias: Tensor | None = None,
                    rows_per_chunk: int = 1024) -> 'Int8WeightOnlyLinear':
        """Quantize an (out, in) ``weight`` (its dtype becomes the compute dtype) and an optional
        (out,) bias."""
        return cls.from_rows(lambda rows: weight[rows], tuple(weight.shape), weight.dtype, bias,
                             rows_per_chunk, weight.device)

    @classmethod
    def from_rows(cls, read_rows: Callable[[slice], Tensor], shape: tuple[int, int],
                  dtype: torch.dtype, bias: Tensor | None = None, rows_per_chunk: int = 1024,
                  device: torch.device | str = 'cpu') -> 'Int8WeightOnlyLinear':
        """Quantize an (out, in) weight that ``read_rows(slice)`` hands over ``rows_per_chunk`` rows
        at a time, each piece in ``dtype`` (the compute dtype): the whole float weight never exists.
        Rows are quantized independently (one scale each), so the result equals :meth:`from_weight`
        of the assembled weight."""
        q = torch.empty(shape, dtype=torch.int8, device=device)
        scales = torch.empty(shape[0], dtype=torch.float32, device=device)
        for start in range(0, shape[0], rows_per_chunk):
            span = slice(start, min(start + rows_per_chunk, shape[0]))
            rows = read_rows(span).float()  # (n, in)
            scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            q[span] = torch.round(rows / scale[:, None]).clamp(-128, 127).to(torch.int8)
            scales[span] = scale
        return cls(q, scales.to(dtype), bias)

    def dequantized(self) -> Tensor:
        """(out, in) weight in the compute dtype."""
        return self.weight_int8.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) → (..., out) in the compute dtype."""
        rows = x.numel() // self.in_features
        flat = x.to(self.scales.dtype).reshape(rows, self.in_features)
        if x.device.type == 'cpu' and rows <= FUSED_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.scales)
        else:
            out = self._block_dequantized_matmul(flat)
        out = out.view(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def _block_dequantized_matmul(self, flat: Tensor) -> Tensor:
        """(rows, in) @ (q * scale)ᵀ as (flat @ qᵀ) * scale, q converted
        :data:`DEQUANTIZE_BLOCK_ROWS` output rows at a time (no float copy of the whole weight)."""
        out = flat.new_empty(flat.shape[0], self.out_features)
        for start in range(0, self.out_features, DEQUANTIZE_BLOCK_ROWS):
            block = self.weight_int8[start:start + DEQUANTIZE_BLOCK_ROWS].to(flat.dtype)
            out[:, start:start + DEQUANTIZE_BLOCK_ROWS] = flat @ block.T
        return out.mul_(self.scales)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, int8 weight-only'


def quantize_llm_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model.llm`` by an :class:`Int8WeightOnlyLinear`, one at a
    time (each float weight is freed as soon as its int8 copy exists). Returns the number of layers
    replaced.

    Raises:
        ValueError: the LLM still holds LoRA adapters (build with the LoRA merged) or is not on the
            CPU.
    """
    llm = model.llm
    if hasattr(llm, 'peft_config'):
        raise ValueError('--quantize int8 needs the LoRA merged into the LLM; drop --keep-lora')
    device = next(llm.parameters()).device
    if device.type != 'cpu':
        raise ValueError(f'--quantize int8 is for CPU inference (the LLM is on {device}); on CUDA '
                         'use --quantization 8bit or 4bit (bitsandbytes)')
    names = [name for name, module in llm.named_modules() if is_plain_linear(module)]
    for name in names:
        parent_name, _, child = name.rpartition('.')
        parent = llm.get_submodule(parent_name) if parent_name else llm
        setattr(parent, child, Int8WeightOnlyLinear.from_linear(getattr(parent, child)))
    return len(names)


def llm_skeleton(llm_cfg: dict, dtype: torch.dtype) -> nn.Module:
    """The LLM of a ``from_pretrained`` config entry with its parameters on the meta device (no
    memory, no weights read; buffers such as rotary frequencies are real), for
    :func:`stream_llm_int8_`."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    remote = bool(llm_cfg.get('trust_remote_code', False))
    config = AutoConfig.from_pretrained(llm_cfg['pretrained_model_name_or_path'],
                                        trust_remote_code=remote)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, torch_dtype=dtype, trust_remote_code=remote)


def _finetune_llm_tensors(pth: str, weights_only: bool
                          ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """The LLM tensors of a released-format file (memory-mapped): ``(plain, pairs)``; ``plain`` by
    LLM-relative name (the vocabulary tensors), ``pairs[module path][A|B]`` the LoRA pairs of
    adapter ``default``."""
    state_dict = unwrap_state_dict(read_weights(pth, weights_only=weights_only, mmap=True), pth)
    plain, pairs = {}, {}
    for key, value in state_dict.items():
        name = (key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key[4:]
                if key.startswith('llm.') else None)
        if name is None:
            continue
        match = LORA_KEY.fullmatch(name)
        if match is None:
            plain[name.replace('.base_layer.', '.')] = value
        elif match['adapter'] == ADAPTER:
            pairs.setdefault(match['module'], {})[match['side']] = value
    return plain, pairs


def _shards(llm_dir: str) -> list[str]:
    index = os.path.join(llm_dir, 'model.safetensors.index.json')
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)['weight_map'].values()))
        return [os.path.join(llm_dir, name) for name in names]
    single = os.path.join(llm_dir, 'model.safetensors')
    if not os.path.exists(single):
        raise FileNotFoundError(f'{llm_dir}: no model.safetensors(.index.json); int8 streaming '
                                'reads safetensors shards (convert a .bin LLM with '
                                'save_pretrained(safe_serialization=True))')
    return [single]


def _converted(tensor: Tensor, dtype: torch.dtype, pages: FilePages) -> Tensor:
    """A new ``dtype`` copy of ``tensor``, filled 64 MB of rows at a time; the pages of a tensor
    mapped from the finetune file are dropped as each piece is copied (a (92544, 4096) fp32 table is
    never resident whole)."""
    copy = torch.empty(tensor.shape, dtype=dtype)
    copy_in_chunks(copy, tensor, pages.release)
    return copy


def stream_llm_int8_(llm: nn.Module, llm_dir: str, pth: str, lora: Any, *,
                     weights_only: bool = True) -> int:
    """Load an int8 weight-only LLM into ``llm`` (a :func:`llm_skeleton`, vocabulary already fitted)
    tensor by tensor: each base weight is read from the safetensors shards of ``llm_dir`` (or taken
    from ``pth`` where the finetune file holds its own, the vocabulary tensors), gets its LoRA pair
    from ``pth`` merged (:func:`~omg_llava.models.lora.merge_lora_delta_`), is quantized
    (:meth:`Int8WeightOnlyLinear.from_weight`) and freed, so the float LLM never exists whole. The
    result equals building the bf16 LLM with the LoRA merged and then :func:`quantize_llm_int8`.
    Returns the number of layers quantized.

    Raises:
        CheckpointMismatchError: a LoRA target without its pair, a shape that differs, or a tensor
            never loaded.
    """
    dtype = next(llm.parameters()).dtype
    plain, pairs = _finetune_llm_tensors(pth, weights_only)
    scale = 0.0
    if pairs:
        config = build_lora_config(lora, llm)
        missing = [p for p in lora_target_paths(llm, config) if set(pairs.get(p, {})) != {'A', 'B'}]
        if missing:
            raise CheckpointMismatchError(f'{pth}: LoRA pairs missing for {len(missing)} target '
                                          f'layers, e.g. {missing[:3]}; check the config\'s '
                                          'llm_lora')
        scale = lora_scaling(config)
    linears = {name for name, module in llm.named_modules() if is_plain_linear(module)}
    expected = dict(llm.named_parameters())
    done = set()
    pages = FilePages(pth)  # the finetune file's pages are dropped as its tensors are consumed

    def place(name: str, tensor: Tensor, source: str, owned: bool = False) -> None:
        """Put ``tensor`` (``owned``: a fresh read this function may modify) into the skeleton."""
        if name not in expected:
            return
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointMismatchError(f'{source}: {name} has shape {list(tensor.shape)}, the '
                                          f'model {list(expected[name].shape)}')
        path, _, attr = name.rpartition('.')
        parent_name, _, child = path.rpartition('.')
        module = llm.get_submodule(path)
        if path in linears and attr == 'weight':
            pair = pairs.get(path)

            def read_rows(rows: slice) -> Tensor:  # (n, in) in dtype, LoRA merged
                piece = (tensor[rows] if owned and tensor.dtype == dtype
                         else tensor[rows].to(dtype, copy=True))
                if not owned:
                    pages.release(tensor[rows])
                if pair is not None:
                    merge_lora_delta_(piece, pair['A'], pair['B'][rows], scale)
                return piece

            bias = (module.bias if module.bias is not None and module.bias.device.type != 'meta'
                    else None)
            quantized = Int8WeightOnlyLinear.from_rows(read_rows, tuple(tensor.shape), dtype,
                                                       None if bias is None else bias.data)
            if pair is not None:
                pages.release(pair['A'])
                pages.release(pair['B'])
            if module.bias is not None and bias is None:
                quantized.bias = module.bias  # still on meta: its tensor comes later
            setattr(llm.get_submodule(parent_name) if parent_name else llm, child, quantized)
        else:
            value = tensor if owned and tensor.dtype == dtype else _converted(tensor, dtype, pages)
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
            # out of memory before the LM head is quantized
            if module is llm.get_input_embeddings():
                map_embedding_to_file_(module)
        done.add(name)

    for shard in _shards(llm_dir):  # read tensor by tensor: no shard is ever mapped whole
        for key, tensor in iter_tensors(shard):
            if key not in plain:
                place(key, tensor, shard, owned=True)
            del tensor
            # freed work buffers (< 32 MB each) would otherwise pile up in the heap
            release_free_memory()
    # the vocabulary tensors, fp32 in the file: converted in row chunks
    for name, tensor in plain.items():
        place(name, tensor, pth)
        pages.release(tensor)
    left = sorted(set(expected) - done)
    if left:
        raise CheckpointMismatchError(f'{llm_dir} and {pth} do not hold {len(left)} LLM tensors, '
                                      f'e.g. {left[:5]}')
    return len(linears)
