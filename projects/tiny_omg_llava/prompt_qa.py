"""Colour and shape questions about a point, a box or a mask prompt, on held-out images (chat API).

    python projects/tiny_omg_llava/prompt_qa.py                 # the built-in model
    python projects/tiny_omg_llava/prompt_qa.py --work-dir work_dirs/tiny_synthetic   # a run's

Val image ``k`` is ``sample_scene(default_rng([0, 1, k]))`` (the images of ``synthetic_shapes.py``'s
val split, which no training file shows), JPEG-compressed as the data files are. On each image two
objects are prompted (of different colours and kinds where the image has such a pair), each one
with every prompt kind (a random interior point at ``<mark>``, its box or its mask at ``<region>``),
and asked its colour and its shape in one of :data:`WORDINGS` (they take turns over images, kinds
and attributes): the inline form the docs and the app suggest ("What colour is <region>?") and the
released model's templates with one prompt and with two ("There are some regions: region1
<region>, region2 <region>." then "What colour is region2?"). Every question starts a new
conversation (``OMGLLaVAChat.reset``): 12 questions per image.

An answer is right when the first colour (shape) word it names is the object's. ``distinct`` is,
over the (image, prompt kind, wording, attribute) cases whose two objects differ in that attribute,
the share where the two answers name different words: whether different regions of one image get
their own answers. ``by_kind`` and ``distinct`` count every wording; ``by_kind_one_prompt`` and
``distinct_one_prompt`` only the questions with one prompt (the inline form and the one-prompt
templates), so that what a question about one region gets is told apart from the two-prompt
questions, where the name (``region2``) has to be bound to its prompt.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import defaultdict

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shapes_scene import COLOURS, KINDS, Scene, sample_scene  # noqa: E402
from synthetic_shapes import JPEG_QUALITY  # noqa: E402
from tiny_data_formats import random_interior_point  # noqa: E402

PROMPT_KINDS = ('point', 'box', 'mask')
ATTRIBUTES = {'colour': 'colour', 'shape': 'kind'}  # asked attribute → Obj field
QUESTION = {'colour': 'What colour is {p}?', 'shape': 'What shape is {p}?'}
#: how a question names its prompt: inline, or the released template with one or two prompts
WORDINGS = ('inline', 'template', 'template_two')
ONE_PROMPT_WORDINGS = ('inline', 'template')
PLACEHOLDER = {'point': '<mark>', 'box': '<region>', 'mask': '<region>'}
NAMES = {'point': 'Mark {i}', 'box': 'region{i}', 'mask': 'region{i}'}
PREAMBLE = {'point': 'There are some marks: {names}.\n',
            'box': 'There are some regions: {names}.\n',
            'mask': 'There are some regions: {names}.\n'}


def val_scene(k: int, seed: int = 0) -> tuple[Scene, np.ndarray]:
    """Val image ``k`` of ``synthetic_shapes.py`` and its (128, 128, 3) pixels after the data
    files' JPEG round trip."""
    scene = sample_scene(np.random.default_rng([seed, 1, k]), 128)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format='JPEG', quality=JPEG_QUALITY, subsampling=0)
    return scene, np.asarray(Image.open(buffer).convert('RGB'))


def prompted_pair(scene: Scene) -> tuple[int, int]:
    """Two objects that differ in as many of colour and kind as the image allows (the first such
    pair)."""
    objects = scene.objects
    pairs = [(i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))]
    return max(pairs, key=lambda p: (objects[p[0]].colour != objects[p[1]].colour)
               + (objects[p[0]].kind != objects[p[1]].kind))


def prompt_value(scene: Scene, index: int, kind: str, rng: np.random.Generator):
    """The prompt of ``kind`` on object ``index``: (x, y), (x1, y1, x2, y2) or an (H, W) bool
    mask, in image pixels."""
    obj = scene.objects[index]
    if kind == 'point':
        return tuple(random_interior_point(obj.mask, rng))
    if kind == 'box':
        x, y, w, h = obj.bbox
        return (x, y, x + w, y + h)
    return obj.mask


def question(kind: str, attribute: str, wording: str, asked: int) -> str:
    """The question text; ``asked`` (0 or 1) is which of the two prompts ``template_two`` asks
    about."""
    if wording == 'inline':
        return QUESTION[attribute].format(p=PLACEHOLDER[kind])
    count = 2 if wording == 'template_two' else 1
    names = ', '.join(f'{NAMES[kind].format(i=i)} {PLACEHOLDER[kind]}' for i in range(1, count + 1))
    name = NAMES[kind].format(i=asked + 1 if count == 2 else 1)
    return PREAMBLE[kind].format(names=names) + QUESTION[attribute].format(p=name)


def make_cases(num_images: int, first: int = 0, seed: int = 0, wordings=WORDINGS) -> list[dict]:
    """The questions of ``num_images`` val images from ``first``: per image, prompt kind and
    attribute one wording (they take turns), asked about each of the two objects."""
    cases = []
    for k in range(first, first + num_images):
        scene, _ = val_scene(k, seed)
        pair = prompted_pair(scene)
        rng = np.random.default_rng([seed, 7, k])
        for n, (kind, attribute) in enumerate((p, a) for p in PROMPT_KINDS for a in ATTRIBUTES):
            wording = wordings[(k + n) % len(wordings)]
            for slot, index in enumerate(pair):
                # template_two lists both objects (in a random order) and asks about this one
                listed = [index] if wording != 'template_two' else (
                    list(pair) if rng.uniform() < 0.5 else list(pair[::-1]))
                cases.append(dict(
                    image=k, kind=kind, attribute=attribute, wording=wording, slot=slot,
                    object=index, listed=listed,
                    question=question(kind, attribute, wording, listed.index(index)),
                    truth=getattr(scene.objects[index], ATTRIBUTES[attribute]),
                    prompts=[prompt_value(scene, i, kind, rng) for i in listed]))
    return cases


def ask_cases(chat, cases: list[dict], seed: int = 0, max_new_tokens: int = 16) -> list[dict]:
    """Ask every case (a new conversation each); adds ``answer``, ``said`` and ``correct``."""
    from omg_llava.evaluation.region_qa import first_word
    vocabulary = {'colour': list(COLOURS), 'shape': list(KINDS)}
    current = None
    for case in cases:
        if case['image'] != current:
            chat.set_image(val_scene(case['image'], seed)[1])
            current = case['image']
        chat.reset()
        prompts = {'points' if case['kind'] == 'point' else 'regions': case['prompts']}
        answer = chat.ask(case['question'], max_new_tokens=max_new_tokens, **prompts)
        case['answer'] = answer.text
        case['said'] = first_word(answer.text, vocabulary[case['attribute']])
        case['correct'] = case['said'] == case['truth']
    return cases


def summary(cases: list[dict]) -> dict:
    """Accuracy per prompt kind x attribute (all wordings, and one-prompt questions only), per
    wording x attribute and overall, and the ``distinct`` shares (see the module docstring)."""
    def accuracy(rows):
        return round(sum(r['correct'] for r in rows) / len(rows), 4) if rows else None

    def per_kind(rows):
        groups = defaultdict(list)
        for case in rows:
            groups[case['kind'], case['attribute']].append(case)
        return {kind: {a: accuracy(groups[kind, a]) for a in ATTRIBUTES} for kind in PROMPT_KINDS}

    by_wording_rows = defaultdict(list)
    for case in cases:
        by_wording_rows[case['wording'], case['attribute']].append(case)
    by_wording = {w: {a: accuracy(by_wording_rows[w, a]) for a in ATTRIBUTES} for w in WORDINGS
                  if any(by_wording_rows[w, a] for a in ATTRIBUTES)}
    by_kind = per_kind(cases)
    by_kind_one_prompt = per_kind([c for c in cases if c['wording'] in ONE_PROMPT_WORDINGS])
    differing = differing_pairs(cases)
    one_prompt = [p for p in differing if p[0]['wording'] in ONE_PROMPT_WORDINGS]
    return dict(by_kind=by_kind, by_kind_one_prompt=by_kind_one_prompt, by_wording=by_wording,
                accuracy=accuracy(cases), num_questions=len(cases),
                num_images=len({c['image'] for c in cases}),
                distinct=distinct_share(differing), num_distinct_cases=len(differing),
                distinct_one_prompt=distinct_share(one_prompt),
                num_distinct_cases_one_prompt=len(one_prompt),
                chance=dict(colour=1 / len(COLOURS), shape=1 / len(KINDS)))


def differing_pairs(cases: list[dict]) -> list[dict]:
    """The (image, prompt kind, wording, attribute) pairs of questions (slot 0 and slot 1) whose
    two objects differ in the asked attribute."""
    pairs = defaultdict(dict)
    for case in cases:
        key = case['image'], case['kind'], case['wording'], case['attribute']
        pairs[key][case['slot']] = case
    return [p for p in pairs.values() if len(p) == 2 and p[0]['truth'] != p[1]['truth']]


def distinct_share(pairs: list[dict]) -> float | None:
    """The share of ``pairs`` whose two answers name different words (``None`` without pairs)."""
    if not pairs:
        return None
    return round(sum(p[0]['said'] != p[1]['said'] for p in pairs) / len(pairs), 4)


def format_table(metrics: dict) -> str:
    """The per-kind tables (prompt kind x colour / shape; all wordings, then one-prompt questions),
    the per-wording one, the ``distinct`` shares."""
    def cell(value):
        return '     -' if value is None else f'{value:>6.3f}'

    def rows(table):
        return [f'  {name:<13} {cell(row["colour"])} {cell(row["shape"])}'
                for name, row in table.items()]

    def share(value):
        return '-' if value is None else f'{value:.3f}'

    chance = metrics['chance']
    # metrics.json files written before the one-prompt figures existed have the other lines only
    one_prompt = ([] if 'by_kind_one_prompt' not in metrics else
                  ['  prompt kind   colour  shape   (one prompt per question)',
                   *rows(metrics['by_kind_one_prompt'])])
    distinct_one_prompt = ('' if 'distinct_one_prompt' not in metrics else
                           f'; one prompt per question: {share(metrics["distinct_one_prompt"])} '
                           f'({metrics["num_distinct_cases_one_prompt"]} pairs)')
    return '\n'.join(
        ['  prompt kind   colour  shape   (every wording)', *rows(metrics['by_kind']),
         *one_prompt,
         '  wording       colour  shape', *rows(metrics['by_wording']),
         f'  two objects that differ get different answers: {share(metrics["distinct"])} '
         f'({metrics["num_distinct_cases"]} pairs){distinct_one_prompt}',
         f'  {metrics["num_questions"]} questions on {metrics["num_images"]} images; chance '
         f'colour {chance["colour"]:.3f}, shape {chance["shape"]:.3f}'])


def build_chat(work_dir: str | None):
    """The built-in model, or the one ``train_tiny.py`` wrote into ``work_dir``."""
    from omg_llava.inference.chat import OMGLLaVAChat
    from omg_llava.inference.defaults import DEFAULT_CONFIG
    if work_dir is None:
        from omg_llava.assets import TINY_SYNTHETIC_PTH
        return OMGLLaVAChat.from_config(DEFAULT_CONFIG, pth=TINY_SYNTHETIC_PTH)[0]
    from omg_llava.models.omg_seg_trainer import ENCODER_FILES
    files = {k: os.path.join(work_dir, name) for k, name in ENCODER_FILES.items()}
    pth = os.path.join(work_dir, 'omg_llava_tiny_synthetic.pth')
    return OMGLLaVAChat.from_config(DEFAULT_CONFIG, pth=pth, **files)[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', help="a train_tiny.py work dir (default: the built-in "
                                           'model); the metrics go to '
                                           'WORK_DIR/test/prompt_qa/metrics.json')
    parser.add_argument('--images', type=int, default=50, help='val images (default 50)')
    parser.add_argument('--out', help='write the metrics and every answer to this JSON file')
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f'--images must be at least 1, got {args.images}')
    chat = build_chat(args.work_dir)
    metrics = summary(ask_cases(chat, cases := make_cases(args.images)))
    print(format_table(metrics))
    out = args.out
    if out is None and args.work_dir:
        out = os.path.join(args.work_dir, 'test', 'prompt_qa', 'metrics.json')
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        records = [{k: v for k, v in c.items() if k != 'prompts'} for c in cases]
        with open(out, 'w', encoding='utf-8') as f:
            json.dump(dict(metrics, answers=records), f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
