"""The binding part of the tiny LLM's language stage (``train_tiny.py`` step 2), and its check.

The tiny LLM must learn to look up what follows a name ("region2 red" → "What colour is region2?"
→ "It is red.") before the language stage, or two prompts in one question stay at chance after the
finetune (docs/tiny_model.md, "Visual prompts"). It learns that from text rows
(``binding_texts.py``) in a plain loop: rows drawn at random, AdamW with a one-cycle schedule, in
two parts:

1. from random init, ``text_binding/region_colour.json`` (two region names with a colour each, the
   first wording). Whether a run learns the lookup within its iterations depends on the initial
   draw (1 of 2 seeds within 1000 iterations), so tries run side by side until one passes
   ``plain`` and ``scaled``, and the best try that passed is kept;
2. from it, ``text_binding/first_wording.json`` (region and mark names, colours and kinds): the
   lookup learnt for colours does not carry over to kinds by itself, and rows of kinds alone make
   the LLM forget the colours, so both. Two data orders run side by side; the better one that
   passes ``first_wording`` (and still ``scaled``) is kept.

The checks (200 held-out questions each, two names unless said):

* ``plain``: region names and colours, the first wording (part 1's form);
* ``scaled``: the same with the value words' input embeddings multiplied by ``VALUE_SCALE``, the
  scale of the prompt embeddings the finetune feeds at those positions (norm about 70 where the
  tiny LLM's word embeddings have about 0.3): an LLM that binds at that scale binds prompts as
  well (one that did not lost the binding in the language stage);
* ``first_wording``: every naming and attribute, the first wording (part 2's form);
* ``every_wording`` and ``three_names``: every naming, attribute and wording, with two and with
  three names (reported; the language stage teaches them).

A question counts as right when the answer about the asked value is more likely than the answers
about the other listed values (teacher-forced log-likelihood): chance is 1/2 with two names, 1/3
with three.

    python projects/tiny_omg_llava/name_binding.py --data-root WORK/data/synthetic_shapes \\
        --out WORK/name_binding

writes ``OUT/llm/`` (a Hugging Face folder, the language stage's start; each try's in
``OUT/part<k>_seed<seed>/llm/``) and ``OUT/binding_checks.json`` (each try's part, seed, checks,
losses and time).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

from omg_llava.models.language_model_trainer import LANGUAGE_MODEL_FOLDER

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
LANGUAGE_CONFIG = os.path.join(REPO_ROOT, 'configs/tiny/llm_tiny_synthetic.py')
VALUE_SCALE = 300.0  # prompt-embedding norm (about 70) / value-word embedding norm (about 0.25)
CHECK_QUESTIONS = 200
#: question forms of the checks → ``binding_turns``'s (first_wording, narrow)
FORMS = {'region_colour': (True, True), 'first_wording': (True, False), 'every': (False, False)}


def build_language_model(config_path: str, seed: int):
    """The language stage's ``LanguageModelTrainer`` (tokenizer with the OMG-LLaVA special tokens),
    its LLM built directly from the config's ``tiny_llm`` architecture with the vocabulary already
    sized for those tokens, under ``torch.manual_seed(seed)``."""
    from mmengine.config import Config

    from omg_llava.models import LanguageModelTrainer
    from omg_llava.models.special_tokens import add_special_tokens
    from omg_llava.registry import build_component
    cfg = Config.fromfile(config_path)
    tokenizer = build_component(cfg.tokenizer)
    vocabulary = add_special_tokens(tokenizer).num_embeddings
    architecture = dict(cfg.tiny_llm.config)
    config_class = architecture.pop('type')
    torch.manual_seed(seed)
    llm = cfg.tiny_llm.type(config_class(**dict(architecture, vocab_size=vocabulary)))
    return LanguageModelTrainer(llm=llm, tokenizer=tokenizer), cfg


def _value_positions(ids: list[int], prompt_end: int, value_ids: list[list[int]]) -> list[int]:
    """Positions before ``prompt_end`` where one of the value words' token sequences occurs."""
    found = []
    for pieces in value_ids:
        for start in range(prompt_end - len(pieces) + 1):
            if ids[start:start + len(pieces)] == pieces:
                found.extend(range(start, start + len(pieces)))
    return found


@torch.no_grad()
def binding_accuracy(llm, tokenizer, names: int, value_scale: float = 1.0, form: str = 'every',
                     questions: int = CHECK_QUESTIONS, seed: int = 0) -> float:
    """Share of ``questions`` held-out binding questions (``names`` entries, of :data:`FORMS`
    ``form``; ``np.random.default_rng([6, seed, names, k])`` for the k-th form) whose asked
    value's answer is the most likely among the listed values' answers, with the listed values'
    input embeddings multiplied by ``value_scale``.

    Args:
        llm: a causal LM taking ``inputs_embeds`` (B, S, D) and returning ``logits`` (B, S, V).
        tokenizer: its tokenizer (chat template of ``encode_conversation``).
    """
    from binding_texts import VALUES, binding_turns

    from omg_llava.utils.conversation import Turn, encode_conversation
    first_wording, narrow = FORMS[form]
    rng = np.random.default_rng([6, seed, names, list(FORMS).index(form)])
    embed = llm.get_input_embeddings()
    right = 0
    for _ in range(questions):
        turns, asked = binding_turns(rng, names, 1, first_wording, narrow)
        question, value = turns[0][0], asked[0][1]
        words = next(w for w, _ in VALUES.values() if value in w)
        template = next(a for w, a in VALUES.values() if value in w)
        listed = [w for w in words if f' {w},' in question or f' {w}.' in question]
        value_ids = [tokenizer.encode(w, add_special_tokens=False) for w in listed]
        scores = []
        for candidate in listed:
            encoded = encode_conversation(tokenizer, [Turn(question, template.format(v=candidate))],
                                          with_image=False)
            ids, labels = encoded.input_ids, torch.tensor(encoded.labels)
            prompt_end = int((labels != -100).nonzero()[0])
            scale = torch.ones(len(ids), 1)
            positions = _value_positions(ids, prompt_end, value_ids)
            if len(positions) < len(listed):
                raise ValueError(f'value words not found in the tokenised question {question!r}')
            scale[positions] = value_scale
            inputs = embed(torch.tensor([ids])) * scale
            logits = llm(inputs_embeds=inputs, use_cache=False, return_dict=True).logits[0]
            log_probs = torch.log_softmax(logits[:-1].float(), dim=-1)
            targets = labels[1:]
            supervised = targets != -100
            scores.append(float(log_probs[supervised, targets[supervised]].sum()))
        right += listed[int(np.argmax(scores))] == value
    return right / questions


def binding_checks(llm, tokenizer, seed: int = 0) -> dict:
    """The accuracies of the module docstring (``plain``, ``scaled``, ``first_wording``,
    ``every_wording``, ``three_names``)."""
    was_training = llm.training
    llm.eval()
    checks = dict(plain=binding_accuracy(llm, tokenizer, 2, form='region_colour', seed=seed),
                  scaled=binding_accuracy(llm, tokenizer, 2, VALUE_SCALE, 'region_colour',
                                          seed=seed),
                  first_wording=binding_accuracy(llm, tokenizer, 2, form='first_wording',
                                                 seed=seed),
                  every_wording=binding_accuracy(llm, tokenizer, 2, seed=seed),
                  three_names=binding_accuracy(llm, tokenizer, 3, seed=seed))
    llm.train(was_training)
    return checks


def train_binding(model, rows_file: str, cfg, iters: int, batch: int, lr: float,
                  seed: int) -> list[float]:
    """``iters`` AdamW steps (one-cycle to ``lr``, gradient norm clipped at 1) on ``batch`` rows
    drawn at random from ``rows_file`` each; returns the loss every 50 steps."""
    from omg_llava.datasets import LLaVADataset
    from omg_llava.datasets.collate import omg_llava_collate_fn
    rows = LLaVADataset(data_path=rows_file, image_folder='', tokenizer=model.tokenizer,
                        image_size=cfg.image_size, max_length=cfg.max_length)
    draw = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iters)
    model.train()
    losses, running = [], 0.0
    for step in range(1, iters + 1):
        data = omg_llava_collate_fn([rows[draw.randrange(len(rows))] for _ in range(batch)])['data']
        loss = model(data)['loss_lm']
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % 50 == 0:
            losses.append(round(running / 50, 4))
            running = 0.0
            if not math.isfinite(losses[-1]):
                break
    return losses


def binding_try(config: str, rows_file: str, out: str, start: str | None, iters: int,
                batch: int, lr: float, seed: int, threads: int) -> dict:
    """One try on ``threads`` threads: from ``start`` (a Hugging Face folder; ``None``: random init
    drawn from ``seed``), ``iters`` steps on ``rows_file`` in the data order of ``seed``, then the
    checks; exports to ``out/``. Returns its record (seed, checks, losses, seconds, folder)."""
    from omg_llava.models import LanguageModelTrainer
    from omg_llava.models.llm import InternLM2ForCausalLM
    torch.set_num_threads(threads)
    began = time.perf_counter()
    model, cfg = build_language_model(config, seed)
    if start is not None:
        model = LanguageModelTrainer(llm=InternLM2ForCausalLM.from_pretrained(start),
                                     tokenizer=model.tokenizer)
    losses = train_binding(model, rows_file, cfg, iters, batch, lr, seed)
    checks = binding_checks(model.llm, model.tokenizer)
    folder = model.export(out)[0]
    return dict(seed=seed, seconds=round(time.perf_counter() - began, 1), losses_every_50=losses,
                llm=folder, **checks)


def run_tries(part: int, jobs: list[tuple], parallel: int, passes) -> tuple[dict, list[dict]]:
    """Run ``binding_try`` argument tuples ``parallel`` at a time until one passes; returns the
    best by ``passes``' score among those that passed (else among all) and every record."""
    tries: list[dict] = []
    while jobs and not any(t['passed'] for t in tries):
        batch, jobs = jobs[:parallel], jobs[parallel:]
        if len(batch) == 1:
            results = [binding_try(*batch[0])]
        else:
            with multiprocessing.get_context('spawn').Pool(len(batch)) as pool:
                results = pool.starmap(binding_try, batch)
        for record in results:
            record.update(part=part, passed=passes(record) >= 1)
            tries.append(record)
            print(f'[name binding] part {part}, seed {record["seed"]}: '
                  + ', '.join(f'{k} {record[k]:.3f}' for k in CHECK_NAMES)
                  + f' ({"passed" if record["passed"] else "failed"}, {record["seconds"]:.0f} s)',
                  flush=True)
    chosen = max((t for t in tries if t['passed']), key=passes, default=max(tries, key=passes))
    return chosen, tries


CHECK_NAMES = ('plain', 'scaled', 'first_wording', 'every_wording', 'three_names')


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', required=True, help='the synthetic_shapes.py folder')
    parser.add_argument('--out', required=True, help='writes OUT/llm/ and OUT/binding_checks.json')
    parser.add_argument('--config', default=LANGUAGE_CONFIG,
                        help='the language stage config (architecture, tokenizer, max_length)')
    parser.add_argument('--iters', type=int, nargs=2, default=(1000, 1500),
                        metavar=('PART1', 'PART2'), help='steps per try of each part')
    parser.add_argument('--batch', type=int, default=8, help='rows per step')
    parser.add_argument('--lr', type=float, default=1e-3, help='peak learning rate')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first try')
    parser.add_argument('--tries', type=int, default=6,
                        help="part 1's tries at most (seeds SEED, SEED + 1, ...) until one passes; "
                             'part 2 tries --parallel data orders')
    parser.add_argument('--parallel', type=int, default=min(2, os.cpu_count() or 1),
                        help='tries run side by side (one share of the cores each); default 2 on '
                             '2 or more cores')
    parser.add_argument('--min-plain', type=float, default=0.9,
                        help="part 1: the accuracy of its form a try must reach")
    parser.add_argument('--min-scaled', type=float, default=0.75,
                        help='part 1: the same with the values scaled')
    parser.add_argument('--min-first-wording', type=float, default=0.9,
                        help="part 2: the accuracy of its form a try must reach")
    args = parser.parse_args(argv)
    rows = {name: os.path.join(args.data_root, 'text_binding', f'{name}.json')
            for name in ('region_colour', 'first_wording')}
    for path in rows.values():
        if not os.path.isfile(path):
            parser.error(f'{path} not found: write the data with synthetic_shapes.py first')
    if min(args.tries, args.parallel, *args.iters) < 1:
        parser.error('--tries, --parallel and --iters must be at least 1')
    threads = max(1, (os.cpu_count() or 1) // args.parallel)

    def jobs(part: int, start: str | None, seeds: range) -> list[tuple]:
        return [(args.config, rows[('region_colour', 'first_wording')[part - 1]],
                 os.path.join(args.out, f'part{part}_seed{seed}'), start, args.iters[part - 1],
                 args.batch, args.lr, seed, threads) for seed in seeds]

    first, tries = run_tries(
        1, jobs(1, None, range(args.seed, args.seed + args.tries)), args.parallel,
        lambda t: min(t['plain'] / args.min_plain, t['scaled'] / args.min_scaled))
    second, more = run_tries(
        2, jobs(2, first['llm'], range(args.seed, args.seed + args.parallel)), args.parallel,
        lambda t: min(t['first_wording'] / args.min_first_wording,
                      t['scaled'] / args.min_scaled))
    folder = os.path.join(args.out, LANGUAGE_MODEL_FOLDER)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    shutil.copytree(second['llm'], folder)
    result = dict(tries=tries + more, passed=first['passed'] and second['passed'],
                  chosen_seeds=[first['seed'], second['seed']], llm=folder,
                  thresholds=dict(plain=args.min_plain, scaled=args.min_scaled,
                                  first_wording=args.min_first_wording))
    with open(os.path.join(args.out, 'binding_checks.json'), 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=2)
    if not result['passed']:
        print('[name binding] a part had no try that passed its checks; kept the best: two '
              'prompts in one question will likely stay at chance', flush=True)
    return result


if __name__ == '__main__':
    main()
