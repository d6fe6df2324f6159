"""Build a ready-to-run OMG-LLaVA from a config and the released files (what chat, test and export
tools use).

The build is lean (docs/performance.md has the figures at 7B):

* a ``from_pretrained`` LLM is constructed on the meta device directly in the requested dtype and
  its safetensors shards are streamed in (never an fp16 or fp32 copy first);
* peft's k-bit preparation (which casts an unquantised LLM to float32) is a training step and is not
  applied;
* the OMG-LLaVA checkpoint is memory-mapped and consumed tensor by tensor; its vocabulary tensors
  are copied into the model's own in place;
* by default the finetune's LoRA is merged into the base weights in place, one weight at a time,
  without ever building the adapters (``merge_lora=False`` keeps them, in the LLM's dtype);
* on the CPU the LLM's decode-step products run as matrix-vector products
  (:mod:`omg_llava.inference.single_row_linear`: bf16 decode about twice as fast);
* a request that cannot fit (e.g. fp32 at 7B on a 24 GB machine) is refused before anything is
  loaded, with the estimate (:func:`estimate_memory`).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
import transformers
from mmengine.config import Config

from omg_llava.models.lora import add_inference_lora
from omg_llava.models.omg_llava import OMGLLaVA
from omg_llava.models.released_weights import load_released_checkpoint
from omg_llava.models.special_tokens import SpecialTokenIds, add_special_tokens, fit_embeddings
from omg_llava.utils.allocator import release_free_memory, return_large_blocks_promptly
from omg_llava.registry import build_component

from .encoder_builder import (load_encoder_weights_or_random, resolve_encoder_weights,
                              visual_encoder_config)
from .memory import is_file_mapped, map_embedding_to_file_, page_out_file_mappings
from .single_row_linear import use_matrix_vector_decode_

#: LLM attention implementations an inference build can select (InternLM2 reads the config at every
#: forward).
ATTN_IMPLEMENTATIONS = ('sdpa', 'eager')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
GB = 1e9
#: Memory beyond the weights: the Python/torch runtime and encoding one 1024² image (measured at 7B,
#: with the chunked object prior: docs/performance.md).
WORKING_BYTES = int(1.5 * GB)


class InsufficientMemoryError(ValueError):
    """The requested build does not fit the memory available on its device."""


def resolve_encoder_dtype(encoder_dtype: str, device: str, dtype: str) -> str:
    """The visual encoder's dtype for ``encoder_dtype='auto'``: ``bf16`` when the model runs in bf16
    on a CPU (the 7B chat then fits 16.5 GB: the fp32 encoder holds 0.45 GB more and its activations
    twice as much), ``fp32`` (the reference) otherwise; any other value is returned as given."""
    if encoder_dtype != 'auto':
        return encoder_dtype
    return 'bf16' if torch.device(device).type == 'cpu' and dtype == 'bf16' else 'fp32'


def build_model(config_path: str, *, pth: str | None = None, device: str = 'cpu',
                dtype: str = 'fp32', seed: int = 0, weights_only: bool = True,
                omg_seg: str | None = None, clip: str | None = None,
                class_embed: str | None = None, quantization: str | None = 'none',
                merge_lora: bool = True, check_memory: bool = True,
                attn_implementation: str = 'sdpa',
                encoder_dtype: str = 'auto') -> tuple[OMGLLaVA, Config, list[str]]:
    """Build ``model`` of a config, load the encoder files it names and the OMG-LLaVA ``pth``.

    Args:
        config_path: a config with ``model`` (e.g. configs/omg_llava_7b_finetune_8gpus.py).
        pth: a released-format checkpoint (pretrain, finetune or task finetune). Without one the
            projectors keep their seeded random init and a LoRA is left out unless
            ``merge_lora=False`` (an untrained adapter is a no-op); the config's ``pretrained_pth``
            is not read.
        device: torch device.
        dtype: ``fp32`` / ``fp16`` / ``bf16`` for the LLM and projectors.
        seed: seed of every random init.
        weights_only: refuse pickled Python objects in weight files (``False`` only for trusted
            files).
        omg_seg / clip / class_embed: override the encoder files named by the config.
        quantization: ``'none'`` (default) drops the config's ``quantization_config``, so the LLM
            loads in ``dtype`` on any device; ``None`` builds the config's ``llm`` as written;
            ``'4bit'`` (NF4, double quant, as the reference) or ``'8bit'`` loads a
            ``from_pretrained`` LLM with bitsandbytes (CUDA only) and ``dtype`` as compute dtype
            (the LoRA then stays unmerged); ``'int8'`` (CPU only, LoRA merged) replaces every linear
            layer of the LLM by an int8 weight-only one (:mod:`omg_llava.inference.quantize`) after
            the build, one layer at a time.
        merge_lora: fold the checkpoint's LoRA into the LLM weights (default; ``model.has_lora`` is
            then ``False``). ``False`` keeps the adapters (in ``dtype``), e.g. to compare.
        check_memory: refuse a build whose :func:`estimate_memory` exceeds the available memory.
        attn_implementation: the LLM's attention, ``'sdpa'`` (default: torch's fused attention) or
            ``'eager'`` (the reference numerics); both give the same answers within rounding.
        encoder_dtype: the frozen visual encoder's dtype: ``fp32`` (as the reference runs OMG-Seg),
            ``bf16``/``fp16`` (half its weights' and activations' memory; masks and answers agree
            within rounding, docs/performance.md has the figures) or ``auto`` (default,
            :func:`resolve_encoder_dtype`: bf16 for a bf16 model on a CPU, else fp32).

    On the CPU the LLM's input embedding table is mapped from a temporary file
    (:func:`~omg_llava.inference.memory.map_embedding_to_file_`): only the rows looked up become
    resident.

    Returns:
        ``(model, config, notes)``: the model in eval mode, the parsed config, one note per weight
        decision.

    Raises:
        InsufficientMemoryError: (a ``ValueError``) the build cannot fit; the message has the
            estimate.
    """
    encoder_dtype = resolve_encoder_dtype(encoder_dtype, device, dtype)
    return_large_blocks_promptly()  # host memory follows the live tensors (utils.allocator)
    for name, value in (('dtype', dtype), ('encoder_dtype', encoder_dtype)):
        if value not in DTYPES:
            raise ValueError(f'{name} must be one of {sorted(DTYPES)}, got {value!r}')
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got '
                         f'{attn_implementation!r}')
    if quantization in ('4bit', '8bit'):
        _check_bitsandbytes(quantization, device)
    int8 = quantization == 'int8'
    if int8:
        _check_int8(device, merge_lora)
        quantization = 'none'
    quantized = quantization in ('4bit', '8bit')
    if check_memory and not quantized:
        # without a checkpoint the int8 LLM is quantized after a full build, so it peaks at the
        # float size
        ensure_fits(estimate_memory(config_path, dtype, keep_lora=not merge_lora and bool(pth),
                                    int8=int8 and bool(pth), encoder_dtype=encoder_dtype),
                    device, dtype)
    part_cfg, cfg = visual_encoder_config(config_path)
    if 'model' not in cfg:
        raise KeyError(f'{config_path} defines no `model`: use an OMG-LLaVA config (configs/*.py)')
    weights = resolve_encoder_weights(part_cfg, config_path, omg_seg=omg_seg, clip=clip,
                                      class_embed=class_embed)
    model_cfg = {k: v for k, v in cfg.model.items()}
    model_cfg.update(visual_encoder=dict(part_cfg, weights=None), pretrained_pth=None,
                     use_activation_checkpointing=False)
    if quantization is not None:
        model_cfg['llm'] = _quantized_llm_config(model_cfg['llm'], quantization, device, dtype,
                                                 config_path)
    torch.manual_seed(seed)
    notes = []
    lora = model_cfg.get('llm_lora')
    merge = lora is not None and not quantized and merge_lora
    llm_files = (model_cfg['llm'].get('pretrained_model_name_or_path')
                 if _is_from_pretrained(model_cfg['llm']) else None)  # a folder, or a hub name
    stream = int8 and bool(pth) and _is_from_pretrained(model_cfg['llm'])
    if stream:  # the LLM is built empty and streamed in below, int8 layer by layer
        from .quantize import llm_skeleton
        llm_dir = model_cfg['llm']['pretrained_model_name_or_path']
        model_cfg['llm'] = llm_skeleton(model_cfg['llm'], DTYPES[dtype])
    if lora is not None and not quantized:
        model_cfg.update(_inference_llm(model_cfg, None if merge_lora else lora))
        if not pth and merge_lora:
            notes.append('LoRA: left out (no checkpoint: an untrained adapter changes nothing)')
    model: OMGLLaVA = build_component(model_cfg)
    if llm_files and os.path.isdir(llm_files):  # base vocabulary read by the resize, then dropped
        page_out_file_mappings(llm_files)
    # the small parts take their final dtype before the LLM's weights arrive: a cast at the end
    # would hold both copies (0.9 + 0.45 GB for the 7B encoder) at the build's peak
    for part in (model.projector, model.projector_text2vision):
        part.to(DTYPES[dtype])
    notes += load_encoder_weights_or_random(model.visual_encoder, weights, seed=seed,
                                            weights_only=weights_only)
    model.visual_encoder.to(DTYPES[encoder_dtype])
    release_free_memory()
    if stream:
        from .quantize import stream_llm_int8_
        layers = stream_llm_int8_(model.llm, llm_dir, pth, lora, weights_only=weights_only)
        notes.append(f'LLM: int8 weight-only ({layers} linear layers, streamed from {llm_dir} with '
                     f'the LoRA of {pth} merged), activations in {dtype}')
    if pth:
        report = load_released_checkpoint(
            model, pth, weights_only=weights_only, lora=lora if merge and not stream else None,
            skip_llm=stream,
            # the finished embedding leaves memory before the merge makes the whole LLM resident;
            # for a GPU too, whose model is built here on the host and moved below, so the host's
            # peak is the CPU build's
            before_merge=lambda: map_embedding_to_file_(model.llm.get_input_embeddings()))
        merged = sum('.lora_' in k for k in report.loaded) if merge else 0
        notes.append(f'OMG-LLaVA weights: {pth} ({len(report.loaded)} tensors'
                     + (f'; {merged // 2} LoRA pairs merged into the LLM)' if merged else ')'))
    else:
        notes.append(f'OMG-LLaVA weights: none given, projectors are random (seed {seed})')
    if quantized:  # bitsandbytes placed the LLM on its device and refuses to move or cast it
        for name, child in model.named_children():
            if name != 'llm':
                child.to(device)
        notes.append(f'LLM: {quantization} bitsandbytes quantization, compute dtype {dtype}')
    else:
        model.to(device)
    if not quantized:  # the loads copied into the other parts in place: their dtype is set
        model.llm.to(DTYPES[dtype])
    if int8 and not stream:  # no checkpoint or a from-scratch LLM: quantized after the build
        from .quantize import quantize_llm_int8
        notes.append(f'LLM: int8 weight-only ({quantize_llm_int8(model)} linear layers), '
                     f'activations in {dtype}')
    model.visual_encoder.prepare_for_inference_()  # last decoder step only, lean attention
    if encoder_dtype != 'fp32':
        notes.append(f'visual encoder: {encoder_dtype} (the reference runs it in fp32: '
                     '--encoder-dtype fp32)')
    model.llm.config._attn_implementation = attn_implementation
    use_matrix_vector_decode_(model.llm)  # decode-step products at the memory bandwidth (CPU)
    embedding = model.llm.get_input_embeddings()
    if torch.device(device).type == 'cpu' and not quantized:
        map_embedding_to_file_(embedding)  # no-op when the load mapped it already
        if is_file_mapped(embedding):
            size = embedding.weight.numel() * embedding.weight.element_size()
            notes.append(f'LLM input embedding: mapped from a temporary file ({size / GB:.2f} GB, '
                         'only the rows looked up become resident)')
    release_free_memory()
    if llm_files and os.path.isdir(llm_files):
        page_out_file_mappings(llm_files)
    return model.eval(), cfg, notes


def _inference_llm(model_cfg: dict, keep_lora) -> dict:
    """The config's tokenizer and LLM built for inference (``llm_lora`` then ``None``): with
    ``keep_lora`` (a LoRA config) the LLM gets its vocabulary fitted and the adapters in its own
    dtype; otherwise it stays plain and a checkpoint's LoRA is merged into it at load time."""
    tokenizer = build_component(model_cfg.get('tokenizer'))
    llm = build_component(model_cfg['llm'])
    if keep_lora is not None:
        explicit = model_cfg.get('special_token_ids')
        ids = (SpecialTokenIds(**explicit) if explicit is not None
               else add_special_tokens(tokenizer)
               if tokenizer is not None
               else SpecialTokenIds.after_vocabulary(llm.config.vocab_size))
        fit_embeddings(llm, ids)
        llm = add_inference_lora(llm, keep_lora)
    return dict(tokenizer=tokenizer, llm=llm, llm_lora=None)


def _check_bitsandbytes(quantization: str, device: str) -> None:
    if torch.device(device).type != 'cuda':
        raise ValueError(f'{quantization} loading needs a CUDA GPU (bitsandbytes), but the device '
                         f'is {device!r}; '
                         'on CPU load the LLM unquantized (fp32 or bf16)')
    if importlib.util.find_spec('bitsandbytes') is None:
        raise ImportError(f'{quantization} loading needs bitsandbytes: pip install bitsandbytes '
                          '(or install this package with the [gpu] extra)')


def _check_int8(device: str, merge_lora: bool) -> None:
    if torch.device(device).type != 'cpu':
        raise ValueError('int8 weight-only quantization is for CPU inference, but the device is '
                         f'{device!r}; on '
                         'CUDA use --load-in-8bit or --load-in-4bit (bitsandbytes)')
    if not merge_lora:
        raise ValueError('int8 quantization needs the LoRA merged into the LLM; drop --keep-lora')


def _is_from_pretrained(llm_cfg: dict) -> bool:
    return getattr(llm_cfg.get('type'), '__name__', None) == 'from_pretrained'


def _quantized_llm_config(llm_cfg: dict, quantization: str, device: str, dtype: str,
                          config_path: str) -> dict:
    """The config's ``llm`` dict with its ``quantization_config`` dropped (``'none'``: a
    ``from_pretrained`` LLM is then built on the meta device directly in ``dtype`` and its weights
    streamed in) or replaced."""
    llm_cfg = {k: v for k, v in llm_cfg.items() if k != 'quantization_config'}
    if quantization == 'none':
        if _is_from_pretrained(llm_cfg):
            llm_cfg['torch_dtype'] = DTYPES[dtype]
            # 5.x always builds on meta and streams
            if int(transformers.__version__.split('.')[0]) < 5:
                llm_cfg['low_cpu_mem_usage'] = True
        return llm_cfg
    if quantization not in ('4bit', '8bit'):
        raise ValueError("quantization must be None, 'none', '4bit' or '8bit', got "
                         f"{quantization!r}")
    if not _is_from_pretrained(llm_cfg):
        raise ValueError(f'{quantization} loading needs an LLM loaded with from_pretrained, but '
                         f'the llm of {config_path} is built from scratch (a tiny config?)')
    from transformers import BitsAndBytesConfig
    compute_dtype = DTYPES[dtype]
    llm_cfg.update(torch_dtype=compute_dtype, device_map={'': torch.device(device).index or 0},
                   quantization_config=BitsAndBytesConfig(
                       load_in_4bit=quantization == '4bit', load_in_8bit=quantization == '8bit',
                       llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False,
                       bnb_4bit_compute_dtype=compute_dtype,
                       bnb_4bit_use_double_quant=True, bnb_4bit_quant_type='nf4'))
    return llm_cfg


# ---------------------------------------------------------------------------------- memory estimate
@dataclass
class MemoryEstimate:
    """Parameter counts of a config's model and the bytes a build in ``dtype`` needs.

    Attributes:
        llm / lora / encoder / projectors: parameter counts (``lora``: 0 unless the adapters are
        kept).
        dtype: the LLM and projector dtype.
        encoder_dtype: the visual encoder's dtype.
    """

    llm: int
    lora: int
    encoder: int
    projectors: int
    dtype: str
    llm_linear: int = 0
    encoder_dtype: str = 'fp32'

    @property
    def llm_bytes(self) -> int:
        """The LLM's weights: ``llm_linear`` of them (int8 quantization) one byte each, the rest in
        ``dtype``."""
        return (self.llm - self.llm_linear) * DTYPES[self.dtype].itemsize + self.llm_linear

    @property
    def weight_bytes(self) -> int:
        size = DTYPES[self.dtype].itemsize
        return self.llm_bytes + (self.lora + self.projectors) * size + self.encoder_bytes

    @property
    def encoder_bytes(self) -> int:
        return self.encoder * DTYPES[self.encoder_dtype].itemsize

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + WORKING_BYTES


def estimate_memory(config_path: str, dtype: str, keep_lora: bool = False, int8: bool = False,
                    encoder_dtype: str = 'fp32') -> MemoryEstimate:
    """Count the parameters of the config's model (built on the meta device: no memory, no weights
    read) and size a build in ``dtype`` (merged LoRA unless ``keep_lora``; with ``int8`` the LLM's
    linear weights take one byte each, its scales, embedding and norms stay in ``dtype``)."""
    from omg_llava.verification.model_keys import build_model_on_meta
    if dtype not in DTYPES:
        raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
    counts = dict(llm=0, lora=0, encoder=0, projectors=0, llm_linear=0)
    model = build_model_on_meta(config_path, 'full')
    for name, param in model.named_parameters():
        part = ('lora' if '.lora_' in name else 'llm' if name.startswith('llm.') else
                'encoder' if name.startswith('visual_encoder.') else 'projectors')
        counts[part] += param.numel()
    if int8:
        counts['llm_linear'] = sum(m.weight.numel() for n, m in model.llm.named_modules()
                                   if type(m) is torch.nn.Linear and '.lora_' not in n)
    if not keep_lora:
        counts['lora'] = 0
    return MemoryEstimate(dtype=dtype, encoder_dtype=encoder_dtype, **counts)


def available_memory(device: str) -> int:
    """Bytes free for a model on ``device``: the host's available memory (``MemAvailable``) for the
    CPU, the GPU's free memory for CUDA."""
    kind = torch.device(device)
    if kind.type == 'cuda':
        return torch.cuda.mem_get_info(kind)[0]
    import psutil
    return psutil.virtual_memory().available


def ensure_fits(estimate: MemoryEstimate, device: str, dtype: str,
                available: int | None = None) -> None:
    """Refuse a build that cannot fit, before anything is loaded.

    Args:
        estimate: :func:`estimate_memory` of the build.
        device: where the model goes.
        dtype: the requested dtype (for the advice).
        available: bytes available on ``device`` (default :func:`available_memory`).

    Raises:
        InsufficientMemoryError: e.g. ``needs ~33 GB (LLM 31.0 GB in fp32, ...), 22 GB available on
            cpu; use --dtype bf16``.
    """
    available = available_memory(device) if available is None else available
    need = estimate.total_bytes
    if need <= available:
        return
    size = DTYPES[dtype].itemsize
    llm_dtype = 'int8' if estimate.llm_linear else dtype
    parts = [f'LLM {estimate.llm_bytes / GB:.1f} GB in {llm_dtype}',
             f'projectors {estimate.projectors * size / GB:.1f} GB',
             f'visual encoder {estimate.encoder_bytes / GB:.1f} GB',
             f'working memory {WORKING_BYTES / GB:.1f} GB']
    if estimate.lora:
        parts.insert(1, f'unmerged LoRA {estimate.lora * size / GB:.1f} GB')
    if dtype == 'fp32':
        advice = 'use --dtype bf16'
    elif estimate.lora:
        advice = 'merge the LoRA (drop --keep-lora)'
    elif torch.device(device).type == 'cuda':
        advice = 'use --load-in-8bit or --load-in-4bit, or a GPU with more memory'
    else:
        advice = 'close other programs or use a machine with more memory'
    raise InsufficientMemoryError(f'the model needs ~{need / GB:.0f} GB ({", ".join(parts)}), '
                                  f'{available / GB:.0f} GB available on {device}; {advice}')

