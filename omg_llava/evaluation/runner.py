"""The evaluation loops (spec §9.3): answer every sample of a split, write the predictions, compute
the metrics.

The loops take a *prediction function* instead of a model, so the metrics can be checked without
one:

* refseg / gcg: ``predict(image_path, prompt) -> answer``;
* region_caption: ``predict(image_path, prompt, region_mask) -> answer``, the (H, W) mask filling
  ``<mark>``;
* region_qa: ``predict(image_path, prompt, region_masks) -> answer``, the (H, W) masks filling the
  ``<region>`` tokens in order (:mod:`~omg_llava.evaluation.region_qa`);

where ``answer`` has ``text`` (the decoded answer with its ``<p>``/``[SEG]`` markup) and ``masks``
(one (H, W) bool array per generated ``[SEG]`` at the original image size), like
:class:`~omg_llava.inference.chat.ChatAnswer`. :class:`ModelPredictor` provides both from an
:class:`~omg_llava.inference.chat.OMGLLaVAChat` (greedy decoding).

Every task is scored under one of :data:`PROTOCOLS` (docs/evaluation.md): ``reference`` gives the
released scripts' numbers (their quirks included, their crashes not), ``corrected`` the project's
definitions (default).

Nothing is lost (:func:`evaluate`): each record is appended to ``predictions.jsonl`` (flushed and
synced) as soon as it is made; a sample that fails (a missing image, a bad annotation, an error in
the model) is listed in ``metrics.json`` under ``failures`` instead of stopping the run; and a run
started again on the same ``out_dir`` predicts only the samples its predictions files lack, so its
metrics equal those of an uninterrupted run. Failed samples are tried again on resume.

Distributed runs (``torchrun``) give every rank a contiguous block of samples (:func:`shard_range`,
so that the consecutive expressions of one image stay on one rank and its encoding is reused); each
rank appends to its own ``predictions.rank{r}.jsonl``, rank 0 gathers every rank's records, restores
the split order and writes ``predictions.jsonl`` and ``metrics.json``.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from omg_llava.datasets.templates import GCG_QUESTIONS as TRAINING_GCG_QUESTIONS
from omg_llava.inference.chat import PHRASE_PATTERN, TAG_PATTERN, ChatAnswer, OMGLLaVAChat
from omg_llava.inference.image_io import load_image, preprocess_image
from omg_llava.models.visual_prompts import VisualPrompt
from omg_llava.utils.atomic import atomic_write_text
from omg_llava.utils.conversation import Turn, encode_conversation

from .captions import caption_metrics
from .gcg import GroundedImage, PhraseSimilarity, bag_of_words_cosine, gcg_mask_metrics
from .refseg import MaskOverlap, mask_overlap, reference_refseg_metrics, refseg_metrics
from .region_qa import QUESTIONS, first_word, region_qa_summary
from .splits import GCGSplit, RefSegSplit, RegionCaptionSplit, RegionQASplit, rle_of

#: ``corrected``: the project's metric definitions; ``reference``: the released scripts'
#: (docs/evaluation.md).
PROTOCOLS = ('corrected', 'reference')
DEFAULT_PROTOCOL = 'corrected'

REFSEG_PROMPT = 'Please segment {sentence} in this image.'
#: The released GCG evaluation's questions (tools/gcg_omg_seg_llava.py, spec prompts.md), asked in
#: this order, each as a fresh single-turn conversation (``<image>\n`` + question), until an answer
#: holds a ``[SEG]``: the same six strings, in the same order, as the released training list (drawn
#: at random there), so one tuple serves both; tests/evaluation checks the order against the
#: released evaluation's list.
GCG_QUESTIONS = TRAINING_GCG_QUESTIONS
REGION_CAPTION_PROMPT = ('Can you provide me with a detailed description of the region in the '
                         'picture marked by region1 <mark>?')
#: Generation budget of each protocol (spec §9.3).
MAX_NEW_TOKENS = {'refseg': 100, 'gcg': 100, 'region_caption': 300, 'region_qa': 30}
PREDICTIONS_FILE = 'predictions.jsonl'
METRICS_FILE = 'metrics.json'

_ANY_TAG = re.compile(r'<[^>]*>|\[SEG\]')
_REGION_WORD = re.compile(r'\b[Rr]egion1\b|:')
_MARKUP = re.compile(r'<p>(.*?)</p>|\[SEG\]', re.S)
_REFERENCE_TAG = re.compile(r'<.*?>')
_REFERENCE_PHRASE = re.compile(r'<p>(.*?)</p>')

Predict = Callable[[str, str], Any]
RegionPredict = Callable[[str, str, np.ndarray], Any]
RegionQAPredict = Callable[[str, str, Sequence[np.ndarray]], Any]


# ----------------------------------------------------------------------------------------- sharding
def shard_range(num_samples: int, rank: int, world_size: int) -> range:
    """The contiguous block of sample indices of ``rank``: sizes differ by at most one, every index
    in exactly one block."""
    if not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} outside a world of {world_size}')
    return range(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)


def gather_records(records: list[dict], world_size: int) -> list[dict] | None:
    """All ranks' records on rank 0 in split order (``None`` on the other ranks). Ranks may hold
    different numbers of records (resumed and failed samples)."""
    if world_size > 1:
        from mmengine.dist import all_gather_object, get_rank
        parts = all_gather_object(records)
        if get_rank() != 0:
            return None
        records = [record for part in parts for record in part]
    return sorted(records, key=lambda r: r['index'])


# ------------------------------------------------------------------------------------ text clean-up
def clean_caption(text: str) -> str:
    """Answer → caption: every ``<…>`` tag and ``[SEG]`` removed, whitespace collapsed (spec §9.3
    GCG)."""
    return ' '.join(_ANY_TAG.sub(' ', text).split())


def clean_region_caption(text: str) -> str:
    """Answer → region description: tags, ``[SEG]``, ``region1`` / ``Region1`` and colons
    removed."""
    return ' '.join(_REGION_WORD.sub(' ', _ANY_TAG.sub(' ', text)).split())


def reference_gcg_answer(text: str) -> tuple[str, list[str]]:
    """Answer → (caption, phrases) as the released GCG script cleans it: ``<s>`` and newlines
    removed (no space put in their place), double spaces halved, the text after the last
    ``ASSISTANT: ``; the caption drops every ``<…>`` tag and ``[SEG]`` without a space, collapses
    whitespace and strips ``'`` from both ends; the phrases are the stripped ``<p>…</p>`` texts.
    ``text`` is decoded as the chat decodes it (stop token left out, special tokens set off by
    spaces, as the reference's decoding)."""
    text = text.replace('<s>', '').replace('\n', '').replace('  ', ' ').split('ASSISTANT: ')[-1]
    caption = _REFERENCE_TAG.sub('', text).replace('[SEG]', '')
    caption = ' '.join(caption.split()).strip("'").strip()
    return caption, [p.strip() for p in _REFERENCE_PHRASE.findall(text)]


def reference_region_caption(text: str) -> str:
    """Answer → region description as the released region-caption script cleans it: ``<s>``,
    newlines, ``region1``, ``Region1`` (anywhere, also inside ``region10``) and colons removed
    without a space, runs of 3 and 2 spaces halved, the text after the last ``ASSISTANT: ``, every
    ``<…>`` tag and ``[SEG]`` removed (the script decoded with ``skip_special_tokens``), whitespace
    collapsed and ``'`` stripped from both ends."""
    for old, new in (('<s>', ''), ('\n', ''), ('region1', ''), ('Region1', ''), (':', ''),
                     ('   ', ' '), ('  ', ' ')):
        text = text.replace(old, new)
    text = _REFERENCE_TAG.sub('', text.split('ASSISTANT: ')[-1]).replace('[SEG]', '')
    return ' '.join(text.split()).strip("'").strip()


def phrases_per_mask(text: str, num_masks: int) -> list[str]:
    """The phrase of each ``[SEG]``: the last ``<p>…</p>`` before it and after the previous
    ``[SEG]`` (``''`` if none), padded or cut to ``num_masks``."""
    phrases, last = [], None
    for match in _MARKUP.finditer(text):
        if match.group(0) == '[SEG]':
            phrases.append(last or '')
            last = None
        else:
            last = match.group(1).strip()
    return (phrases + [''] * num_masks)[:num_masks]


# ---------------------------------------------------------------------------------------- the loops
def refseg_record(split: RefSegSplit, predict: Predict, sample: dict,
                  protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The record of one expression: the answer, its first mask (RLE) and the overlap with the
    protocol's ground truth (:meth:`~omg_llava.evaluation.splits.RefSegSplit.gt_mask`)."""
    answer = predict(split.image_path(sample), REFSEG_PROMPT.format(sentence=sample['sentence']))
    gt = split.gt_mask(sample, protocol)
    pred = answer.masks[0] if len(answer.masks) else None
    overlap = mask_overlap(pred, gt)
    return dict(sample, answer=answer.text, has_seg=pred is not None,
                pred_mask=rle_of(pred) if pred is not None else None,
                intersection=overlap.intersection, union=overlap.union, iou=overlap.iou)


def refseg_summary(records: Sequence[dict], protocol: str = DEFAULT_PROTOCOL) -> dict:
    """cIoU / gIoU and the number of answers without [SEG]. ``corrected``: over all expressions, no
    [SEG] = empty prediction (:func:`~omg_llava.evaluation.refseg.refseg_metrics`); ``reference``:
    the released script's (:func:`~omg_llava.evaluation.refseg.reference_refseg_metrics`)."""
    overlaps = [MaskOverlap(r['intersection'], r['union']) for r in records]
    if protocol == 'reference':
        metrics = reference_refseg_metrics(overlaps, [r['has_seg'] for r in records])
    else:
        metrics = refseg_metrics(overlaps)
    metrics['num_without_seg'] = sum(not r['has_seg'] for r in records)
    return metrics


def gcg_record(split: GCGSplit, predict: Predict, sample: dict, protocol: str = DEFAULT_PROTOCOL,
               questions: Sequence[str] = GCG_QUESTIONS) -> dict:
    """The record of one image: the first answer (over ``questions`` in order) holding a ``[SEG]``,
    else the last.

    The record's ``caption`` and ``phrases`` are cleaned as the protocol does it (``corrected``:
    :func:`clean_caption` and the ``<p>…</p>`` texts; ``reference``: :func:`reference_gcg_answer`);
    ``mask_phrases`` is the phrase of each ``[SEG]`` (:func:`phrases_per_mask`). An image whose
    ground truth could not be decoded fails
    (:meth:`~omg_llava.evaluation.splits.GCGSplit.check_ground_truth`) before any answer.
    """
    split.check_ground_truth(sample)
    for k, question in enumerate(questions):
        answer = predict(split.image_path(sample), question)
        if len(answer.masks):
            break
    masks = list(answer.masks)
    if protocol == 'reference':
        caption, phrases = reference_gcg_answer(answer.text)
    else:
        caption, phrases = (
            clean_caption(answer.text),
            [p.strip() for p in PHRASE_PATTERN.findall(answer.text)],
        )
    return dict(sample, question_index=k, answer=answer.text, caption=caption, phrases=phrases,
                mask_phrases=phrases_per_mask(answer.text, len(masks)), has_seg=bool(masks),
                pred_masks=[rle_of(m) for m in masks])


def gcg_summary(split: GCGSplit, records: Sequence[dict],
                similarity: PhraseSimilarity = bag_of_words_cosine,
                java: str | bool | None = True, meteor: bool = True,
                protocol: str = DEFAULT_PROTOCOL) -> dict:
    """Mask metrics and caption metrics over the images of ``records``. The predicted phrase of each
    mask is its ``[SEG]``'s phrase (``corrected``) or the answer's phrases by position
    (``reference``)."""
    sizes = {r['image_id']: (r['height'], r['width']) for r in records}
    labels = 'phrases' if protocol == 'reference' else 'mask_phrases'
    predictions = {r['image_id']: GroundedImage(r['pred_masks'], r[labels]) for r in records}
    metrics = gcg_mask_metrics(split.ground_truth, sizes, predictions, similarity, protocol)
    metrics['num_without_seg'] = sum(not r['has_seg'] for r in records)
    metrics['phrase_similarity'] = getattr(similarity, '__name__', type(similarity).__name__)
    metrics.update(caption_metrics(split.captions, {r['image_id']: r['caption'] for r in records},
                                   java=java, meteor=meteor))
    return metrics


def region_caption_record(split: RegionCaptionSplit, predict: RegionPredict, sample: dict,
                          protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The record of one region: the answer and its description cleaned as the protocol does it
    (:func:`clean_region_caption` or :func:`reference_region_caption`)."""
    clean = reference_region_caption if protocol == 'reference' else clean_region_caption
    answer = predict(split.image_path(sample), REGION_CAPTION_PROMPT, split.region_mask(sample))
    return dict(sample, answer=answer.text, caption=clean(answer.text))


def region_caption_summary(split: RegionCaptionSplit, records: Sequence[dict],
                           java: str | bool | None = True, meteor: bool = True) -> dict:
    metrics = caption_metrics(split.captions, {r['image_id']: r['caption'] for r in records},
                              java=java, meteor=meteor)
    metrics['num_regions'] = len(records)
    return metrics


def region_qa_record(split: RegionQASplit, predict: RegionQAPredict, sample: dict,
                     protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The record of one question: the answer, the attribute words read from it and whether they are
    right."""
    answer = predict(split.image_path(sample), sample['question'], split.region_masks(sample))
    said = {attr: first_word(answer.text, split.vocabulary[attr]) for attr in split.vocabulary}
    needed = QUESTIONS[sample['question_kind']][1]
    return dict(sample, answer=answer.text, said_colour=said['colour'], said_kind=said['kind'],
                correct=all(said[attr] == sample[attr] for attr in needed))


#: The record function of each task: ``(split, predict, sample, protocol=...) -> record``.
RECORDS = {'refseg': refseg_record, 'gcg': gcg_record, 'region_caption': region_caption_record,
           'region_qa': region_qa_record}


def run_samples(split: RefSegSplit | GCGSplit | RegionCaptionSplit | RegionQASplit,
                predict: Callable,
                indices: Sequence[int], protocol: str = DEFAULT_PROTOCOL,
                progress: bool = True) -> Iterator[dict]:
    """The record of each sample of ``indices``, in order, made by the task's :data:`RECORDS`
    function.

    A sample that raises becomes ``{'index', 'error'}`` (exception type and message) and the loop
    goes on; ``KeyboardInterrupt`` and other non-``Exception`` errors stop it. Records carry the
    ``protocol`` and are JSON-normalised (what a predictions file gives back), so resumed and
    uninterrupted runs score the same records.
    """
    make = RECORDS[split.task]
    for i in tqdm(indices, desc=split.task, disable=not progress, dynamic_ncols=True):
        try:
            record = dict(make(split, predict, split.samples[i], protocol=protocol),
                          protocol=protocol)
            yield json.loads(json.dumps(record))
        except Exception as exc:  # noqa: BLE001 - one sample never stops the run; the failure is reported
            yield {'index': i, 'error': f'{type(exc).__name__}: {exc}'.strip()}


def evaluate(split: RefSegSplit | GCGSplit | RegionCaptionSplit | RegionQASplit, predict: Callable,
             out_dir: str | None = None, *,
             max_samples: int | None = None, rank: int = 0, world_size: int = 1,
             progress: bool = True,
             similarity: PhraseSimilarity = bag_of_words_cosine, java: str | bool | None = True,
             meteor: bool = True, protocol: str = DEFAULT_PROTOCOL,
             resume: bool = True) -> dict | None:
    """Run the split's task on this rank's shard, gather on rank 0, write the files and return the
    metrics.

    Args:
        split: a split from :func:`~omg_llava.evaluation.splits.load_split`.
        predict: the prediction function of the split's task (see the module docstring).
        out_dir: where each record is appended as it is made and rank 0 writes the final
            ``predictions.jsonl`` and ``metrics.json`` (nothing written when ``None``).
        max_samples: evaluate only the first N samples of the split.
        rank / world_size: this process in a distributed run.
        progress: show a progress bar (rank 0 only).
        similarity: the GCG phrase similarity.
        java / meteor: passed to :func:`~omg_llava.evaluation.captions.caption_metrics`.
        protocol: one of :data:`PROTOCOLS` (``region_qa`` has no released script: both give the same
            numbers); recorded in the metrics and in every record.
        resume: keep the records already in ``out_dir``'s predictions files
            (:func:`read_predictions`) and predict only the other samples; ``False`` starts over
            (the files are replaced).

    Returns:
        The metrics on rank 0, ``None`` on the other ranks. The scores are over the samples that did
        not fail; ``num_failed`` and ``failures`` (index, image, error) list the others,
        ``num_resumed`` the samples read back from the predictions files.

    Raises:
        ValueError: an unknown protocol; predictions in ``out_dir`` of another split or protocol.
        OSError: ``out_dir`` cannot be created or written (before any prediction).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f'protocol must be one of {PROTOCOLS}, got {protocol!r}')
    num = len(split.samples) if max_samples is None else min(max_samples, len(split.samples))
    shard = shard_range(num, rank, world_size)
    done: dict[int, dict] = {}
    sink = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        part = os.path.join(out_dir,
                            PREDICTIONS_FILE if world_size == 1
                            else f'predictions.rank{rank}.jsonl')
        if resume:
            done = {i: r for i, r in read_predictions(out_dir, split, protocol).items()
                    if i in shard}
            _drop_torn_line(part)
        else:  # each rank its own file; rank 0 the merged one and those of ranks beyond this world
            stale = (
                [part]
                if rank
                else [
                    p
                    for p in _prediction_files(out_dir)
                    if not re.search(r'\.rank([1-9]\d*)\.jsonl$', p)
                    or int(re.search(r'(\d+)\.jsonl$', p).group(1)) >= world_size
                ]
            )
            for path in stale:
                if os.path.exists(path):
                    os.remove(path)
        sink = open(part, 'a', encoding='utf-8')
    records = list(done.values())
    try:
        for record in run_samples(split, predict, [i for i in shard if i not in done], protocol,
                                  progress and rank == 0):
            records.append(record)
            if sink is not None and 'error' not in record:
                sink.write(json.dumps(record) + '\n')
                sink.flush()
                os.fsync(sink.fileno())
    finally:
        if sink is not None:
            sink.close()
    num_resumed = len(done)
    records = gather_records(records, world_size)
    if records is None:
        return None
    failures = [r for r in records if 'error' in r]
    records = [r for r in records if 'error' not in r]
    if split.task == 'refseg':
        metrics = refseg_summary(records, protocol)
    elif split.task == 'gcg':
        metrics = gcg_summary(split, records, similarity, java, meteor, protocol)
    elif split.task == 'region_qa':
        metrics = region_qa_summary(split.chance, records)
    else:
        metrics = region_caption_summary(split, records, java, meteor)
    failed = [dict(index=f['index'], image=split.image_path(split.samples[f['index']]),
                   error=f['error'])
              for f in failures]
    metrics = dict(task=split.task, protocol=protocol, num_samples=num, num_scored=len(records),
                   num_failed=len(failed), **metrics, failures=failed)
    if out_dir is not None:
        atomic_write_text(os.path.join(out_dir, PREDICTIONS_FILE),
                          ''.join(json.dumps(r) + '\n' for r in records))
        for path in _prediction_files(out_dir):
            if os.path.basename(path) != PREDICTIONS_FILE:
                os.remove(path)
        atomic_write_text(os.path.join(out_dir, METRICS_FILE),
                          json.dumps(dict(metrics, num_resumed=num_resumed),
                                                                          indent=2))
    return metrics


def _prediction_files(out_dir: str) -> list[str]:
    """``predictions.jsonl`` and the ranks' ``predictions.rank{r}.jsonl`` present in ``out_dir``."""
    ranks = sorted(glob.glob(os.path.join(glob.escape(out_dir), 'predictions.rank*.jsonl')))
    main = os.path.join(out_dir, PREDICTIONS_FILE)
    return ([main] if os.path.isfile(main) else []) + ranks


def read_predictions(out_dir: str,
                     split: RefSegSplit | GCGSplit | RegionCaptionSplit | RegionQASplit,
                     protocol: str) -> dict[int, dict]:
    """The records already in ``out_dir``'s predictions files, by sample index. A torn last line (a
    kill during a write) is dropped: that sample is predicted again.

    Raises:
        ValueError: a line that is not a record, a record of another protocol, or one whose sample
            fields differ from the split's (the files belong to another split or dataset).
    """
    records: dict[int, dict] = {}
    for path in _prediction_files(out_dir):
        with open(path, encoding='utf-8', errors='replace') as f:
            lines = f.read().split('\n')
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                index = record['index']
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines):  # no newline after it: the line a kill cut short
                    continue
                raise ValueError(f'{path}, line {number}: not a prediction record; give another '
                                 '--out-dir or start over (--no-resume)') from None
            sample = (split.samples[index] if isinstance(index, int)
                      and 0 <= index < len(split.samples) else None)
            if sample is None or any(record.get(k) != v
                                     for k, v in json.loads(json.dumps(sample)).items()):
                raise ValueError(f'{path} holds predictions of another split (its record {index} '
                                 f'is not sample {index} of this one): give another --out-dir or '
                                 'start over (--no-resume)')
            if record.get('protocol') != protocol:
                raise ValueError(f'{path} holds predictions of protocol '
                                 f'{record.get("protocol")!r}, not {protocol!r}: give another '
                                 '--out-dir or start over (--no-resume)')
            records[index] = record
    return records


def _drop_torn_line(path: str) -> None:
    """Cut a last line without newline (a kill during a write) off ``path``, so that appending
    starts a line."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, 'rb+') as f:
        data = f.read()
        if not data.endswith(b'\n'):
            f.truncate(data.rfind(b'\n') + 1)


# ----------------------------------------------------------------------------------- the model side
class ModelPredictor:
    """Greedy answers of an :class:`OMGLLaVAChat`, one single-turn conversation per prompt.

    The image is encoded once for consecutive prompts about it. Calling with a prompt answers
    through the chat; :meth:`describe_region` puts a region mask at ``<mark>`` (the chat API puts
    masks at ``<region>``).

    Args:
        chat: the chat (model and tokenizer).
        max_new_tokens: generation budget per answer.
        generation_kwargs: further ``generate`` arguments (e.g. ``repetition_penalty``); decoding
            stays greedy.
    """

    def __init__(self, chat: OMGLLaVAChat, max_new_tokens: int,
                 generation_kwargs: dict | None = None) -> None:
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.generation_kwargs = dict(generation_kwargs or {})
        self._chat_image: str | None = None
        self._encoded: tuple[str, Any, Any] | None = None  # (path, EncodedImages, SquareGeometry)

    def _new_conversation(self, image_path: str) -> None:
        """A fresh single-turn conversation about ``image_path``, re-using its encoding when it is
        the last image."""
        if image_path != self._chat_image:
            self.chat.set_image(image_path)
            self._chat_image = image_path
        else:
            self.chat.reset()

    def __call__(self, image_path: str, prompt: str) -> ChatAnswer:
        self._new_conversation(image_path)
        return self.chat.ask(prompt, max_new_tokens=self.max_new_tokens, temperature=0.0,
                             **self.generation_kwargs)

    def answer_with_regions(self, image_path: str, prompt: str,
                            region_masks: Sequence[np.ndarray]) -> ChatAnswer:
        """Answer ``prompt`` with the (H, W) ``region_masks`` (original size) at its ``<region>``
        tokens."""
        self._new_conversation(image_path)
        return self.chat.ask(prompt, regions=list(region_masks), max_new_tokens=self.max_new_tokens,
                             temperature=0.0, **self.generation_kwargs)

    def describe_region(self, image_path: str, prompt: str, region_mask: np.ndarray) -> ChatAnswer:
        """Answer ``prompt`` (one ``<mark>``) with ``region_mask`` ((H, W) bool, original size) at
        ``<mark>``."""
        model, tokenizer = self.chat.model, self.chat.tokenizer
        if self._encoded is None or self._encoded[0] != image_path:
            pixels, geometry = preprocess_image(load_image(image_path), self.chat.image_size)
            with torch.no_grad():
                encoded = model.encode_images(pixels[None].to(self.chat.device))
            self._encoded = (image_path, encoded, geometry)
        _, encoded, geometry = self._encoded
        if tuple(region_mask.shape) != geometry.original_size:
            raise ValueError(f'region mask {region_mask.shape} does not match the image size '
                             f'{geometry.original_size}')
        mask = geometry.masks_to_input(torch.from_numpy(np.asarray(region_mask, bool))[None])[0]
        ids = encode_conversation(tokenizer, [Turn(prompt)], with_image=True).input_ids
        output = model.generate(torch.tensor([ids], device=self.chat.device), images=encoded,
                                mark_prompts=[VisualPrompt('mask', mask.to(self.chat.device), 0)],
                                max_new_tokens=self.max_new_tokens, **self.generation_kwargs,
                                do_sample=False)[0]
        token_ids = output.token_ids.tolist()
        text = tokenizer.decode([i for i in token_ids if i not in model.stop_token_ids],
                                skip_special_tokens=False).strip()
        masks = [m.cpu().numpy() for m in geometry.logits_to_original(output.mask_logits) > 0] \
            if len(output.mask_logits) else []
        return ChatAnswer(text, ' '.join(TAG_PATTERN.sub(' ', text).split()),
                          [p.strip() for p in PHRASE_PATTERN.findall(text)], masks, token_ids)


__all__ = ['evaluate', 'read_predictions', 'run_samples', 'shard_range', 'gather_records',
           'refseg_record',
           'gcg_record', 'region_caption_record', 'region_qa_record', 'RECORDS', 'refseg_summary',
           'gcg_summary',
           'region_caption_summary', 'clean_caption', 'clean_region_caption',
           'reference_gcg_answer',
           'reference_region_caption', 'phrases_per_mask', 'ModelPredictor', 'PROTOCOLS',
           'DEFAULT_PROTOCOL',
           'REFSEG_PROMPT', 'GCG_QUESTIONS', 'REGION_CAPTION_PROMPT', 'MAX_NEW_TOKENS']
