"""Training checkpoint → released-format ``.pth`` (spec §7.2, the reference
``convert_deepspeed2pth.py``).

The input is what a training run wrote: a DeepSpeed ZeRO folder (xtuner's ``--deepspeed`` runs save
``work_dir/iter_N.pth/`` holding ``mp_rank_00_model_states.pt`` and one ``*_optim_states.pt`` per
rank; the fp32 master weights are consolidated with DeepSpeed's ``zero_to_fp32``), an mmengine
checkpoint file (``{'state_dict': ..., 'meta': ..., 'message_hub': ...}``) or an already flat state
dict.

The model is built from the config without any OMG-LLaVA weights; the checkpoint's tensors of the
released key set (the model's ``state_dict()``, i.e. the reference save filter of spec §5.3) are
copied in and that set is saved, cast to the dtypes of the built model. Every trainable tensor of
the set must be in the checkpoint. Frozen ones may be absent (xtuner saves with
``exclude_frozen_parameters=True``, so a pretrain folder lacks the frozen vocabulary tensors): they
keep the built model's values, as in the reference, and the summary lists them. Checkpoint tensors
outside the set (frozen LLM and encoder weights) are dropped.
"""
from __future__ import annotations

import glob
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from omg_llava.checkpoint import (CheckpointError, CheckpointMismatchError, describe_checkpoint,
                                  load_into, read_weights, unwrap_state_dict)
from omg_llava.inference.encoder_builder import visual_encoder_config
from omg_llava.registry import build_component
from omg_llava.utils.atomic import atomic_save

__all__ = ['ConversionSummary', 'read_training_checkpoint', 'build_model_for_conversion',
           'checkpoint_stage', 'released_state_dict', 'convert_checkpoint']

DEEPSPEED_FOLDER = 'DeepSpeed ZeRO folder'
MMENGINE_FILE = 'mmengine checkpoint'
FLAT_FILE = 'flat state dict'
_LLM_DECODER_COPY_MARKERS = ('.transformer_decoder_llm.', '.mask_embed_llm.')


@dataclass
class ConversionSummary:
    """What :func:`convert_checkpoint` wrote.

    Attributes:
        source / save_path: input checkpoint and output file.
        container: ``DeepSpeed ZeRO folder``, ``mmengine checkpoint`` or ``flat state dict``.
        stage: ``pretrain``, ``finetune (LoRA)`` or ``task finetune (LoRA + _llm decoder copies)``.
        saved: the keys written, in the model's order.
        kept_from_model: frozen saved tensors absent from the checkpoint (values of the built
            model).
        dropped: number of checkpoint tensors outside the released key set.
    """

    source: str
    save_path: str
    container: str
    stage: str
    saved: list[str] = field(default_factory=list)
    kept_from_model: list[str] = field(default_factory=list)
    dropped: int = 0

    def format(self) -> str:
        lines = [f'{self.source} ({self.container}) -> {self.save_path}',
                 f'  {len(self.saved)} tensors, {self.stage} checkpoint '
                 f'({len(self.saved) - len(self.kept_from_model)} from the checkpoint)']
        if self.kept_from_model:
            lines.append(f'  {len(self.kept_from_model)} frozen tensors absent from the checkpoint '
                         f'keep the freshly built values: {", ".join(self.kept_from_model)}')
        if self.dropped:
            lines.append(f'  {self.dropped} checkpoint tensors outside the released key set were '
                         'dropped (frozen parts that released checkpoints do not hold)')
        return '\n'.join(lines)


def _deepspeed_location(folder: str) -> tuple[str, str | None]:
    """``(checkpoint_dir, tag)`` for ``get_fp32_state_dict_from_zero_checkpoint``: a tag folder
    itself (what mmengine's DeepSpeed strategy writes, without a ``latest`` file) or a folder with a
    ``latest`` file."""
    if glob.glob(os.path.join(folder, '*_model_states.pt')):
        folder = os.path.normpath(os.path.abspath(folder))
        return os.path.dirname(folder), os.path.basename(folder)
    if os.path.isfile(os.path.join(folder, 'latest')):
        return folder, None
    raise CheckpointError(f'{folder!r} is a folder but not a DeepSpeed checkpoint: expected '
                          'mp_rank_00_model_states.pt and *_optim_states.pt in it (the iter_N.pth '
                          'folder of an xtuner --deepspeed run), or a `latest` file naming such a '
                          'folder.')


def read_training_checkpoint(path: str | os.PathLike, *,
                             trust_checkpoint: bool = False) -> tuple[dict[str, Tensor], str]:
    """Read a training checkpoint as a flat ``{name: tensor}`` dict on the CPU.

    Args:
        path: a DeepSpeed ZeRO folder, an mmengine checkpoint file or a flat state-dict file.
        trust_checkpoint: allow Python objects to be unpickled. DeepSpeed folders always need it
            (DeepSpeed pickles its config and optimizer bookkeeping), and so do mmengine checkpoints
            (message hub, scheduler states). Only for checkpoints your own training wrote:
            unpickling can run code.

    Returns:
        ``(state_dict, container)``; DeepSpeed weights are the consolidated fp32 master weights.

    Raises:
        CheckpointError: missing or unreadable input, or Python objects without
            ``trust_checkpoint``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        checkpoint_dir, tag = _deepspeed_location(path)
        if not trust_checkpoint:
            raise CheckpointError(
                f'{path!r} is a DeepSpeed checkpoint folder. DeepSpeed stores it with pickled '
                'Python objects (its config and optimizer bookkeeping), which can run code when '
                'loaded, so it is read only when you trust it: pass --trust-checkpoint '
                '(trust_checkpoint=True) for checkpoints your own training wrote.')
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        try:
            state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag)
        except (FileNotFoundError, ValueError) as exc:
            raise CheckpointError(f'cannot consolidate the DeepSpeed checkpoint {path!r}: {exc}. '
                                  'Is a rank\'s *_optim_states.pt missing (an interrupted '
                                  'save)?') from exc
        return dict(state), DEEPSPEED_FOLDER
    raw = read_weights(path, weights_only=not trust_checkpoint)
    container = MMENGINE_FILE if isinstance(raw, Mapping) and 'state_dict' in raw else FLAT_FILE
    return unwrap_state_dict(raw, path), container


def build_model_for_conversion(config_path: str, seed: int = 0,
                               cfg_options: dict | None = None) -> nn.Module:
    """The config's ``model`` (with ``cfg_options`` merged in) on the CPU without any OMG-LLaVA or
    visual-encoder weights (construction loads nothing; ``pretrained_pth`` and the encoder files are
    not read)."""
    part_cfg, cfg = visual_encoder_config(config_path, cfg_options)
    if 'model' not in cfg:
        raise KeyError(f'{config_path} defines no `model`: use the OMG-LLaVA config the checkpoint '
                       'was trained with')
    model_cfg = {k: v for k, v in cfg.model.items()}
    model_cfg.update(visual_encoder=dict(part_cfg, weights=None), pretrained_pth=None,
                     use_activation_checkpointing=False)
    torch.manual_seed(seed)
    return build_component(model_cfg)


def _file_kind(state: Mapping[str, Tensor]) -> str:
    """``a <stage> checkpoint`` for an OMG-LLaVA key set, else which released file the keys look
    like."""
    stage = checkpoint_stage(state)
    if stage != 'unrecognised':
        return f'a {stage} checkpoint'
    kind = describe_checkpoint(state)
    # e.g. the OMG-Seg checkpoint (omg_seg_convl.pth)
    return kind if kind.startswith('an ') else f'the {kind}'


def checkpoint_stage(keys) -> str:
    """Which kind of OMG-LLaVA checkpoint a key set belongs to (by key signature)."""
    keys = list(keys)
    if any(m in k for k in keys for m in _LLM_DECODER_COPY_MARKERS):
        return 'task finetune (LoRA + _llm decoder copies)'
    if any('.lora_' in k for k in keys):
        return 'finetune (LoRA)'
    if any(k.startswith(('projector.', 'projector_text2vision.', 'llm.model.')) for k in keys):
        return 'pretrain'
    return 'unrecognised'


def convert_checkpoint(config_path: str, checkpoint: str | os.PathLike,
                       save_path: str | os.PathLike, *,
                       trust_checkpoint: bool = False, seed: int = 0,
                       cfg_options: dict | None = None) -> ConversionSummary:
    """Convert a training checkpoint of ``config_path``'s model into a released-format ``.pth``.

    Args:
        config_path: the config the checkpoint was trained with.
        checkpoint: DeepSpeed ZeRO folder, mmengine checkpoint or flat state dict (see the module
            docstring).
        save_path: the output ``.pth`` (a flat dict with exactly the released key set).
        trust_checkpoint: see :func:`read_training_checkpoint`.
        seed: seed of the built model (the values of frozen tensors absent from the checkpoint).
        cfg_options: the ``--cfg-options`` the training ran with (e.g. another LLM folder), merged
            into the config.

    Raises:
        CheckpointError: the input cannot be read (see :func:`read_training_checkpoint`).
        CheckpointMismatchError: a trainable tensor of the released set is missing, or a shape
            differs.
    """
    source, save_path = os.fspath(checkpoint), os.fspath(save_path)
    state, container = read_training_checkpoint(source, trust_checkpoint=trust_checkpoint)
    model = build_model_for_conversion(config_path, seed, cfg_options)
    output, kept = released_state_dict(model, state, source=source)
    os.makedirs(os.path.dirname(os.path.abspath(save_path)), exist_ok=True)
    # a kill mid-write leaves the old file (or none), never half of one
    atomic_save(output, save_path)
    return ConversionSummary(source=source, save_path=save_path, container=container,
                             stage=checkpoint_stage(output), saved=list(output),
                             kept_from_model=kept, dropped=sum(k not in output for k in state))


def released_state_dict(model: nn.Module, state: Mapping[str, Tensor], *,
                        source: str = 'checkpoint') -> tuple['OrderedDict[str, Tensor]', list[str]]:
    """Copy the tensors of ``state`` that belong to the released key set into ``model`` and return
    that set.

    Returns:
        ``(model.state_dict(), kept)``: the released-format dict (model dtypes) and the frozen keys
        absent from ``state`` that kept the model's values.

    Raises:
        CheckpointMismatchError: a trainable key of the set is missing from ``state``, or a shape
            differs.
    """
    released = list(model.state_dict())
    params = dict(model.named_parameters())
    frozen = {k for k in released if k in params and not params[k].requires_grad}
    report = load_into(model, {k: state[k] for k in released if k in state}, source=source,
                       strict=False, expected_keys=[k for k in released if k not in frozen])
    if report.missing or report.mismatched:
        raise CheckpointMismatchError(
            f'{source} does not hold the tensors the model saves:\n{report.format()}\n'
            f'The checkpoint looks like {_file_kind(state)} ({len(state)} tensors) and the config '
            f'builds a {checkpoint_stage(released)} model: pass the config this checkpoint was '
            'trained with.')
    return model.state_dict(), [k for k in released if k in frozen and k not in state]
