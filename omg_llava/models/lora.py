"""LoRA on the LLM through peft, configured as the reference does (spec §5.3), and its lean merge.

The reference leaves ``target_modules`` unset and fills it with the last name component of every
``nn.Linear`` of the LLM (bitsandbytes 4-bit layers subclass it) except ``lm_head`` /
``output_layer``. For InternLM2 that is ``{wqkv, wo, w1, w2, w3, output}``: the LM head ``output``
gets an adapter too.

Training wraps the LLM as the reference does (:func:`wrap_llm_with_lora`). Inference either merges
the adapters into the base weights in place, one weight at a time (:func:`merge_lora_delta_`,
:func:`merge_lora_`), or keeps them in the LLM's own dtype (:func:`add_inference_lora`): peft's
k-bit preparation, which casts every parameter of an unquantised LLM to float32, is for training
only.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any

import torch
from torch import Tensor, nn

EXCLUDED_HEAD_NAMES = ('lm_head', 'output_layer')
ADAPTER = 'default'
#: ``<module path>.lora_<A|B>.<adapter>.weight`` (peft's parameter names).
LORA_KEY = re.compile(r'(?P<module>.+)\.lora_(?P<side>[AB])\.(?P<adapter>[^.]+)\.weight')
#: Rows of the base weight updated per step of :func:`merge_lora_delta_` (bounds its float32 work
#: tensor).
MERGE_CHUNK_ROWS = 1024


def linear_layer_names(model: nn.Module) -> list[str]:
    """Sorted last name components of every ``nn.Linear`` of ``model``, without the excluded head
    names."""
    names = {name.rsplit('.', 1)[-1]
             for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return sorted(names - set(EXCLUDED_HEAD_NAMES))


def build_lora_config(lora: Any, llm: nn.Module):
    """A ``peft.LoraConfig`` from a config dict (``dict(type=LoraConfig, r=512, ...)`` or plain
    kwargs) or an instance; ``target_modules=None`` becomes :func:`linear_layer_names` of
    ``llm``."""
    from peft import LoraConfig
    if isinstance(lora, dict):
        kwargs = {k: v for k, v in lora.items() if k != 'type'}
        lora = LoraConfig(**kwargs)
    if not isinstance(lora, LoraConfig):
        raise TypeError('llm_lora must be a peft.LoraConfig or a dict of its arguments, got '
                        f'{type(lora).__name__}')
    if lora.target_modules is None:
        lora.target_modules = linear_layer_names(llm)
    return lora


def lora_scaling(lora) -> float:
    """``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA) of a ``peft.LoraConfig``.

    Raises:
        ValueError: per-module ranks/alphas or DoRA, which a single scale cannot merge.
    """
    if lora.rank_pattern or lora.alpha_pattern or getattr(lora, 'use_dora', False):
        raise ValueError('per-module LoRA ranks/alphas and DoRA are not supported by the merge')
    return lora.lora_alpha / (lora.r ** 0.5 if lora.use_rslora else lora.r)


def lora_target_paths(llm: nn.Module, lora) -> list[str]:
    """Module paths (in ``llm``) of the ``nn.Linear`` layers a ``LoraConfig`` adapts."""
    targets = lora.target_modules
    if isinstance(targets, str):  # peft: a regex matched against the full module path
        return [n
                for n, m in llm.named_modules() if isinstance(m, nn.Linear)
                and re.fullmatch(targets, n)]
    return [n
            for n, m in llm.named_modules() if isinstance(m, nn.Linear)
            and n.rsplit('.', 1)[-1] in set(targets)]


def wrap_llm_with_lora(llm: nn.Module, lora: Any,
                       use_gradient_checkpointing: bool = True) -> nn.Module:
    """For training: prepare ``llm`` as peft does for k-bit training (freezes it, casts fp16/bf16
    parameters to fp32, enables checkpointing for quantised models) and wrap it with a LoRA adapter
    named ``default``."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    llm = prepare_model_for_kbit_training(llm,
                                          use_gradient_checkpointing=use_gradient_checkpointing)
    return get_peft_model(llm, build_lora_config(lora, llm))


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def add_inference_lora(llm: nn.Module, lora: Any) -> nn.Module:
    """For inference with the adapters kept: wrap ``llm`` with a LoRA adapter ``default`` created
    directly in the LLM's dtype (no k-bit preparation, no float32 upcast of the base or the
    adapters); frozen, eval mode."""
    from peft import get_peft_model
    config = build_lora_config(lora, llm)
    config.inference_mode = True
    dtype = next(llm.parameters()).dtype
    with _default_dtype(dtype if dtype.is_floating_point else torch.float32):
        wrapped = get_peft_model(llm, config, autocast_adapter_dtype=False)
    return wrapped.requires_grad_(False).eval()


@torch.no_grad()
def merge_lora_delta_(weight: Tensor, lora_A: Tensor, lora_B: Tensor, scale: float,
                      chunk_rows: int = MERGE_CHUNK_ROWS) -> Tensor:
    """``weight += scale · lora_B @ lora_A`` in place, ``chunk_rows`` rows at a time (float32
    arithmetic, one rounding to ``weight``'s dtype), so no second copy of the weight is ever made.

    Args:
        weight: (out, in) base weight, modified in place.
        lora_A: (r, in). lora_B: (out, r). Any float dtype and device (read only).
        scale: ``alpha / r``.

    Returns:
        ``weight``.
    """
    out_features, in_features = weight.shape
    if (lora_A.shape[1] != in_features or lora_B.shape[0] != out_features
            or lora_A.shape[0] != lora_B.shape[1]):
        raise ValueError(f'LoRA pair A {list(lora_A.shape)} / B {list(lora_B.shape)} does not fit '
                         f'a weight of shape {list(weight.shape)}')
    a = lora_A.to(device=weight.device, dtype=torch.float32)  # (r, in)
    # two (chunk, in) float32 buffers reused by every chunk: a fresh pair per chunk is a fresh
    # page-faulted mapping each time on the CPU (large blocks are mapped: utils.allocator)
    rows_per_chunk = min(chunk_rows, out_features)
    delta_buffer, base_buffer = (
        weight.new_empty((rows_per_chunk, in_features), dtype=torch.float32) for _ in range(2))
    for start in range(0, out_features, chunk_rows):
        rows = slice(start, start + chunk_rows)
        b = lora_B[rows].to(device=weight.device, dtype=torch.float32)  # (chunk, r)
        delta, base = delta_buffer[:len(b)], base_buffer[:len(b)]
        torch.matmul(b, a, out=delta)
        delta.mul_(scale).add_(base.copy_(weight[rows]))
        weight[rows].copy_(delta)  # one rounding to weight's dtype
    return weight


def merge_lora_(peft_llm: nn.Module) -> nn.Module:
    """Fold the adapter ``default`` of a peft LoRA model into its base weights in place, one layer
    at a time, each layer's adapters dropped as soon as it is merged. Returns the plain base model
    (the peft wrapper must not be used afterwards).

    Raises:
        ValueError: more than one adapter, or a configuration :func:`lora_scaling` refuses.
    """
    from peft.tuners.lora import LoraLayer
    configs = getattr(peft_llm, 'peft_config', {})
    if set(configs) != {ADAPTER}:
        raise ValueError(f'expected one LoRA adapter named "{ADAPTER}", found {sorted(configs)}')
    scale = lora_scaling(configs[ADAPTER])
    base = peft_llm.get_base_model()
    for path, module in list(base.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        layer = module.get_base_layer()
        merge_lora_delta_(layer.weight.data, module.lora_A[ADAPTER].weight,
                          module.lora_B[ADAPTER].weight, scale)
        parent_path, _, name = path.rpartition('.')
        setattr(base.get_submodule(parent_path) if parent_path else base, name, layer)
    # instance flags peft may have set on the base
    for attr in ('peft_config', '_hf_peft_config_loaded'):
        base.__dict__.pop(attr, None)
    return base
