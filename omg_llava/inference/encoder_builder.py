"""Build a ready-to-run visual encoder from a config, loading whichever released files are available."""
from __future__ import annotations

import os

import torch
from mmengine.config import Config

from omg_llava.models.omg_seg_encoder import OMGSegVisualEncoder
from omg_llava.models.weights import load_visual_encoder_weights
from omg_llava.registry import MODELS

from .segmentation import random_class_embeddings


def visual_encoder_config(config_path: str) -> tuple[dict, Config]:
    """The visual-encoder part of a config (``model.visual_encoder`` or top-level ``visual_encoder``) and the
    whole config."""
    cfg = Config.fromfile(config_path)
    if 'model' in cfg and 'visual_encoder' in cfg.model:
        return cfg.model.visual_encoder, cfg
    if 'visual_encoder' in cfg:
        return cfg.visual_encoder, cfg
    raise KeyError(f'{config_path} defines neither model.visual_encoder nor visual_encoder')


def build_visual_encoder(config_path: str, *, omg_seg: str | None = None, clip: str | None = None,
                         class_embed: str | None = None, device: str = 'cpu', seed: int = 0,
                         weights_only: bool = True) -> tuple[OMGSegVisualEncoder, list[str]]:
    """Build the config's encoder; explicit paths override the config's ``weights``.

    A file named in the config but absent on disk is an error (the message names it); a config without
    weights (the tiny ones) gives a seeded random model with random unit-norm class embeddings.

    Returns:
        ``(encoder, notes)``: the encoder in eval mode on ``device`` and what was loaded or randomised.
    """
    part_cfg, _ = visual_encoder_config(config_path)
    weights = dict(part_cfg.get('weights') or {})
    for key, value in (('omg_seg', omg_seg), ('clip', clip), ('class_embed', class_embed)):
        if value:
            weights[key] = value
    missing = {k: v for k, v in weights.items() if v and not os.path.isfile(v)}
    if missing:
        listing = '\n'.join(f'  {k}: {v}' for k, v in missing.items())
        raise FileNotFoundError(f'weight files named by {config_path} (or the command line) are missing:\n{listing}\n'
                                'Download them (docs/model_zoo.md) or pass other paths.')
    part_cfg = dict(part_cfg, weights=None)
    torch.manual_seed(seed)
    encoder: OMGSegVisualEncoder = MODELS.build(part_cfg)
    load_visual_encoder_weights(encoder, weights_only=weights_only, **{k: v for k, v in weights.items() if v})
    notes = [f'{k}: {v}' for k, v in weights.items() if v]
    head = encoder.panoptic_head
    if not weights.get('class_embed'):
        dim, classes_plus_one, synonyms = head.cls_embed.shape
        head.set_class_embeddings(random_class_embeddings(classes_plus_one - 1, synonyms, dim, seed))
        notes.append('class embeddings: random (no class-embedding file)')
    if not weights.get('omg_seg') or not weights.get('clip'):
        notes.append(f'random weights (seed {seed}) for: ' + ', '.join(
            name for name, key in (('OMG-Seg head', 'omg_seg'), ('CLIP trunk', 'clip')) if not weights.get(key)))
    return encoder.to(device).eval(), notes
