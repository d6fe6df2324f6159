"""Parameter names and shapes of a config's full-size model, built on the meta device (no memory, no files).

Used by ``tools/model_keys.py`` and the key-compatibility tests: the printed lists must equal the
manifests in ``shared/spec/keys/`` (what the released checkpoints hold).
"""
from __future__ import annotations

import torch
from torch import nn

from omg_llava.inference.encoder_builder import visual_encoder_config
from omg_llava.registry import MODELS

PARTS = ('visual_encoder', )  # 'pretrain' and 'finetune' come with the OMG-LLaVA model


def build_part_on_meta(config_path: str, part: str) -> nn.Module:
    """Build the module behind ``part`` of a config on the meta device."""
    if part not in PARTS:
        raise ValueError(f'unknown part {part!r}; choose from {", ".join(PARTS)}')
    part_cfg, _ = visual_encoder_config(config_path)
    with torch.device('meta'):
        return MODELS.build(part_cfg)


def part_key_shapes(config_path: str, part: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of what the checkpoint(s) of ``part`` hold, relative to that part.

    ``visual_encoder``: the encoder's persistent tensors: ``panoptic_head.*`` (the names inside
    ``omg_seg_convl.pth``) and ``backbone.*`` (the open_clip trunk under its OMG-LLaVA names).
    """
    module = build_part_on_meta(config_path, part)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def format_key_shapes(shapes: dict[str, tuple[int, ...]]) -> str:
    """``key<TAB>a,b,c`` lines, sorted by key (scalars have an empty shape)."""
    return '\n'.join(f'{k}\t{",".join(map(str, s))}' for k, s in sorted(shapes.items()))
