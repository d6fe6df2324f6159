"""Run a bundle through the user path stage by stage and relate decode speed to the machine's memory
bandwidth.

Stages (each with wall time, peak RSS and RSS after it): ``build`` (``OMGLLaVAChat.from_config``:
construction + weights), ``encode`` (``set_image`` of a 640x480 image), then per turn ``prefill``
(the first LLM call, up to the first token's logits), ``decode`` (the remaining tokens, tokens/s),
``masks`` (the ``[SEG]`` masks) and the whole turn. The turns go through ``OMGLLaVAChat.ask``; the
answers are steered (stop ids suppressed, the last token forced to ``[SEG]``) so that a
random-weight model decodes the full ``max_new_tokens`` and yields a mask.

Decode is memory-bound: each token reads every LLM weight but the input embedding once, so the speed
limit is ``bandwidth / bytes_per_token``. :func:`measure_read_bandwidth` sums a large tensor with
the benchmark's threads; the report gives decode tokens/s as a fraction of that limit.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import psutil
import torch
from torch import nn

from .bundle import BundlePaths

QUESTIONS = ('Please segment the cat in this image.', 'What is it doing? Please segment it again.')


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def measure_read_bandwidth(device: str = 'cpu', gigabytes: float = 2.0, repeats: int = 5) -> float:
    """Best-of-``repeats`` read bandwidth (GB/s) of summing a ``gigabytes`` float32 tensor with
    torch's current threads on ``device`` (the array is written once first, so its pages exist)."""
    data = torch.ones(int(gigabytes * 1e9) // 4, dtype=torch.float32, device=device)
    best = float('inf')
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        data.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    size = data.numel() * 4
    del data
    return size / best / 1e9


def _sync(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def decode_bytes_per_token(llm: nn.Module) -> int:
    """Bytes of LLM weights read to decode one token: every parameter and buffer (quantized weights
    as stored) except the input embedding, of which one row is read."""
    skip = llm.get_input_embeddings().weight.data_ptr()
    seen, total = {skip}, 0
    for tensor in list(llm.parameters()) + list(llm.buffers()):
        if tensor.data_ptr() not in seen and tensor.device.type != 'meta':
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total + sum(_packed_bytes(module) for module in llm.modules())


def _packed_bytes(module: nn.Module) -> int:
    """Weights that a module keeps outside its parameters and buffers (``quantize_dynamic``'s packed
    int8)."""
    params = getattr(module, '_packed_params', None)
    if params is None or not hasattr(params, '_weight_bias'):
        return 0
    weight, bias = params._weight_bias()
    return weight.numel() * weight.element_size() + (0 if bias is None
                                                     else bias.numel() * bias.element_size())


@dataclass
class Stage:
    """One timed stage."""

    stage: str
    seconds: float
    peak_rss_gb: float
    rss_gb: float
    extra: dict = field(default_factory=dict)

    def flat(self) -> dict:
        """The JSON row: the fields with ``extra`` merged in."""
        row = asdict(self)
        extra = row.pop('extra')
        return {**row, **extra}

    @classmethod
    def from_flat(cls, row: dict) -> 'Stage':
        main = ('stage', 'seconds', 'peak_rss_gb', 'rss_gb')
        return cls(*(row[k] for k in main), {k: v for k, v in row.items() if k not in main})


def stage_recorder(stages: list[Stage], log: Callable[[str], None]) -> Callable[..., None]:
    """``stage(name, seconds, **extra)``: append a :class:`Stage` with the process's peak and
    current RSS now to ``stages`` and log its line."""
    def stage(name: str, seconds: float, **extra) -> None:
        stages.append(Stage(name, round(seconds, 3), round(peak_rss_gb(), 2), round(rss_gb(), 2),
                            extra))
        log(format_stage(stages[-1]))
    return stage


class LLMCallTimer:
    """Times of the LLM decoder's calls and of the start of ``[SEG]`` decoding, from module
    hooks."""

    def __init__(self, decoder: nn.Module, seg_projector: nn.Module, device: str) -> None:
        self.device = device
        self.calls: list[tuple[float, int]] = []  # (start time, positions)
        self.masks_start: float | None = None
        self.handles = [decoder.register_forward_pre_hook(self._decoder_start, with_kwargs=True),
                        seg_projector.register_forward_pre_hook(self._masks_start)]

    def reset(self) -> None:
        self.calls, self.masks_start = [], None

    def _decoder_start(self, module, args, kwargs) -> None:
        _sync(self.device)
        self.calls.append((time.perf_counter(), kwargs['inputs_embeds'].shape[1]))

    def _masks_start(self, module, args) -> None:
        if self.masks_start is None:
            _sync(self.device)
            self.masks_start = time.perf_counter()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def steering(seg_id: int, stop_ids: list[int], new_tokens: int) -> Callable:
    """A logits processor: no stop id before the last step, ``[SEG]`` at the last (a random model
    would stop or never segment)."""
    def steer(generated: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        if generated.shape[1] == new_tokens - 1:
            forced = torch.full_like(scores, -float('inf'))
            forced[:, seg_id] = 0.0
            return forced
        scores[:, stop_ids] = -float('inf')
        return scores
    return steer


def run_benchmark(bundle: str, device: str = 'cpu', dtype: str = 'bf16', merge_lora: bool = True,
                  attn: str = 'sdpa', quantize: str = 'none', max_new_tokens: int = 16,
                  turns: int = 2,
                  seed: int = 0, bandwidth_gb: float = 2.0, masks_out: str | None = None,
                  encoder_dtype: str = 'auto', log: Callable[[str], None] = print) -> dict:
    """Measure the stages of the module docstring on the bundle under ``bundle``; returns the JSON
    record. ``masks_out``: also save each turn's masks there (``.npz``, ``turn{t}`` → (n, H, W)
    bool) for :func:`compare_runs`."""
    from transformers import LogitsProcessorList

    from omg_llava.inference.chat import OMGLLaVAChat
    from omg_llava.inference.model_builder import resolve_encoder_dtype
    encoder_dtype = resolve_encoder_dtype(encoder_dtype, device, dtype)
    paths = BundlePaths.under(bundle)
    threads = torch.get_num_threads()
    log(f'measuring the read bandwidth ({bandwidth_gb:g} GB, {threads} threads, {device}) ...')
    bandwidth = measure_read_bandwidth(device, bandwidth_gb)
    stages: list[Stage] = []
    stage = stage_recorder(stages, log)

    start = time.perf_counter()
    chat, notes = OMGLLaVAChat.from_config(paths.config, pth=paths.finetune, device=device,
                                           dtype=dtype,
                                           merge_lora=merge_lora, attn_implementation=attn,
                                           quantization=quantize, encoder_dtype=encoder_dtype)
    model = chat.model
    stage('build', time.perf_counter() - start, notes=notes)
    llm_bytes = decode_bytes_per_token(model.llm)

    image = (np.random.default_rng(seed).random((480, 640, 3)) * 255).astype(np.uint8)
    start = time.perf_counter()
    chat.set_image(image)
    _sync(device)
    stage('encode', time.perf_counter() - start)

    causal_lm = model.llm.get_base_model() if hasattr(model.llm, 'get_base_model') else model.llm
    timer = LLMCallTimer(causal_lm.get_decoder(), model.projector_text2vision, device)
    steer = LogitsProcessorList([steering(model.token_ids.seg, model.stop_token_ids,
                                          max_new_tokens)])
    answers, masks = [], {}
    try:
        for turn, question in enumerate(QUESTIONS[:turns], start=1):
            timer.reset()
            torch.manual_seed(seed)
            start = time.perf_counter()
            answer = chat.ask(question, max_new_tokens=max_new_tokens, logits_processor=steer)
            _sync(device)
            end = time.perf_counter()
            answers.append(answer.token_ids)
            masks[f'turn{turn}'] = np.stack(answer.masks) if answer.masks else np.zeros((0, 1, 1),
                                                                                        bool)
            calls = timer.calls
            # a final [SEG] is fed once more for its state: that call belongs to the masks, not to
            # decoding
            extra_fed = (answer.token_ids[-1] == model.token_ids.seg
                         and len(calls) > len(answer.token_ids))
            decode_end = calls[-1][0] if extra_fed else timer.masks_start or end
            steps = len(calls) - 1 - extra_fed  # one token per call after the prefill
            stage(f'turn {turn} prefill', (calls[1][0] if len(calls) > 1 else decode_end) - start,
                  positions=calls[0][1])
            decode_seconds = decode_end - calls[1][0] if len(calls) > 1 else 0.0
            tokens_per_s = steps / decode_seconds if decode_seconds else 0.0
            stage(f'turn {turn} decode', decode_seconds, tokens=steps,
                  tokens_per_s=round(tokens_per_s, 3),
                  of_bandwidth_limit=round(tokens_per_s * llm_bytes / (bandwidth * 1e9), 3))
            stage(f'turn {turn} masks', end - decode_end if answer.masks else 0.0,
                  masks=len(answer.masks))
            stage(f'turn {turn}', end - start, new_tokens=len(answer.token_ids))
    finally:
        timer.remove()
    if masks_out:
        np.savez_compressed(masks_out, **masks)
    return dict(bundle=paths.root, device=device, dtype=dtype, encoder_dtype=encoder_dtype,
                merged_lora=merge_lora, attention=attn,
                quantize=quantize, threads=threads, read_bandwidth_gb_s=round(bandwidth, 2),
                llm_bytes_per_token=llm_bytes,
                decode_limit_tokens_per_s=round(bandwidth * 1e9 / llm_bytes, 3),
                stages=[s.flat() for s in stages], answers=answers)


def format_stage(stage: Stage) -> str:
    extra = '  '.join(f'{k}={v}' for k, v in stage.extra.items() if k != 'notes')
    return (f'{stage.stage:<16} {stage.seconds:>9.2f} s  peak RSS {stage.peak_rss_gb:6.2f} GB  '
            f'RSS {stage.rss_gb:6.2f} GB  {extra}').rstrip()


def format_report(record: dict) -> str:
    """The table of a :func:`run_benchmark` record."""
    lines = [f'{"stage":<16} {"seconds":>11}  {"peak RSS":>14}  {"RSS":>9}  details']
    lines += [format_stage(Stage.from_flat(s)) for s in record['stages']]
    lines.append(f'read bandwidth {record["read_bandwidth_gb_s"]} GB/s ({record["threads"]} '
                 f'threads); LLM weights read per token {record["llm_bytes_per_token"] / 1e9:.2f} '
                 f'GB -> limit {record["decode_limit_tokens_per_s"]} tokens/s')
    return '\n'.join(lines)


def write_record(record: dict, path: str) -> None:
    with open(path, 'w') as file:
        json.dump(record, file, indent=2)
        file.write('\n')


def compare_runs(record_a: dict, record_b: dict, masks_a: str | None = None,
                 masks_b: str | None = None) -> dict:
    """Agreement of two runs on the same bundle (e.g. bf16 and int8): the fraction of answer
    positions with the same token, and the IoU of each pair of masks (both saved with
    ``masks_out``)."""
    pairs = [(x, y) for a, b in zip(record_a['answers'], record_b['answers']) for x, y in zip(a, b)]
    out = dict(tokens=len(pairs),
               token_agreement=round(sum(x == y for x, y in pairs) / max(len(pairs), 1), 4))
    if masks_a and masks_b:
        with np.load(masks_a) as a, np.load(masks_b) as b:
            ious = []
            for key in sorted(set(a.files) & set(b.files)):
                for x, y in zip(a[key], b[key]):
                    union = np.logical_or(x, y).sum()
                    ious.append(float(np.logical_and(x, y).sum() / union) if union else 1.0)
        out['mask_iou'] = [round(v, 4) for v in ious]
    return out
