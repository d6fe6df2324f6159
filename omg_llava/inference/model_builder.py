"""Build a ready-to-run OMG-LLaVA from a config and the released files (what chat, test and export tools use)."""
from __future__ import annotations

import torch
from mmengine.config import Config

from omg_llava.models.omg_llava import OMGLLaVA
from omg_llava.models.released_weights import load_released_checkpoint
from omg_llava.registry import build_component

from .encoder_builder import load_encoder_weights_or_random, resolve_encoder_weights, visual_encoder_config

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def build_model(config_path: str, *, pth: str | None = None, device: str = 'cpu', dtype: str = 'fp32',
                seed: int = 0, weights_only: bool = True, omg_seg: str | None = None, clip: str | None = None,
                class_embed: str | None = None) -> tuple[OMGLLaVA, Config, list[str]]:
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

    Returns:
        ``(model, config, notes)``: the model in eval mode, the parsed config, one note per weight decision.
    """
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    part_cfg, cfg = visual_encoder_config(config_path)
    if 'model' not in cfg:
        raise KeyError(f'{config_path} defines no `model`: use an OMG-LLaVA config (configs/*.py)')
    weights = resolve_encoder_weights(part_cfg, config_path, omg_seg=omg_seg, clip=clip, class_embed=class_embed)
    model_cfg = {k: v for k, v in cfg.model.items()}
    model_cfg.update(visual_encoder=dict(part_cfg, weights=None), pretrained_pth=None,
                     use_activation_checkpointing=False)
    torch.manual_seed(seed)
    model: OMGLLaVA = build_component(model_cfg)
    notes = load_encoder_weights_or_random(model.visual_encoder, weights, seed=seed, weights_only=weights_only)
    if pth:
        report = load_released_checkpoint(model, pth, weights_only=weights_only)
        notes.append(f'OMG-LLaVA weights: {pth} ({len(report.loaded)} tensors)')
    else:
        notes.append(f'OMG-LLaVA weights: none given, projectors{" and LoRA" if model.has_lora else ""} are random '
                     f'(seed {seed})')
    model.to(device)
    for part in (model.llm, model.projector, model.projector_text2vision):
        part.to(DTYPES[dtype])
    return model.eval(), cfg, notes
