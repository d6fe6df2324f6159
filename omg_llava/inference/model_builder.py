"""Build a ready-to-run OMG-LLaVA from a config and the released files (what chat, test and export tools use)."""
from __future__ import annotations

import importlib.util

import torch
from mmengine.config import Config

from omg_llava.models.omg_llava import OMGLLaVA
from omg_llava.models.released_weights import load_released_checkpoint
from omg_llava.registry import build_component

from .encoder_builder import load_encoder_weights_or_random, resolve_encoder_weights, visual_encoder_config

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def build_model(config_path: str, *, pth: str | None = None, device: str = 'cpu', dtype: str = 'fp32',
                seed: int = 0, weights_only: bool = True, omg_seg: str | None = None, clip: str | None = None,
                class_embed: str | None = None, quantization: str | None = 'none') -> tuple[OMGLLaVA, Config, list[str]]:
    """Build ``model`` of a config, load the encoder files it names and the OMG-LLaVA ``pth``.

    Args:
        config_path: a config with ``model`` (e.g. configs/omg_llava_7b_finetune_8gpus.py).
        pth: a released-format checkpoint (pretrain, finetune or task finetune). Without one the projectors
            (and LoRA) keep their seeded random init; the config's ``pretrained_pth`` is not read.
        device: torch device.
        dtype: ``fp32`` / ``fp16`` / ``bf16`` for the LLM and projectors; the visual encoder stays fp32.
        seed: seed of every random init.
        weights_only: refuse pickled Python objects in weight files (``False`` only for trusted files).
        omg_seg / clip / class_embed: override the encoder files named by the config.
        quantization: ``'none'`` (default) drops the config's ``quantization_config``, so the LLM loads in
            ``dtype`` on any device; ``None`` builds the config's ``llm`` as written; ``'4bit'`` (NF4, double quant, as the reference) or ``'8bit'`` loads a
            ``from_pretrained`` LLM with bitsandbytes (CUDA only) and ``dtype`` as compute dtype.

    Returns:
        ``(model, config, notes)``: the model in eval mode, the parsed config, one note per weight decision.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    if quantization in ('4bit', '8bit'):
        _check_bitsandbytes(quantization, device)
    part_cfg, cfg = visual_encoder_config(config_path)
    if 'model' not in cfg:
        raise KeyError(f'{config_path} defines no `model`: use an OMG-LLaVA config (configs/*.py)')
    weights = resolve_encoder_weights(part_cfg, config_path, omg_seg=omg_seg, clip=clip, class_embed=class_embed)
    model_cfg = {k: v for k, v in cfg.model.items()}
    model_cfg.update(visual_encoder=dict(part_cfg, weights=None), pretrained_pth=None,
                     use_activation_checkpointing=False)
    if quantization is not None:
        model_cfg['llm'] = _quantized_llm_config(model_cfg['llm'], quantization, device, dtype, config_path)
    quantized = quantization in ('4bit', '8bit')
    torch.manual_seed(seed)
    model: OMGLLaVA = build_component(model_cfg)
    notes = load_encoder_weights_or_random(model.visual_encoder, weights, seed=seed, weights_only=weights_only)
    if pth:
        report = load_released_checkpoint(model, pth, weights_only=weights_only)
        notes.append(f'OMG-LLaVA weights: {pth} ({len(report.loaded)} tensors)')
    else:
        notes.append(f'OMG-LLaVA weights: none given, projectors{" and LoRA" if model.has_lora else ""} are random '
                     f'(seed {seed})')
    if quantized:  # bitsandbytes placed the LLM on its device and refuses to move or cast it
        for name, child in model.named_children():
            if name != 'llm':
                child.to(device)
        notes.append(f'LLM: {quantization} bitsandbytes quantization, compute dtype {dtype}')
    else:
        model.to(device)
    for part in (model.projector, model.projector_text2vision) + (() if quantized else (model.llm, )):
        part.to(DTYPES[dtype])
    return model.eval(), cfg, notes


def _check_bitsandbytes(quantization: str, device: str) -> None:
    if torch.device(device).type != 'cuda':
        raise ValueError(f'{quantization} loading needs a CUDA GPU (bitsandbytes), but the device is {device!r}; '
                         'on CPU load the LLM unquantized (fp32 or bf16)')
    if importlib.util.find_spec('bitsandbytes') is None:
        raise ImportError(f'{quantization} loading needs bitsandbytes: pip install bitsandbytes '
                          '(or install this package with the [gpu] extra)')


def _quantized_llm_config(llm_cfg: dict, quantization: str, device: str, dtype: str, config_path: str) -> dict:
    """The config's ``llm`` dict with its ``quantization_config`` dropped (``'none'``) or replaced."""
    llm_cfg = {k: v for k, v in llm_cfg.items() if k != 'quantization_config'}
    if quantization == 'none':
        return llm_cfg
    if quantization not in ('4bit', '8bit'):
        raise ValueError(f"quantization must be None, 'none', '4bit' or '8bit', got {quantization!r}")
    if getattr(llm_cfg.get('type'), '__name__', None) != 'from_pretrained':
        raise ValueError(f'{quantization} loading needs an LLM loaded with from_pretrained, but the llm of '
                         f'{config_path} is built from scratch (a tiny config?)')
    from transformers import BitsAndBytesConfig
    compute_dtype = DTYPES[dtype]
    llm_cfg.update(torch_dtype=compute_dtype, device_map={'': torch.device(device).index or 0},
                   quantization_config=BitsAndBytesConfig(
                       load_in_4bit=quantization == '4bit', load_in_8bit=quantization == '8bit',
                       llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
                       bnb_4bit_use_double_quant=True, bnb_4bit_quant_type='nf4'))
    return llm_cfg
