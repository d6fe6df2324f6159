"""Merge the LoRA adapters into the LLM and export OMG-LLaVA as a self-contained folder (spec §7.4).

An export folder holds::

    llm/
        plain InternLM2 (``save_pretrained``, safetensors) with the LoRA merged,
        W = W_base + (alpha / r) · B · A, plus the tokenizer when there is one
    omg_llava_modules.safetensors
        ``projector.*``, ``projector_text2vision.*``, ``visual_encoder.*`` and the non-persistent
        class-embedding buffer ``visual_encoder.panoptic_head.cls_embed``
    omg_llava_export.json
        how to rebuild: special token ids, stage, projector depth, max length and the
        visual-encoder constructor config

The visual-encoder config is stored *in the JSON*, resolved: every component ``type`` becomes its
name in :data:`omg_llava.registry.MODELS` and ``weights`` is dropped (the weights are in the modules
file). Unlike a copied config file, this survives ``read_base()`` inheritance and needs nothing
outside the folder. :func:`load_exported_model` rebuilds the model from the folder alone.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from omg_llava.checkpoint import CheckpointError, load_into, read_weights
from omg_llava.registry import MODELS

EXPORT_FORMAT = 'omg_llava_export'
EXPORT_JSON = 'omg_llava_export.json'
MODULES_FILE = 'omg_llava_modules.safetensors'
LLM_DIR = 'llm'
MODULE_PREFIXES = ('projector.', 'projector_text2vision.', 'visual_encoder.')
CLS_EMBED_KEY = 'visual_encoder.panoptic_head.cls_embed'
PEFT_PREFIX = 'llm.base_model.model.'
_LORA_KEY = re.compile(r'(?P<module>.+)\.lora_(?P<side>[AB])\.(?P<adapter>[^.]+)\.weight')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def merge_lora_state_dict(state_dict: Mapping[str, Tensor], scale: float,
                          adapter: str = 'default') -> dict[str, Tensor]:
    """Finetune-format LLM tensors (``llm.base_model.model.…``) → plain ``llm.…`` names with the
    LoRA merged.

    ``….base_layer.weight`` loses ``.base_layer``; each ``lora_A`` (r, in) / ``lora_B`` (out, r)
    pair is folded into its base weight (out, in) as ``W + scale · B @ A`` (computed in float32,
    stored in W's dtype). Keys outside the PEFT prefix are returned unchanged.

    Raises:
        ValueError: an adapter other than ``adapter``, half a LoRA pair, or a pair without its base
            weight (a released finetune file alone lacks the frozen base weights: merge the full
            model state).
    """
    merged: dict[str, Tensor] = {}
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if not key.startswith(PEFT_PREFIX):
            merged[key] = value
            continue
        name = key[len(PEFT_PREFIX):]
        match = _LORA_KEY.fullmatch(name)
        if match:
            if match['adapter'] != adapter:
                raise ValueError(f'{key}: LoRA adapter {match["adapter"]!r}, only {adapter!r} can '
                                 'be merged')
            pairs.setdefault(match['module'], {})[match['side']] = value
        elif '.lora_' in name:
            raise ValueError(f'{key}: unsupported LoRA tensor (only lora_A / lora_B weights can be '
                             'merged)')
        else:
            merged['llm.' + re.sub(r'\.base_layer(?=\.)', '', name)] = value
    for module, pair in sorted(pairs.items()):
        base_key = f'llm.{module}.weight'
        if set(pair) != {'A', 'B'}:
            raise ValueError(f'{PEFT_PREFIX}{module}: lora_{"AB".replace("".join(pair), "")} is '
                             'missing')
        if base_key not in merged:
            raise ValueError(f'{PEFT_PREFIX}{module}.base_layer.weight is missing: merging needs '
                             'the base weights (the full LLM state, not only a released finetune '
                             'file)')
        base = merged[base_key]
        delta = pair['B'].float() @ pair['A'].float()  # (out, r) @ (r, in)
        merged[base_key] = (base.float() + scale * delta).to(base.dtype)
    return merged


def lora_scale(peft_llm: nn.Module) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA) of the single adapter ``default`` of a peft model."""
    configs = getattr(peft_llm, 'peft_config', {})
    if set(configs) != {'default'}:
        raise ValueError(f'expected one LoRA adapter named "default", found {sorted(configs)}')
    cfg = configs['default']
    if cfg.rank_pattern or cfg.alpha_pattern or getattr(cfg, 'use_dora', False):
        raise ValueError('per-module LoRA ranks/alphas and DoRA are not supported by the merge')
    return cfg.lora_alpha / (cfg.r ** 0.5 if cfg.use_rslora else cfg.r)


def merged_llm_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The plain InternLM2 state (``model.…``, ``output.weight``) of ``model.llm``, LoRA merged if
    present."""
    state = nn.Module.state_dict(model.llm, prefix='llm.')
    if getattr(model, 'has_lora', False):
        state = merge_lora_state_dict(state, lora_scale(model.llm))
    return {k[len('llm.'):]: v for k, v in state.items()}


def _to_json(value: Any, where: str) -> Any:
    """A config value as JSON: component types by registered name, tuples as lists."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f'{where}[{i}]') for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    name = getattr(value, '__name__', None)
    if name is not None and MODELS.get(name) is value:
        return name
    raise ValueError(f'{where} = {value!r} cannot be recorded in {EXPORT_JSON}: only plain values '
                     'and components registered in omg_llava.registry.MODELS can')


def _from_json(value: Any) -> Any:
    """Inverse of :func:`_to_json` for building: JSON lists become tuples."""
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    return value


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}')
    return DTYPES[dtype]


def export_merged_model(model: nn.Module, out_dir: str | os.PathLike, tokenizer: Any = None,
                        config_path: str | os.PathLike | None = None,
                        visual_encoder: Mapping | None = None,
                        dtype: torch.dtype | str | None = None) -> Path:
    """Write ``model`` (an :class:`~omg_llava.models.OMGLLaVA`, LoRA or not) as an export folder.

    Args:
        model: the model with its weights loaded.
        out_dir: the folder to create (existing files of the same names are overwritten).
        tokenizer: saved into ``llm/``; default ``model.tokenizer`` (nothing when both are
            ``None``).
        config_path: the config ``model`` was built from; its ``model.visual_encoder`` (or top-level
            ``visual_encoder``) is recorded. Give this or ``visual_encoder``.
        visual_encoder: the visual-encoder config dict itself (``type`` as class or registered
            name).
        dtype: dtype of the saved LLM and projector tensors (default: as they are); the visual
            encoder is always saved as it is (it runs in float32).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    if (config_path is None) == (visual_encoder is None):
        raise ValueError('give exactly one of config_path and visual_encoder (the visual-encoder '
                         'config to record)')
    if config_path is not None:
        from omg_llava.inference.encoder_builder import visual_encoder_config
        visual_encoder, _ = visual_encoder_config(os.fspath(config_path))
    encoder_cfg = _to_json({k: v for k, v in visual_encoder.items() if k != 'weights'},
                           'visual_encoder')
    dtype = _as_dtype(dtype)
    out = Path(out_dir)
    llm_dir = out / LLM_DIR
    llm_dir.mkdir(parents=True, exist_ok=True)

    llm_state = merged_llm_state_dict(model)

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    llm_state = {k: cast(v).detach().cpu().contiguous() for k, v in llm_state.items()}
    base = model.llm.get_base_model() if model.has_lora else model.llm
    base.save_pretrained(llm_dir, state_dict=llm_state, safe_serialization=True)
    if dtype is not None:  # save_pretrained records the live model's dtype
        config = type(base.config).from_dict(base.config.to_dict())
        config.torch_dtype = dtype
        config.save_pretrained(llm_dir)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, 'tokenizer', None)
    if tokenizer is not None:
        tokenizer.save_pretrained(llm_dir)

    from safetensors.torch import save_file
    own = nn.Module.state_dict(model)
    modules = {k: (v if k.startswith('visual_encoder.') else cast(v)).detach().cpu().contiguous()
               for k, v in own.items() if k.startswith(MODULE_PREFIXES)}
    modules[CLS_EMBED_KEY] = (
        model.visual_encoder.panoptic_head.cls_embed.detach().cpu().contiguous()
    )
    save_file(modules, str(out / MODULES_FILE), metadata={'format': 'pt'})

    ids = model.token_ids
    lora = model.llm.peft_config['default'] if model.has_lora else None
    meta = {
        'format': EXPORT_FORMAT, 'format_version': 1, 'llm_dir': LLM_DIR,
        'modules_file': MODULES_FILE,
        'non_persistent_buffers': [CLS_EMBED_KEY], 'stage': model.stage,
        'projector_depth': sum(isinstance(m, nn.Linear) for m in model.projector_text2vision.model),
        'max_length': model.max_length,
        'special_token_ids': dict(seg=ids.seg, phrase_start=ids.phrase_start,
                                  phrase_end=ids.phrase_end, region=ids.region, mark=ids.mark),
        'visual_encoder': encoder_cfg,
        'merged_lora': None if lora is None else dict(r=lora.r, lora_alpha=lora.lora_alpha,
                                                      scale=lora_scale(model.llm)),
        'source_config': None if config_path is None else os.fspath(config_path),
    }
    (out / EXPORT_JSON).write_text(json.dumps(meta, indent=2) + '\n')
    return out


def load_exported_model(out_dir: str | os.PathLike, device: str | torch.device = 'cpu',
                        dtype: torch.dtype | str | None = None,
                        attn_implementation: str = 'sdpa') -> nn.Module:
    """Rebuild the (non-LoRA) :class:`~omg_llava.models.OMGLLaVA` of an export folder, in eval mode.

    ``dtype`` applies to the LLM and the projectors (default: the saved dtype); the visual encoder
    stays as saved (float32). The tokenizer is loaded when ``llm/`` has one. ``attn_implementation``
    is the LLM's attention, ``'sdpa'`` (default, as
    :func:`~omg_llava.inference.model_builder.build_model`) or ``'eager'``.

    Raises:
        CheckpointError: the folder is not an export, or the modules file does not fit the recorded
            config.
    """
    from transformers import AutoModelForCausalLM

    from omg_llava.models.llm.internlm2 import InternLM2Tokenizer

    from omg_llava.models import OMGLLaVA  # also registers InternLM2 with the Auto classes
    out = Path(out_dir)
    meta_path = out / EXPORT_JSON
    if not meta_path.is_file():
        raise CheckpointError(f'{out} is not an OMG-LLaVA export: {EXPORT_JSON} is missing (create '
                              'one with tools/export_hf.py)')
    meta = json.loads(meta_path.read_text())
    if meta.get('format') != EXPORT_FORMAT or meta.get('format_version') != 1:
        raise CheckpointError(f'{meta_path}: unsupported export format {meta.get("format")!r} '
                              f'version {meta.get("format_version")!r}')
    dtype = _as_dtype(dtype)
    llm_dir = out / meta['llm_dir']
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, torch_dtype=dtype or 'auto')
    llm.config._attn_implementation = attn_implementation  # as the inference builder sets it
    # The export's tokenizer is always the first-party InternLM2 one: load it by class (transformers
    # 5.x's AutoTokenizer tries a tokenizers/tiktoken conversion of the sentencepiece file instead
    # of the slow class).
    tokenizer = (InternLM2Tokenizer.from_pretrained(llm_dir)
                 if (llm_dir / 'tokenizer_config.json').is_file()
                 else None)
    model = OMGLLaVA(llm=llm, visual_encoder=MODELS.build(_from_json(meta['visual_encoder'])),
                     tokenizer=tokenizer,
                     stage=meta['stage'], llm_lora=None, projector_depth=meta['projector_depth'],
                     use_activation_checkpointing=False, max_length=meta['max_length'],
                     special_token_ids=meta['special_token_ids'])
    source = os.fspath(out / meta['modules_file'])
    tensors = read_weights(source)
    buffers = {k: tensors.pop(k, None) for k in meta['non_persistent_buffers']}
    expected = [k for k in nn.Module.state_dict(model) if k.startswith(MODULE_PREFIXES)]
    load_into(model, tensors, source=source, expected_keys=expected)
    cls_embed = model.visual_encoder.panoptic_head.cls_embed
    saved = buffers.get(CLS_EMBED_KEY)
    if saved is None or saved.shape != cls_embed.shape:
        raise CheckpointError(f'{source}: {CLS_EMBED_KEY} must have shape {list(cls_embed.shape)}, '
                              f'got {None if saved is None else list(saved.shape)}')
    cls_embed.copy_(saved)
    model.to(device)
    for part in (model.projector, model.projector_text2vision):
        part.to(llm.dtype)
    return model.eval()
