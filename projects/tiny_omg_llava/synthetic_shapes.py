"""Synthetic visual-grounding data (coloured shapes), written in the on-disk formats of the real
OMG-LLaVA sources.

Every text is derived from the drawn attributes, so it is true by construction: referring
expressions that pick out exactly one object, grounded captions, region descriptions and point QA.
The point is to prove that the whole training loop learns: a tiny OMG-LLaVA trained on it on CPU
has to reach a referring cIoU of 0.75 on held-out images, so the task must be learnable at 128 px
yet not solvable without reading the expression. The pieces, by concern:

* ``shapes_scene.py``: drawing a scene (colours, kinds, sizes, backgrounds; its docstring gives the
  choices made for learnability);
* ``shapes_expressions.py``: the referring-expression grammar and its unambiguity rules;
* ``shapes_texts.py``: captions, region descriptions and conversations;
* ``tiny_data_formats.py``: the file writer and format pieces shared with ``build_tiny_data.py``;
* this file: one row per source format for each image, and the files (masks as COCO RLE, exact at
  this resolution; polygons would lose boundary pixels of 20 px shapes).

The tree mirrors ``build_tiny_data.py``'s, so the tiny configs read either root:

    python projects/tiny_omg_llava/synthetic_shapes.py --root data/synthetic_shapes \\
        --train 2000 --val 200
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from tqdm import tqdm

from binding_texts import BINDING_FILES, binding_file_rows
# EXPRESSION_KINDS, CATEGORIES, expression_kind, referring_expressions, sample_scene: re-exported,
# the generator's public face for image_use.py, referring_figures.py and the tests
from shapes_expressions import (EXPRESSION_KINDS, Query, expression_kind,  # noqa: F401
                                expression_queries, pick_sentences, referring_expressions)
from shapes_scene import CATEGORIES, COLOURS, KINDS, Obj, Scene, sample_scene  # noqa: F401
from shapes_texts import (caption, image_first, inline_conversation, instruct_conversation,
                          point_conversation, region_conversation, region_description)
from tiny_data_formats import (DataWriter, disk_size, interior_point, messages,  # noqa: F401
                               random_interior_point, refer_sentences, rle)

MAX_MARKS = 4  # points per MDPV row
BOX_REGION_SHARE = 0.3  # region prompts given as the object's filled box (what a box prompt covers)
JPEG_QUALITY = 90
COCO_IMAGES = ('glamm_data', 'images', 'coco2014', 'train2014')
# our split → COCO folder (OMG-Seg pre-stage)
COCO_INSTANCE_SPLITS = {'train': 'train2017', 'val': 'val2017'}
ANNOTATION_FILES = {  # rows of the training sources → file under the root
    'grandf_gcg': 'glamm_data/annotations/GranDf_HA_GCG_train.json',
    'osprey_detail_description': 'region_caption/osprey/osprey_detail_description.json',
    'osprey_conversation': 'region_caption/osprey/osprey_conversation.json',
    'mdpv_point': 'mdpv_point/gpt4v_tiny_point.json',
    'prompt_conversation': 'visual_prompts/prompt_conversation.json',
    'llava_pretrain': 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json',
    'llava_instruct': 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json',
}



def _refs(queries: list[tuple[int, Query]], anns: list[dict], split: str, ref_id: int, sent_id: int,
          rng: np.random.Generator) -> list[dict]:
    """REFER refs of one image: one per object with an expression, ids counted on from ``ref_id``
    and ``sent_id``."""
    refs = []
    for index, ann in enumerate(anns):
        sentences = pick_sentences([e for e in queries if e[0] == index], rng)
        if not sentences:
            continue
        ids = list(range(sent_id, sent_id + len(sentences)))
        sent_id += len(sentences)
        refs.append(dict(ref_id=ref_id + len(refs), ann_id=ann['id'], image_id=ann['image_id'],
                         category_id=ann['category_id'], split=split, sent_ids=ids,
                         file_name=f'COCO_train2014_{ann["image_id"]:012d}.jpg',
                         sentences=refer_sentences(sentences, ids[0])))
    return refs


def _grandf_row(w: DataWriter, n: int, image_path: str, text: str,
                spans: list[tuple[int, int, int]], anns: list[dict]) -> dict:
    """GranD-f GCG: the caption, each object phrase grounded by its RLE."""
    name = f'sa_{n:06d}.jpg'
    w.link(image_path, 'glamm_data', 'images', 'grandf', 'train', name)
    return dict(file_name=name, caption=text, groundings={
        text[s:e]: dict(token_positives=[s, e], rle_masks=[anns[i]['segmentation']])
        for s, e, i in spans})


def _prompted_objects(scene: Scene, rng: np.random.Generator, most: int) -> list[int]:
    """One to ``most`` objects in random order (any of them may be prompt 1)."""
    count = int(rng.integers(1, min(most, len(scene.objects)) + 1))
    return [int(i) for i in rng.permutation(len(scene.objects))[:count]]


def _region_prompt(obj: Obj, rng: np.random.Generator) -> dict:
    """A region prompt on ``obj``: its mask or (BOX_REGION_SHARE of the time) its filled box."""
    if rng.uniform() >= BOX_REGION_SHARE:
        return dict(bbox=list(obj.bbox), segmentation=rle(obj.mask))
    x, y, w, h = obj.bbox
    box = np.zeros_like(obj.mask)
    box[y:y + h, x:x + w] = True
    return dict(bbox=list(obj.bbox), segmentation=rle(box))


def _osprey_rows(scene: Scene, entry: dict, anns: list[dict], rng: np.random.Generator
                 ) -> tuple[dict, dict]:
    """Osprey: the description row (every object a region) and the conversation row (some
    objects, in random order, as regions)."""
    description = dict(entry, annotation=[dict(bbox=a['bbox'], segmentation=a['segmentation'])
                                          for a in anns],
                       description=[f'<region{r}>: {region_description(scene, r - 1)}'
                                    for r in range(1, len(anns) + 1)])
    chosen = _prompted_objects(scene, rng, len(scene.objects))
    regions = [_region_prompt(scene.objects[i], rng) for i in chosen]
    return description, dict(entry, annotation=regions,
                             conversations=messages(region_conversation(scene, chosen, rng)))


def _mdpv_row(w: DataWriter, scene: Scene, n: int, image_path: str,
              rng: np.random.Generator) -> dict:
    """MDPV point QA: marks at random interior points of 1 to MAX_MARKS objects, in random
    order."""
    marked = _prompted_objects(scene, rng, MAX_MARKS)
    name = f'synthetic_{n:06d}.jpg'
    w.link(image_path, 'mdpv_point', 'images', name)
    return dict(id=f'synthetic_{n}', image=name,
                points=[random_interior_point(scene.objects[i].mask, rng) for i in marked],
                conversations=messages(point_conversation(scene, marked, rng)))


def _prompt_row(scene: Scene, entry: dict, rng: np.random.Generator) -> dict:
    """A conversation with ``<region>`` / ``<mark>`` in its questions
    (``PromptConversationDataset``)."""
    turns, prompts = inline_conversation(scene, rng)
    regions = [_region_prompt(scene.objects[i], rng) for kind, i in prompts if kind == 'region']
    points = [random_interior_point(scene.objects[i].mask, rng)
              for kind, i in prompts if kind == 'mark']
    return dict(entry, regions=regions, points=points, conversations=messages(image_first(turns)))


def _llava_rows(w: DataWriter, scene: Scene, n: int, image_path: str, text: str,
                expressions: list[tuple[int, str]], rng: np.random.Generator) -> tuple[dict, dict]:
    """LLaVA-Pretrain (one caption turn) and LLaVA-Instruct (three turns) rows."""
    pretrain_name = f'{n // 10000:05d}/{n:09d}.jpg'  # LLaVA-Pretrain's '00453/004539375.jpg' naming
    w.link(image_path, 'llava_data', 'LLaVA-Pretrain', 'images', pretrain_name)
    questions = ('Describe the image briefly.', 'Give a short caption of this picture.')
    question = questions[int(rng.integers(2))]
    pretrain = dict(id=f'{n:09d}', image=pretrain_name,
                    conversations=messages([(f'{question}\n<image>', text)]))
    instruct_name = f'coco/train2017/{n:012d}.jpg'
    w.link(image_path, 'llava_data', 'llava_images', instruct_name)
    turns = instruct_conversation(scene, expressions, rng)
    return pretrain, dict(id=f'{n:012d}', image=instruct_name, conversations=messages(turns))


def _write_ade20k(w: DataWriter, scene: Scene, n: int, image_path: str) -> None:
    """ADE20K: the image and its label map of the kinds (kind index + 1, 0 = background)."""
    stem = f'ADE_train_{n:08d}'
    w.link(image_path, 'ade20k', 'ADEChallengeData2016', 'images', 'training', stem + '.jpg')
    label = np.zeros(scene.image.shape[:2], np.uint8)
    for obj in scene.objects:
        label[obj.mask] = KINDS.index(obj.kind) + 1
    w.label(label, 'ade20k', 'ADEChallengeData2016', 'annotations', 'training', stem + '.png')


def _write_train_sources(w: DataWriter, scene: Scene, n: int, image_path: str, entry: dict,
                         anns: list[dict], expressions: list[tuple[int, str]],
                         rng: np.random.Generator, rows: dict[str, list]) -> None:
    """GranD-f GCG, Osprey, MDPV, prompt-conversation, LLaVA and ADE20K rows of the ``n``-th
    training image (images hard-linked), in a fixed order: the random draws of each format follow
    the previous ones."""
    text, spans = caption(scene)
    rows['grandf_gcg'].append(_grandf_row(w, n, image_path, text, spans, anns))
    description, conversation = _osprey_rows(scene, entry, anns, rng)
    rows['osprey_detail_description'].append(description)
    # every image has a row of both released prompt templates (regions, marks) and one with
    # <region> / <mark> inline
    rows['osprey_conversation'].append(conversation)
    rows['mdpv_point'].append(_mdpv_row(w, scene, n, image_path, rng))
    rows['prompt_conversation'].append(_prompt_row(scene, entry, rng))
    pretrain, instruct = _llava_rows(w, scene, n, image_path, text, expressions, rng)
    rows['llava_pretrain'].append(pretrain)
    rows['llava_instruct'].append(instruct)
    _write_ade20k(w, scene, n, image_path)


def _region_question_row(scene: Scene, image: str, anns: list[dict]) -> dict:
    """One row of the held-out region-question manifest: every object's mask, colour and kind."""
    H, W = scene.image.shape[:2]
    return dict(image=image, height=H, width=W, regions=[
        dict(segmentation=a['segmentation'], bbox=a['bbox'], colour=o.colour, kind=o.kind,
             size=o.size_class,
             answer=f'{o.colour} {o.kind}') for a, o in zip(anns, scene.objects)])


def write_dataset(root: str, num_train: int, num_val: int, size: int = 128, seed: int = 0,
                  num_test: int | None = None) -> dict[str, int]:
    """Write the synthetic data set under ``root`` in the layout of ``build_tiny_data.py``.

    Image ``k`` of each split is drawn from ``np.random.default_rng([seed, split, k])``, so an image
    does not depend on the other counts. All images live in
    ``glamm_data/images/coco2014/train2014/`` (REFER and Osprey read them there); the training ones
    are hard-linked into the GranD-f, MDPV, LLaVA and ADE20K folders.

    Args:
        root: output folder (created; files of the same names are overwritten).
        num_train: training images: REFER 'train' refs and every other source.
        num_val: held-out images with REFER 'val' refs; also listed in
            ``region_questions_val.json``.
        size: image side in pixels.
        seed: seed of everything random.
        num_test: held-out images with REFER 'testA' refs (``num_val`` by default).

    Returns:
        Rows per annotation file (for REFER: images per split, and refs), as the dataset classes
        count them.
    """
    if num_train < 1:
        raise ValueError('num_train must be ≥ 1 (the training sources need images), got '
                         f'{num_train}')
    w = DataWriter(root, jpeg_quality=JPEG_QUALITY, jpeg_subsampling=0)  # 4:4:4: sharp colour edges
    rows: dict[str, list] = {k: [] for k in (*ANNOTATION_FILES, 'region_questions_val')}
    images, annotations, refs, sentences = [], [], [], 0
    # split → (images, annotations)
    coco_splits = {split: ([], []) for split in COCO_INSTANCE_SPLITS}
    splits = (('train', num_train), ('val', num_val),
              ('testA', num_val if num_test is None else num_test))
    for code, (split, count) in enumerate(splits):
        for k in tqdm(range(count), desc=f'{split} images', leave=False):
            rng = np.random.default_rng([seed, code, k])
            scene = sample_scene(rng, size)
            image_id = len(images) + 1
            file_name = f'COCO_train2014_{image_id:012d}.jpg'
            image_path = w.image(scene.image, *COCO_IMAGES, file_name)
            entry = dict(id=image_id, file_name=file_name, height=size, width=size)
            images.append(entry)
            anns = [dict(id=len(annotations) + j + 1, image_id=image_id,
                         category_id=CATEGORIES.index(f'{o.colour} {o.kind}') + 1,
                         segmentation=rle(o.mask), bbox=list(o.bbox), area=o.area, iscrowd=0)
                    for j, o in enumerate(scene.objects)]
            annotations += anns
            if split in COCO_INSTANCE_SPLITS:
                w.link(image_path, 'coco', COCO_INSTANCE_SPLITS[split], file_name)
                coco_splits[split][0].append(entry)
                coco_splits[split][1].extend(anns)
            queries = expression_queries(scene)
            image_refs = _refs(queries, anns, split, len(refs), sentences, rng)
            refs += image_refs
            sentences += sum(len(r['sentences']) for r in image_refs)
            if split == 'train':
                expressions = [(i, q.sentence()) for i, q in queries]
                _write_train_sources(w, scene, k + 1, image_path, entry, anns, expressions, rng,
                                     rows)
            elif split == 'val':
                rows['region_questions_val'].append(
                    _region_question_row(scene, '/'.join(COCO_IMAGES + (file_name, )), anns))
    categories = [dict(id=c + 1, name=name) for c, name in enumerate(CATEGORIES)]
    w.refer(images, annotations, categories, refs)
    for split, (split_images, split_annotations) in coco_splits.items():
        w.json(dict(images=split_images, annotations=split_annotations, categories=categories),
               'coco', 'annotations', f'instances_{COCO_INSTANCE_SPLITS[split]}.json')
    for name, path in ANNOTATION_FILES.items():
        w.json(rows[name], *path.split('/'))
    w.json(list(KINDS), 'ade20k', 'ade20k_classes.json')
    for name in BINDING_FILES:
        rows[f'binding_{name}'] = binding_file_rows(name, num_train, seed)
        w.json(rows[f'binding_{name}'], 'text_binding', f'{name}.json')
    chance = dict(colour=1 / len(COLOURS), kind=1 / len(KINDS),
                  colour_kind=1 / len(COLOURS) / len(KINDS))
    w.json(dict(colours=list(COLOURS), kinds=list(KINDS), chance=chance,
                images=rows['region_questions_val']),
           'region_questions_val.json')
    held_out = images[num_train:] or images
    w.link(os.path.join(root, *COCO_IMAGES, held_out[0]['file_name']), 'test.jpg')
    counts = {name: len(r) for name, r in rows.items()}
    counts.update({f'refcoco_{s}': len({r['image_id'] for r in refs if r['split'] == s})
                   for s, _ in splits},
                  refcoco_refs=len(refs), ade20k=num_train,
                  **{f'coco_{folder}': len(coco_splits[s][0])
                     for s, folder in COCO_INSTANCE_SPLITS.items()})
    w.text(README.format(root=root, num_train=num_train, num_val=num_val, num_test=splits[2][1],
                         size=size, seed=seed, **counts), 'README.md')
    return counts


README = """# Synthetic shapes: a visual grounding task in the OMG-LLaVA data formats

Generated by `python projects/tiny_omg_llava/synthetic_shapes.py --root {root} --train {num_train} \
--val {num_val}
--test {num_test} --size {size} --seed {seed}`; do not edit by hand (the module docstring explains \
the design).

{size}×{size} images with 2–4 shapes (circle, square, triangle, star; small or large; red, yellow, \
green, cyan,
blue or purple) on dark textured backgrounds. Every text is derived from the drawn attributes; \
every referring
expression picks out exactly one object. Masks are stored as COCO RLE (exact at this resolution, \
unlike polygons).

| annotation file | format | rows |
|---|---|---|
| ref_seg/refcoco/refs(unc).p + instances.json | REFER, images of train/val/testA | \
{refcoco_train}/{refcoco_val}/{refcoco_testA} |
| glamm_data/annotations/GranDf_HA_GCG_train.json | GranD-f GCG, RLE masks | {grandf_gcg} |
| region_caption/osprey/osprey_detail_description.json | Osprey region captions | \
{osprey_detail_description} |
| region_caption/osprey/osprey_conversation.json | Osprey region QA (what / colour / shape) | \
{osprey_conversation} |
| mdpv_point/gpt4v_tiny_point.json | MDPV point QA | {mdpv_point} |
| visual_prompts/prompt_conversation.json | questions with `<region>`, `<mark>` inline | \
{prompt_conversation} |
| llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json | LLaVA, one caption turn | \
{llava_pretrain} |
| llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json | LLaVA, three turns | {llava_instruct} |
| text_binding/{{region_colour,first_wording,language,mixture}}.json | LLaVA, text only: names \
bound to values (`binding_texts.py`) | \
{binding_region_colour}/{binding_first_wording}/{binding_language}/{binding_mixture} |
| ade20k/ADEChallengeData2016/annotations/training/*.png | ADE-style label maps of the 4 kinds | \
{ade20k} |
| coco/annotations/instances_{{train,val}}2017.json | COCO instances of the train / val images \
(OMG-Seg pre-stage) | \
{coco_train2017}/{coco_val2017} |
| region_questions_val.json | held-out region questions: val images, masks, colour and kind | \
{region_questions_val} |

REFER has {refcoco_refs} refs (up to 3 sentences each: the simplest, one superlative/position, one \
relation). The
val and testA refs use held-out images that no training file shows. All images are in
glamm_data/images/coco2014/train2014/; the training ones are hard-linked into \
glamm_data/images/grandf/train/,
mdpv_point/images/, llava_data/LLaVA-Pretrain/images/, llava_data/llava_images/ and
ade20k/ADEChallengeData2016/images/training/, and with the val ones into coco/{{train,val}}2017/. \
`test.jpg` is the
first held-out image.

region_questions_val.json: `{{"colours": [...], "kinds": [...], "chance": {{"colour", "kind", \
"colour_kind"}},
"images": [{{"image": path from this folder, "height", "width", "regions": [{{"segmentation": RLE, \
"bbox",
"colour", "kind", "size", "answer": "red circle"}}]}}]}}`; the chance rates are those of a uniform \
guess.
"""


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='data/synthetic_shapes', help='output folder')
    parser.add_argument('--train', type=int, default=2000, help='training images')
    parser.add_argument('--val', type=int, default=200,
                        help="held-out images with REFER 'val' refs")
    parser.add_argument('--test', type=int, default=None,
                        help="held-out images with REFER 'testA' refs (default: as many as --val)")
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=0, help='seed of everything random')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = write_dataset(args.root, args.train, args.val, size=args.size, seed=args.seed,
                           num_test=args.test)
    print(f'wrote {args.root} in {time.perf_counter() - start:.1f} s '
          f'({disk_size(args.root) / 2 ** 20:.1f} MiB on '
          'disk): ' + ', '.join(f'{k} {v}' for k, v in counts.items()))
    return counts


if __name__ == '__main__':
    main()
