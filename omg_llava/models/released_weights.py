"""Loading the released OMG-LLaVA checkpoints into :class:`~omg_llava.models.OMGLLaVA` (spec §7).

The files are flat dicts under the model's own module paths (no renaming):

* ``omg_llava_7b_pretrain_8gpus.pth`` (17 tensors) fits the pretrain model (no LoRA). Given to a LoRA
  model (the finetune config's ``pretrained_pth``), its two vocabulary tensors have no counterpart under
  the peft names and are reported as *ignored* (the reference drops them silently, spec §7.3).
* ``omg_llava_7b_finetune_8gpus.pth`` (339 tensors the public code explains) fits the LoRA model. The
  published file is said to hold 110 more keys that no public code path produces: keys that exist in the
  model are loaded and listed; keys that do not are listed by name as *unexpected* and skipped, with a
  warning — never silently.
* A model that trains its whole LLM (``freeze_llm=False``, the tiny synthetic finetune) needs every LLM tensor,
  except from a pretrain-stage file, which holds no LLM layers: the LLM then keeps the weights it was built from.
* ``finetuned_refseg.pth`` / ``finetuned_gcg.pth`` add the 170 ``_llm`` decoder-copy tensors and need a model
  built with ``with_llm_decoder_copy=True`` (the task configs). A task model given the general finetune file
  (its ``pretrained_pth``) keeps the copies initialised from the OMG-Seg decoder.
"""
from __future__ import annotations

import os

from mmengine.logging import print_log
from torch import nn

from omg_llava.checkpoint import (CheckpointMismatchError, LoadReport, describe_checkpoint, load_into, read_weights,
                                  unwrap_state_dict)

from .save_filter import is_saved_key

PRETRAIN_VOCAB_KEYS = ('llm.model.tok_embeddings.weight', 'llm.output.weight')
LLM_DECODER_COPY_MARKERS = ('.transformer_decoder_llm.', '.mask_embed_llm.')


def load_released_checkpoint(model: nn.Module, path: str | os.PathLike, *, weights_only: bool = True) -> LoadReport:
    """Load a released-format OMG-LLaVA ``.pth`` into ``model`` (see the module docstring for the rules).

    Raises:
        CheckpointMismatchError: a tensor the model saves is missing from the file, a shape differs, or the
            file carries ``_llm`` decoder copies the model was built without. The message lists the keys and
            names the file the keys look like.
    """
    source = os.fspath(path)
    state_dict = unwrap_state_dict(read_weights(source, weights_only=weights_only), source)
    own = nn.Module.state_dict(model, keep_vars=True)
    with_copy = model.visual_encoder.panoptic_head.with_llm_decoder_copy
    with_full_llm = not getattr(model, 'freeze_llm', True)
    required = [k for k in own if is_saved_key(k, with_copy, with_full_llm)]
    ignored = []
    if getattr(model, 'has_lora', False) and any(k in state_dict for k in PRETRAIN_VOCAB_KEYS):
        ignored = [k for k in PRETRAIN_VOCAB_KEYS if k in state_dict]
        state_dict = {k: v for k, v in state_dict.items() if k not in ignored}
        required = [k for k in required if k.startswith(('projector.', 'projector_text2vision.'))]
    llm_only_vocab = not any(k.startswith('llm.') and k not in PRETRAIN_VOCAB_KEYS for k in state_dict)
    if with_full_llm and llm_only_vocab:
        # A pretrain-stage file (LLM frozen, so not saved) given to a model that trains its whole LLM (the tiny
        # synthetic finetune): the LLM keeps the weights it was built from (``llm.pretrained_model_name_or_path``).
        required = [k for k in required if not k.startswith('llm.') or k in state_dict]
        print_log(f'{source}: no LLM layers in the file (a pretrain-stage file); the LLM keeps the weights it was '
                  'built from', logger='current')
    if with_copy and not any(any(m in k for m in LLM_DECODER_COPY_MARKERS) for k in state_dict):
        # A task finetune starting from the general finetune file: the copies keep their initialisation from
        # the OMG-Seg decoder (spec §3.7).
        required = [k for k in required if not any(m in k for m in LLM_DECODER_COPY_MARKERS)]
        print_log(f'{source}: no `_llm` decoder copies in the file; they keep the OMG-Seg decoder weights',
                  logger='current')
    copies = [k for k in state_dict if k not in own and any(m in k for m in LLM_DECODER_COPY_MARKERS)]
    if copies:
        raise CheckpointMismatchError(
            f'{source} holds {len(copies)} `_llm` decoder-copy tensors (e.g. {copies[0]}): it is a task finetune '
            '(finetuned_refseg.pth / finetuned_gcg.pth). Build the model from a task config '
            '(configs/specific_tasks_finetune/*, panoptic_head with_llm_decoder_copy=True).')
    unknown = sorted(k for k in state_dict if k not in own)
    known = {k: v for k, v in state_dict.items() if k in own}
    report = load_into(model, known, source=source, expected_keys=required, file_keys=state_dict)
    report.ignored = ignored
    report.unexpected = unknown
    if ignored:
        print_log(f'{source}: {len(ignored)} pretrain vocabulary tensors ignored ({", ".join(ignored)}): the LoRA '
                  'model starts from its own resized vocabulary, as the reference does.', logger='current')
    beyond_filter = [k for k in known if not is_saved_key(k, with_copy, with_full_llm)]
    if beyond_filter:
        print_log(f'{source}: {len(beyond_filter)} tensors beyond the reference save filter were loaded, e.g. '
                  f'{beyond_filter[:3]}', logger='current', level=30)
    if unknown:
        print_log(f'{source}: {len(unknown)} tensors have no place in this model and were skipped: {unknown[:20]}'
                  f'{" ..." if len(unknown) > 20 else ""} (file looks like: {describe_checkpoint(state_dict)})',
                  logger='current', level=30)
    return report
