"""LoRA on the LLM through peft, configured as the reference does (spec §5.3).

The reference leaves ``target_modules`` unset and fills it with the last name component of every
``nn.Linear`` of the LLM (bitsandbytes 4-bit layers subclass it) except ``lm_head`` / ``output_layer``.
For InternLM2 that is ``{wqkv, wo, w1, w2, w3, output}``: the LM head ``output`` gets an adapter too.
"""
from __future__ import annotations

from typing import Any

from torch import nn

EXCLUDED_HEAD_NAMES = ('lm_head', 'output_layer')


def linear_layer_names(model: nn.Module) -> list[str]:
    """Sorted last name components of every ``nn.Linear`` of ``model``, without the excluded head names."""
    names = {name.rsplit('.', 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return sorted(names - set(EXCLUDED_HEAD_NAMES))


def build_lora_config(lora: Any, llm: nn.Module):
    """A ``peft.LoraConfig`` from a config dict (``dict(type=LoraConfig, r=512, ...)`` or plain kwargs) or an
    instance; ``target_modules=None`` becomes :func:`linear_layer_names` of ``llm``."""
    from peft import LoraConfig
    if isinstance(lora, dict):
        kwargs = {k: v for k, v in lora.items() if k != 'type'}
        lora = LoraConfig(**kwargs)
    if not isinstance(lora, LoraConfig):
        raise TypeError(f'llm_lora must be a peft.LoraConfig or a dict of its arguments, got {type(lora).__name__}')
    if lora.target_modules is None:
        lora.target_modules = linear_layer_names(llm)
    return lora


def wrap_llm_with_lora(llm: nn.Module, lora: Any, use_gradient_checkpointing: bool = True) -> nn.Module:
    """Prepare ``llm`` as peft does for k-bit training (freezes it, casts fp16/bf16 parameters to fp32,
    enables checkpointing for quantised models) and wrap it with a LoRA adapter named ``default``."""
    from peft import get_peft_model, prepare_model_for_kbit_training
    llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=use_gradient_checkpointing)
    return get_peft_model(llm, build_lora_config(lora, llm))
