"""Build a ready-to-run visual encoder from a config, loading whichever released files are
available."""
from __future__ import annotations

import os

import torch
from mmengine.config import Config

from omg_llava.models.omg_seg_encoder import OMGSegVisualEncoder
from omg_llava.models.omg_seg_trainer import random_class_embeddings
from omg_llava.models.weights import load_visual_encoder_weights
from omg_llava.registry import MODELS


def visual_encoder_config(config_path: str, cfg_options: dict | None = None) -> tuple[dict, Config]:
    """The visual-encoder part of a config (``model.visual_encoder`` or top-level
    ``visual_encoder``) and the whole config, with ``cfg_options`` (``--cfg-options`` style
    ``{'model.x.y': value}``) merged in first."""
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' in cfg and 'visual_encoder' in cfg.model:
        return cfg.model.visual_encoder, cfg
    if 'visual_encoder' in cfg:
        return cfg.visual_encoder, cfg
    raise KeyError(f'{config_path} defines neither model.visual_encoder nor visual_encoder')


def resolve_packaged_path(path: str) -> str:
    """``path`` itself if it exists (relative to the working directory), else the same relative path
    under the folder holding the ``omg_llava`` package if it exists there. Configs name the
    committed tiny weights as ``omg_llava/assets/...``, which this finds from any working directory,
    for a checkout or an installed package."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    packaged = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), path
    )
    return packaged if os.path.exists(packaged) else path


def resolve_encoder_weights(part_cfg: dict, config_path: str,
                            **overrides: str | None) -> dict[str, str]:
    """The encoder's weight files: the config's ``weights`` with non-empty ``overrides``
    (``omg_seg``, ``clip``, ``class_embed``) on top, relative config paths resolved by
    :func:`resolve_packaged_path`. A named file that is absent on disk is an error that lists it."""
    weights = {k: resolve_packaged_path(v) for k, v in (part_cfg.get('weights') or {}).items() if v}
    weights.update({k: v for k, v in overrides.items() if v})
    weights = {k: v for k, v in weights.items() if v}
    missing = {k: v for k, v in weights.items() if not os.path.isfile(v)}
    if missing:
        listing = '\n'.join(f'  {k}: {v}' for k, v in missing.items())
        raise FileNotFoundError(f'weight files named by {config_path} (or the command line) are '
                                f'missing:\n{listing}\n'
                                'Download them (docs/model_zoo.md) or pass other paths.')
    return weights


def load_encoder_weights_or_random(encoder: OMGSegVisualEncoder, weights: dict[str, str], *,
                                   seed: int = 0, weights_only: bool = True) -> list[str]:
    """Load the given encoder files; parts without a file keep their (seeded) random init, and
    missing class embeddings become random unit vectors. Returns one note per decision."""
    load_visual_encoder_weights(encoder, weights_only=weights_only, **weights)
    notes = [f'{k}: {v}' for k, v in weights.items()]
    head = encoder.panoptic_head
    if not weights.get('class_embed'):
        dim, classes_plus_one, synonyms = head.cls_embed.shape
        head.set_class_embeddings(random_class_embeddings(classes_plus_one - 1, synonyms, dim,
                                                          seed))
        notes.append('class embeddings: random (no class-embedding file)')
    if not weights.get('omg_seg') or not weights.get('clip'):
        notes.append(f'random weights (seed {seed}) for: ' + ', '.join(
            name for name, key in (('OMG-Seg head', 'omg_seg'), ('CLIP trunk', 'clip'))
            if not weights.get(key)))
    return notes


def build_visual_encoder(config_path: str, *, omg_seg: str | None = None, clip: str | None = None,
                         class_embed: str | None = None, device: str = 'cpu', seed: int = 0,
                         weights_only: bool = True) -> tuple[OMGSegVisualEncoder, list[str]]:
    """Build the config's encoder; explicit paths override the config's ``weights``.

    A file named in the config but absent on disk is an error (the message names it); a config
    without weights (the tiny ones) gives a seeded random model with random unit-norm class
    embeddings.

    Returns:
        ``(encoder, notes)``: the encoder in eval mode on ``device`` and what was loaded or
        randomised.
    """
    part_cfg, _ = visual_encoder_config(config_path)
    weights = resolve_encoder_weights(part_cfg, config_path, omg_seg=omg_seg, clip=clip,
                                      class_embed=class_embed)
    torch.manual_seed(seed)
    encoder: OMGSegVisualEncoder = MODELS.build(dict(part_cfg, weights=None))
    notes = load_encoder_weights_or_random(encoder, weights, seed=seed, weights_only=weights_only)
    return encoder.to(device).eval(), notes
