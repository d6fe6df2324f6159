"""Loading the released OMG-LLaVA checkpoints into :class:`~omg_llava.models.OMGLLaVA` (spec §7).

The files are flat dicts under the model's own module paths (no renaming):

* ``omg_llava_7b_pretrain_8gpus.pth`` (17 tensors) fits the pretrain model (no LoRA). Given to a
  LoRA model (the finetune config's ``pretrained_pth``), its two vocabulary tensors have no
  counterpart under the peft names and are reported as *ignored* (the reference drops them silently,
  spec §7.3).
* ``omg_llava_7b_finetune_8gpus.pth`` (339 tensors the public code explains) fits the LoRA model.
  The published file is said to hold 110 more keys that no public code path produces: keys that
  exist in the model are loaded and listed; keys that do not are listed by name as *unexpected* and
  skipped, with a warning — never silently.
* A model that trains its whole LLM (``freeze_llm=False``, the tiny synthetic finetune) needs every
  LLM tensor, except from a pretrain-stage file, which holds no LLM layers: the LLM then keeps the
  weights it was built from.
* ``finetuned_refseg.pth`` / ``finetuned_gcg.pth`` add the 170 ``_llm`` decoder-copy tensors and
  need a model built with ``with_llm_decoder_copy=True`` (the task configs). A task model given the
  general finetune file (its ``pretrained_pth``) keeps the copies initialised from the OMG-Seg
  decoder.

Files are memory-mapped, never read whole: each tensor is copied (or merged) into the model and its
pages are dropped right after (:class:`~omg_llava.checkpoint.FilePages`), so the 8.4 GB finetune
file adds no more than a tensor's worth of memory. For inference the LoRA pairs of a finetune file
can be merged straight into a plain
LLM (``lora=``): the adapters are never built, and every pair is still checked like any other key.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mmengine.logging import print_log
from torch import Tensor, nn

from omg_llava.checkpoint import (CheckpointMismatchError, FilePages, LoadReport, copy_in_chunks,
                                  describe_checkpoint, load_into, read_weights, unwrap_state_dict)
from omg_llava.utils.allocator import release_free_memory

from .lora import (ADAPTER, LORA_KEY, build_lora_config, lora_scaling, lora_target_paths,
                   merge_lora_delta_)
from .save_filter import is_saved_key

PRETRAIN_VOCAB_KEYS = ('llm.model.tok_embeddings.weight', 'llm.output.weight')
LLM_DECODER_COPY_MARKERS = ('.transformer_decoder_llm.', '.mask_embed_llm.')
PEFT_PREFIX = 'llm.base_model.model.'


def load_released_checkpoint(model: nn.Module, path: str | os.PathLike, *,
                             weights_only: bool = True,
                             lora: Any = None, skip_llm: bool = False,
                             before_merge: Callable[[], None] | None = None) -> LoadReport:
    """Load a released-format OMG-LLaVA ``.pth`` into ``model`` (see the module docstring for the
    rules).

    Args:
        model: the model; its LLM is either wrapped with LoRA (the file's names fit as they are) or
            plain.
        path: the file (memory-mapped; pages are dropped as tensors are consumed).
        weights_only: refuse pickled Python objects.
        lora: for a plain LLM built from a LoRA config (inference, adapters merged): that LoRA
            config. The file's LoRA pairs are then folded into the base weights in place
            (:func:`merge_released_lora_`) and its finetune-layout names
            (``llm.base_model.model.…``) are read as the plain ones.
        skip_llm: leave the file's LLM tensors alone (the caller loaded them, e.g. the int8
            streaming build).
        before_merge: with ``lora``, called once every other tensor is in and before the LoRA
            pairs are merged (e.g. to move the finished input embedding out of memory before the
            merge makes the LLM resident).

    Raises:
        CheckpointMismatchError: a tensor the model saves is missing from the file, a shape differs,
            or the file carries ``_llm`` decoder copies the model was built without. The message
            lists the keys and names the file the keys look like.
    """
    source = os.fspath(path)
    state_dict = unwrap_state_dict(read_weights(source, weights_only=weights_only, mmap=True),
                                   source)
    pages = FilePages(source)
    if skip_llm:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('llm.')}
    merged, steps = [], []
    if lora is not None:
        state_dict, merged, steps = plan_released_lora(model.llm, state_dict, lora, source=source)
    own = nn.Module.state_dict(model, keep_vars=True)
    with_copy = model.visual_encoder.panoptic_head.with_llm_decoder_copy
    with_full_llm = not getattr(model, 'freeze_llm', True)
    merged_bases = {'llm.' + k[len(PEFT_PREFIX):].replace('.base_layer.', '.')
                    for k in merged if '.lora_' not in k}
    required = [k
                for k in own if is_saved_key(k, with_copy, with_full_llm) and k not in merged_bases
                and not (skip_llm and k.startswith('llm.'))]
    ignored = []
    lora_model = getattr(model, 'has_lora', False) or (lora is not None and not merged)
    if lora_model and any(k in state_dict for k in PRETRAIN_VOCAB_KEYS):
        ignored = [k for k in PRETRAIN_VOCAB_KEYS if k in state_dict]
        state_dict = {k: v for k, v in state_dict.items() if k not in ignored}
        required = [k for k in required if k.startswith(('projector.', 'projector_text2vision.'))]
    llm_only_vocab = not any(k.startswith('llm.') and k not in PRETRAIN_VOCAB_KEYS
                             for k in state_dict)
    if with_full_llm and llm_only_vocab:
        # A pretrain-stage file (LLM frozen, so not saved) given to a model that trains its whole
        # LLM (the tiny synthetic finetune): the LLM keeps the weights it was built from
        #     (``llm.pretrained_model_name_or_path``).
        required = [k for k in required if not k.startswith('llm.') or k in state_dict]
        print_log(f'{source}: no LLM layers in the file (a pretrain-stage file); the LLM keeps the '
                  'weights it was built from', logger='current')
    if with_copy and not any(any(m in k for m in LLM_DECODER_COPY_MARKERS) for k in state_dict):
        # A task finetune starting from the general finetune file: the copies keep their
        # initialisation from the OMG-Seg decoder (spec §3.7).
        required = [k for k in required if not any(m in k for m in LLM_DECODER_COPY_MARKERS)]
        print_log(f'{source}: no `_llm` decoder copies in the file; they keep the OMG-Seg decoder '
                  'weights',
                  logger='current')
    copies = [k
              for k in state_dict if k not in own and any(m in k for m in LLM_DECODER_COPY_MARKERS)]
    if copies:
        raise CheckpointMismatchError(
            f'{source} holds {len(copies)} `_llm` decoder-copy tensors (e.g. {copies[0]}): it is a '
            'task finetune (finetuned_refseg.pth / finetuned_gcg.pth). Build the model from a task '
            'config (configs/specific_tasks_finetune/*, panoptic_head with_llm_decoder_copy=True).')
    unknown = sorted(k for k in state_dict if k not in own)
    known = {k: v for k, v in state_dict.items() if k in own}
    report = load_into(model, known, source=source, expected_keys=required, file_keys=state_dict,
                       after_copy=pages.release)
    if steps:
        if before_merge is not None:
            before_merge()
        apply_lora_merges_(steps, pages.release)
    report.loaded = merged + report.loaded
    report.ignored = ignored
    report.unexpected = unknown
    if ignored:
        print_log(f'{source}: {len(ignored)} pretrain vocabulary tensors ignored '
                  f'({", ".join(ignored)}): the LoRA '
                  'model starts from its own resized vocabulary, as the reference does.',
                  logger='current')
    beyond_filter = [k for k in known if not is_saved_key(k, with_copy, with_full_llm)]
    if beyond_filter:
        print_log(f'{source}: {len(beyond_filter)} tensors beyond the reference save filter were '
                  f'loaded, e.g. {beyond_filter[:3]}', logger='current', level=30)
    if unknown:
        print_log(f'{source}: {len(unknown)} tensors have no place in this model and were skipped: '
                  f'{unknown[:20]}{" ..." if len(unknown) > 20 else ""} (file looks like: '
                  f'{describe_checkpoint(state_dict)})',
                  logger='current', level=30)
    return report


def merge_released_lora_(llm: nn.Module, state_dict: Mapping[str, Tensor], lora: Any, *,
                         source: str,
                         after_merge=None) -> tuple[dict[str, Tensor], list[str]]:
    """Fold the LoRA pairs of a finetune-layout state dict into a plain ``llm`` in place, one weight
    at a time: :func:`plan_released_lora` then :func:`apply_lora_merges_`.

    Returns:
        ``(rest, merged_keys)``: the remaining tensors under plain names, and the file keys merged.
    """
    rest, merged, steps = plan_released_lora(llm, state_dict, lora, source=source)
    apply_lora_merges_(steps, after_merge)
    return rest, merged


def plan_released_lora(llm: nn.Module, state_dict: Mapping[str, Tensor], lora: Any, *,
                       source: str) -> tuple[dict[str, Tensor], list[str], list['LoraMergeStep']]:
    """Check and plan the merge of the LoRA pairs of a finetune-layout state dict into a plain
    ``llm`` (nothing is modified yet).

    Every ``nn.Linear`` the LoRA config targets must have its ``lora_A`` / ``lora_B`` pair (adapter
    ``default``) with the config's rank; each is to be merged as ``W += (alpha / r) · B @ A`` by
    :func:`~omg_llava.models.lora.merge_lora_delta_`; a base weight the file holds too (the LM head
    ``output.base_layer.weight``) is copied in first. The other ``llm.base_model.model.X`` keys are
    renamed to the plain ``llm.X`` (``.base_layer`` dropped). A file without any finetune-layout
    key (a pretrain-stage file) is returned unchanged with no step: the LoRA stays a no-op, as an
    untrained adapter is.

    Args:
        llm: the plain LLM (``model.llm``).
        state_dict: the file's tensors.
        lora: the model config's ``llm_lora`` (a ``LoraConfig`` or its arguments).
        source: the file, for messages.

    Returns:
        ``(rest, merged_keys, steps)``: the remaining tensors under plain names, the file keys the
        steps consume, and the steps for :func:`apply_lora_merges_`.

    Raises:
        CheckpointMismatchError: a targeted layer without its pair, a pair of another rank or shape,
            or LoRA tensors of another adapter; the message lists them.
    """
    if not any(k.startswith(PEFT_PREFIX) for k in state_dict):
        return dict(state_dict), [], []
    config = build_lora_config(lora, llm)
    rest, pairs, file_keys = {}, {}, {}
    for key, value in state_dict.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else None
        match = LORA_KEY.fullmatch(name) if name is not None else None
        if match and match['adapter'] == ADAPTER:
            pairs.setdefault(match['module'], {})[match['side']] = (key, value)
        elif name is not None and match is None:
            plain = 'llm.' + name.replace('.base_layer.', '.')
            rest[plain], file_keys[plain] = value, key
        else:
            # another adapter or outside the LLM: reported as unexpected by the caller
            rest[key] = value
    modules = dict(llm.named_modules())
    targets = lora_target_paths(llm, config)
    missing = [f'{PEFT_PREFIX}{path}.lora_{side}.{ADAPTER}.weight' for path in targets
               for side in 'AB' if side not in pairs.get(path, {})]
    mismatched = []
    for path in targets:
        if set(pairs.get(path, {})) != {'A', 'B'}:
            continue
        (key_a, a), (key_b, b) = pairs[path]['A'], pairs[path]['B']
        out_features, in_features = modules[path].weight.shape
        if tuple(a.shape) != (config.r, in_features):
            mismatched.append(f'{key_a}: {list(a.shape)} vs {[config.r, in_features]}')
        if tuple(b.shape) != (out_features, config.r):
            mismatched.append(f'{key_b}: {list(b.shape)} vs {[out_features, config.r]}')
    if missing or mismatched:
        lines = [f'{source}: the LoRA pairs do not fit the model (rank {config.r}, targets '
                 f'{sorted(set(p.rsplit(".", 1)[-1] for p in targets))}).']
        for title, rows in (('missing from the file', missing),
                            ('shape mismatch (file vs model)', mismatched)):
            if rows:
                lines += [f'  {title} ({len(rows)}):'] + [f'    {r}' for r in rows[:20]]
        lines.append('Check that the config (its llm_lora r / alpha) is the one the checkpoint was '
                     'trained with.')
        raise CheckpointMismatchError('\n'.join(lines))
    for path, pair in pairs.items():  # pairs of layers the config does not target stay unexpected
        if path not in modules or path not in targets:
            rest.update({key: value for key, value in pair.values()})
    scale = lora_scaling(config)
    merged, steps = [], []
    for path in targets:
        (key_a, a), (key_b, b) = pairs[path]['A'], pairs[path]['B']
        weight = modules[path].weight
        base = rest.pop(f'llm.{path}.weight', None)
        if base is not None:
            if base.shape != weight.shape:
                raise CheckpointMismatchError(f'{source}: {file_keys[f"llm.{path}.weight"]} has '
                                              f'shape {list(base.shape)}, the model '
                                              f'{list(weight.shape)}')
            merged.append(file_keys[f'llm.{path}.weight'])
        merged += [key_a, key_b]
        steps.append(LoraMergeStep(weight.data, base, a, b, scale))
    return rest, merged, steps


@dataclass
class LoraMergeStep:
    """One planned merge: ``weight`` (out, in) gets the file's ``base`` (the LM head) copied in, if
    any, then ``scale · lora_B @ lora_A`` added in place."""

    weight: Tensor
    base: Tensor | None
    lora_A: Tensor
    lora_B: Tensor
    scale: float


def apply_lora_merges_(steps: list[LoraMergeStep], after_merge=None) -> None:
    """Run planned merges one weight at a time (:func:`~omg_llava.models.lora.merge_lora_delta_`);
    ``after_merge`` is called with each file tensor once consumed (e.g. to drop its pages; a base
    weight piece by piece as it is copied)."""
    for step in steps:
        if step.base is not None:  # the file's own base weight first: the merge goes on top of it
            copy_in_chunks(step.weight, step.base, after_merge)
        merge_lora_delta_(step.weight, step.lora_A, step.lora_B, step.scale)
        if after_merge is not None:
            after_merge(step.lora_A)
            after_merge(step.lora_B)
        release_free_memory()  # the merge's freed work buffers would otherwise pile up in the heap
