"""Loading the released visual-encoder files into :class:`OMGSegVisualEncoder` (spec §3.6, §7.1).

* ``omg_seg_convl.pth``: mmengine checkpoint, 310 ``panoptic_head.*`` tensors under
  ``'state_dict'``.
* ``convnext_large_d_320_CocoPanopticOVDataset.pth``: a bare tensor (133, 17, 768) of class
  embeddings.
* the open_clip ConvNeXt-L file (``open_clip_pytorch_model.bin`` or ``.safetensors``) for the trunk.

Each goes through :mod:`omg_llava.checkpoint`, so a wrong, truncated or mis-shaped file raises an
error listing the offending keys.
"""
from __future__ import annotations

import os

import torch

from omg_llava.checkpoint import (CheckpointError, LoadReport, RenameRule, describe_checkpoint,
                                  load_into, read_weights, rename_keys, unwrap_state_dict)

# merged exports carry the OMG-LLaVA prefix
OMG_SEG_RENAMES = (RenameRule(r'visual_encoder\.', ''), )


def head_checkpoint_keys(encoder: torch.nn.Module) -> list[str]:
    """Encoder keys ``omg_seg_convl.pth`` provides: the head without the task-finetune ``_llm``
    copies."""
    return [k for k in encoder.state_dict() if k.startswith('panoptic_head.') and '_llm.' not in k]


def load_omg_seg_weights(encoder: torch.nn.Module, path: str | os.PathLike, *,
                         weights_only: bool = True) -> LoadReport:
    """Load ``omg_seg_convl.pth`` into the encoder's head (strict on the 310 head tensors)."""
    source = os.fspath(path)
    state_dict = unwrap_state_dict(read_weights(source, weights_only=weights_only), source)
    renamed, _ = rename_keys(state_dict, OMG_SEG_RENAMES)
    report = load_into(encoder, renamed, source=source, expected_keys=head_checkpoint_keys(encoder))
    if getattr(encoder.panoptic_head, 'with_llm_decoder_copy', False):
        encoder.panoptic_head.copy_decoder_for_llm()
    return report


def read_class_embeddings(path: str | os.PathLike) -> torch.Tensor:
    """Read the class-embedding file: a bare float tensor (classes, synonyms, clip_dim)."""
    source = os.fspath(path)
    obj = read_weights(source, weights_only=True)
    if not isinstance(obj, torch.Tensor):
        kind = (describe_checkpoint(obj.get('state_dict', obj)) if isinstance(obj, dict)
                else type(obj).__name__)
        raise CheckpointError(f'{source}: expected the class-embedding file (a bare tensor of '
                              f'shape [133, 17, 768]), but it holds {kind}. Pass '
                              'convnext_large_d_320_CocoPanopticOVDataset.pth here.')
    if obj.dim() != 3 or not obj.is_floating_point():
        raise CheckpointError(f'{source}: class embeddings must be a 3-D float tensor (classes, '
                              f'synonyms, clip_dim), got {obj.dtype} {list(obj.shape)}')
    return obj


def load_visual_encoder_weights(encoder: torch.nn.Module, *, omg_seg: str | None = None,
                                clip: str | None = None,
                                class_embed: str | None = None,
                                weights_only: bool = True) -> list[LoadReport]:
    """Load whichever of the three visual-encoder files are given; returns the reports of the dict
    files."""
    reports = []
    if omg_seg:
        reports.append(load_omg_seg_weights(encoder, omg_seg, weights_only=weights_only))
    if clip:
        from .backbones.convnext_clip import load_open_clip_weights
        reports.append(load_open_clip_weights(encoder.backbone, clip, weights_only=weights_only))
    if class_embed:
        try:
            encoder.panoptic_head.set_class_embeddings(read_class_embeddings(class_embed))
        except ValueError as exc:
            raise CheckpointError(f'{class_embed}: {exc}') from exc
    return reports
