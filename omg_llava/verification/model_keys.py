"""Parameter names and shapes of a config's full-size model, built on the meta device (no memory, no
files).

Used by ``tools/model_keys.py`` and the key-compatibility tests: the printed lists must equal the
manifests in ``tests/data/keys/`` (what the released checkpoints hold).

Parts:
    ``visual_encoder``: the encoder's persistent tensors (``panoptic_head.*`` as in
    ``omg_seg_convl.pth``
        and ``backbone.*``, the open_clip trunk under its OMG-LLaVA names).
    ``pretrain``: what a pretrain checkpoint holds: the config's model without LoRA, saved keys.
    ``finetune``: what a finetune checkpoint holds: the config's model with its LoRA, saved keys
    (plus the
        ``_llm`` decoder copies for task configs).
    ``full``: every tensor of the config's model (no save filter).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from omg_llava.inference.encoder_builder import visual_encoder_config
from omg_llava.registry import MODELS, build_component

PARTS = ('visual_encoder', 'pretrain', 'finetune', 'full')


def _meta_llm(llm_cfg: dict) -> dict:
    """The config's LLM as a ``from_config`` build: the folder's ``config.json`` when it exists,
    else the InternLM2-chat-7B defaults (no weights, no quantisation). An LLM built from an inline
    ``config`` (the tiny configs) is built as written."""
    from transformers import AutoModelForCausalLM

    from omg_llava.models.llm import InternLM2Config
    path = llm_cfg.get('pretrained_model_name_or_path')
    if path is None and 'config' in llm_cfg:
        return dict(llm_cfg)
    if path and os.path.isfile(os.path.join(path, 'config.json')):
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(path)
    else:
        config = InternLM2Config()
    return dict(type=AutoModelForCausalLM.from_config, config=config)


def build_model_on_meta(config_path: str, part: str) -> nn.Module:
    """Build the module behind ``part`` of a config on the meta device."""
    if part not in PARTS:
        raise ValueError(f'unknown part {part!r}; choose from {", ".join(PARTS)}')
    part_cfg, cfg = visual_encoder_config(config_path)
    if part == 'visual_encoder':
        with torch.device('meta'):
            return MODELS.build(part_cfg)
    if 'model' not in cfg:
        raise KeyError(f'{config_path} defines no `model`; part {part!r} needs the OMG-LLaVA model '
                       'config')
    model_cfg = {k: v for k, v in cfg.model.items()}
    if part == 'finetune' and not model_cfg.get('llm_lora'):
        raise ValueError(f'{config_path} has no llm_lora: a finetune checkpoint holds LoRA '
                         'tensors. Use a finetune config, or --part pretrain')
    if part == 'pretrain':
        model_cfg.update(llm_lora=None, stage='pretrain')
    tokenizer_path = (model_cfg.get('tokenizer') or {}).get('pretrained_model_name_or_path')
    if not (tokenizer_path and os.path.isdir(tokenizer_path)):
        # ids follow the base vocabulary, as the real tokenizer assigns them
        model_cfg['tokenizer'] = None
    model_cfg.update(llm=_meta_llm(model_cfg['llm']), visual_encoder=dict(part_cfg, weights=None),
                     pretrained_pth=None, use_activation_checkpointing=False)
    with torch.device('meta'):
        return build_component(model_cfg)


def part_key_shapes(config_path: str, part: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of what the checkpoint(s) of ``part`` hold (see the module docstring)."""
    module = build_model_on_meta(config_path, part)
    state = nn.Module.state_dict(module) if part == 'full' else module.state_dict()
    return {k: tuple(v.shape) for k, v in state.items()}


def format_key_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """``key<TAB>a,b,c`` lines, sorted by key (scalars have an empty shape)."""
    return '\n'.join(f'{k}\t{",".join(map(str, s))}' for k, s in sorted(shapes.items()))
