"""The synthetic shapes task: unambiguous expressions, masks true to the pixels, and data the real
dataset classes read (REFER train / val / testA on held-out images, GranD-f GCG, Osprey, MDPV,
LLaVA, ADE20K)."""
from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections import Counter

import numpy as np
import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_project_module
from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.gcg import GranDfGCGDataset
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.datasets.mask_decoding import decode_segmentation
from omg_llava.datasets.mdpv import MDPVPointDataset
from omg_llava.datasets.osprey import OspreyRegionCaptionDataset, OspreyRegionConversationDataset
from omg_llava.datasets.prompt_conversation import PromptConversationDataset
from omg_llava.datasets.refer_seg import ReferSegDataset, load_refs
from omg_llava.datasets.semantic_seg import SemanticSegDataset
from omg_llava.models.llm import InternLM2Tokenizer

S = 128
NUM_TRAIN, NUM_VAL, NUM_TEST = 12, 6, 4


def part(name: str):
    """A module that synthetic_shapes.py is built from (``shapes_scene``, ``shapes_expressions``),
    as it imported it."""
    return importlib.import_module(name)


@pytest.fixture(scope='module')
def gen():
    return load_project_module('synthetic_shapes')


@pytest.fixture(scope='module')
def scenes(gen):
    return [gen.sample_scene(np.random.default_rng([7, 0, k]), S) for k in range(150)]


@pytest.fixture(scope='module')
def built(gen, tmp_path_factory):
    root = tmp_path_factory.mktemp('synthetic') / 'data'
    counts = gen.main(['--root', str(root), '--train', str(NUM_TRAIN), '--val', str(NUM_VAL),
                       '--test', str(NUM_TEST)])
    return root, counts


def interpret(gen, sentence: str, objects: list, side: int) -> tuple[set[int], set[int]]:
    """Read a sentence of the grammar against the objects' attributes, independently of the
    generator's resolver.

    Returns the objects it is clearly true of, and those for which it is borderline (neither clearly
    true nor clearly false); an unambiguous sentence has exactly one of the first kind and none of
    the second.
    """
    rules = part('shapes_expressions')
    colours, kinds = '|'.join(gen.COLOURS), '|'.join(gen.KINDS)
    m = re.fullmatch(rf'the (?:(largest|smallest) )?(?:(small|large) )?(?:({colours}) '
                     rf')?({kinds}|shape)'
                     r'(?: (on the left|on the right|at the top|at the bottom)| (left of|right '
                     r'of|above|below) (.+))?',
                     sentence)
    assert m, f'not in the grammar: {sentence!r}'
    superlative, size, colour, kind, position, relation, anchor_text = m.groups()
    found = [i for i, o in enumerate(objects)
             if (size in (None, o.size_class) and colour in (None, o.colour)
                                                  and kind in ('shape', o.kind))]
    vector = {'on the left': (-1, 0), 'on the right': (1, 0), 'at the top': (0, -1),
              'at the bottom': (0, 1),
              'left of': (-1, 0), 'right of': (1, 0), 'above': (0, -1), 'below': (0, 1)}

    def along(i: int, v: tuple[int, int]) -> float:
        return objects[i].centre[0] * v[0] + objects[i].centre[1] * v[1]

    if superlative:
        assert size is None and len(found) >= 2

        def beats(t: int, o: int) -> bool:
            big, small = (t, o) if superlative == 'largest' else (o, t)
            return objects[big].area >= rules.AREA_RATIO * objects[small].area

        return {t for t in found if all(beats(t, o) for o in found if o != t)}, set()
    if position:
        assert len(found) >= 2
        v = vector[position]
        return {t for t in found if along(t, v) > side / 2 * sum(v)
                and all(along(t, v) - along(o, v) >= rules.POSITION_MARGIN * side for o in found
                        if o != t)}, set()
    if relation:
        anchors, unclear = interpret(gen, anchor_text, objects, side)
        # attributes only
        assert re.fullmatch(rf'the (small |large )?(({colours}) )?({kinds}|shape)', anchor_text)
        assert len(anchors) == 1 and not unclear
        a = anchors.pop()
        v = vector[relation]
        true, borderline = set(), set()
        for t in found:
            if t == a:
                continue
            lead = along(t, v) - along(a, v)
            across = abs(along(t, v[::-1]) - along(a, v[::-1]))
            if lead >= rules.RELATION_TRUE * side and lead >= across:
                true.add(t)
            elif lead > rules.RELATION_FALSE * side and lead > across / 2:
                borderline.add(t)
        return true, borderline
    return set(found), set()


def test_every_expression_picks_exactly_one_object(gen, scenes):
    drawing = part('shapes_scene')
    families, counts = Counter(), Counter()
    for scene in scenes:
        objects = scene.objects
        counts[len(objects)] += 1
        expressions = gen.referring_expressions(scene)
        # every object can be referred to
        assert {i for i, _ in expressions} == set(range(len(objects)))
        assert len({s for _, s in expressions}) == len(expressions)
        for index, sentence in expressions:
            true, borderline = interpret(gen, sentence, objects, S)
            assert true == {index} and not borderline, (sentence, index, [o.name for o in objects])
            families['relation' if re.search(r' (left of|right of|above|below) ', sentence)
                     else 'other'] += 1
        firsts = {}
        # increasing specificity: an attribute-only sentence comes first
        for index, sentence in expressions:
            firsts.setdefault(index, sentence)
        assert all(len(s.split()) <= 4
                   and not re.search(r'largest|smallest| on | at | of |above|below', s)
                   for s in firsts.values())
    assert set(counts) == set(drawing.OBJECT_COUNTS)
    # relations and the rest both occur
    assert families['relation'] > 100 and families['other'] > 500
    all_sentences = [s for scene in scenes[:40] for _, s in gen.referring_expressions(scene)]
    for pattern in (r'^the largest shape$', r' on the (left|right)$', r' at the (top|bottom)$',
                    r' left of the ', r'^the (small|large) (\w+) (circle|square|triangle|star)$'):
        assert any(re.search(pattern, s) for s in all_sentences), pattern


def test_expression_kind_names_the_rule_that_made_each_sentence(gen, scenes):
    rules = part('shapes_expressions')
    seen = Counter()
    for scene in scenes[:60]:
        for _, query in gen.expression_queries(scene):
            made_by = ('relation' if query.relation else 'attribute' if query.extreme is None
                       else 'superlative' if query.extreme in rules.SUPERLATIVES else 'position')
            assert gen.expression_kind(query.sentence()) == made_by, query.sentence()
            # as an answer repeats it
            assert gen.expression_kind(query.sentence().capitalize() + ' ') == made_by
            seen[made_by] += 1
    assert set(seen) == set(gen.EXPRESSION_KINDS)
    assert gen.expression_kind('the small circle') == 'attribute'  # a size word is an attribute


def test_masks_match_the_drawn_pixels(gen, scenes):
    drawing = part('shapes_scene')
    palette = {name: np.array(rgb, float) for name, rgb in gen.COLOURS.items()}
    for scene in scenes[:60]:
        assert scene.image.shape == (S, S, 3) and scene.image.dtype == np.uint8
        masks = np.stack([o.mask for o in scene.objects])
        assert (masks.sum(0) <= 1).all()  # visible masks are disjoint
        for obj in scene.objects:
            x, y, w, h = obj.bbox
            assert (obj.area > 0
                    and max(w, h) >= 0.8 * drawing.SIZE_CLASSES['small'][0] * S), obj.name
            assert obj.mask[y:y + h, x:x + w].sum() == obj.area and x <= obj.centre[0] <= x + w
            # the object's colour
            close = np.linalg.norm(scene.image - palette[obj.colour], axis=-1) < 60
            same_colour = np.any([o.mask for o in scene.objects if o.colour == obj.colour], axis=0)
            assert (close & obj.mask).sum() >= 0.99 * obj.area, obj.name
            # nothing else has its colour
            assert (close & ~same_colour).sum() <= 0.01 * obj.area, obj.name
        lo, hi = ((drawing.SIZE_CLASSES['small'][0] * S) ** 2 * 0.3,
                  (drawing.SIZE_CLASSES['large'][1] * S) ** 2)
        assert all(lo <= o.area <= hi for o in scene.objects)


def test_caption_and_other_texts_follow_the_objects(gen, scenes):
    scene = scenes[0]
    text, spans = gen.caption(scene)
    assert sorted(i for _, _, i in spans) == list(range(len(scene.objects)))
    for start, end, i in spans:
        assert text[start:end].lower() == 'a ' + scene.objects[i].name
    assert gen.region_description(scene, 0).startswith('A ' + scene.objects[0].name)
    for obj in scene.objects:
        x, y = gen.interior_point(obj.mask)
        assert obj.mask[y, x]


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def test_real_dataset_classes_read_every_row(built, tokenizer):
    root, counts = built
    common = dict(tokenizer=tokenizer, image_size=S)
    coco = str(root / 'glamm_data/images/coco2014/train2014')
    refer = dict(data_root=str(root / 'ref_seg'), image_folder=coco, dataset='refcoco',
                 split_by='unc', **common)
    ade = root / 'ade20k/ADEChallengeData2016'
    datasets = dict(
        refcoco_train=ReferSegDataset(split='train', **refer),
        refcoco_val=ReferSegDataset(split='val', **refer),
        refcoco_testA=ReferSegDataset(split='testA', **refer),
        grandf_gcg=GranDfGCGDataset(str(root / 'glamm_data/annotations/GranDf_HA_GCG_train.json'),
                                    str(root / 'glamm_data/images/grandf/train'), **common),
        osprey_detail_description=OspreyRegionCaptionDataset(
            str(root / 'region_caption/osprey/osprey_detail_description.json'), coco, **common),
        osprey_conversation=OspreyRegionConversationDataset(
            str(root / 'region_caption/osprey/osprey_conversation.json'), coco, **common),
        mdpv_point=MDPVPointDataset(str(root / 'mdpv_point/gpt4v_tiny_point.json'),
                                    str(root / 'mdpv_point/images'), **common),
        prompt_conversation=PromptConversationDataset(
            str(root / 'visual_prompts/prompt_conversation.json'), coco, **common),
        llava_pretrain=LLaVADataset(
            str(root / 'llava_data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json'),
            str(root / 'llava_data/LLaVA-Pretrain/images'), **common),
        llava_instruct=LLaVADataset(
            str(root / 'llava_data/LLaVA-Instruct-150K/llava_v1_5_mix665k.json'),
                                    str(root / 'llava_data/llava_images'), **common),
        ade20k=SemanticSegDataset(str(ade / 'images/training'), str(ade / 'annotations/training'),
                                  str(root / 'ade20k/ade20k_classes.json'), kind='ade20k',
                                  **common))
    assert counts['refcoco_train'] == NUM_TRAIN and counts['refcoco_val'] == NUM_VAL
    assert counts['refcoco_testA'] == NUM_TEST
    for name, ds in datasets.items():
        assert len(ds) == counts[name], name
        for i in range(len(ds)):
            item = ds[i]
            assert item['pixel_values'].shape == (3, S, S)
            assert all(m.any() for m in list(item['masks']) + list(item['regions'])), (name, i)
        assert not ds.skipped, (name, dict(ds.skipped))
    assert all(len(datasets[n][0]['masks'])
               for n in ('refcoco_train', 'refcoco_val', 'grandf_gcg', 'ade20k'))
    assert (len(datasets['mdpv_point'][0]['points'])
            and len(datasets['osprey_conversation'][0]['regions']))


def test_held_out_images_are_unseen_and_masks_reproducible(gen, built):
    root, counts = built
    instances = json.loads((root / 'ref_seg/refcoco/instances.json').read_text())
    refs = load_refs(root / 'ref_seg/refcoco/refs(unc).p')
    images = {img['id']: img['file_name'] for img in instances['images']}
    by_split = {s: {r['image_id'] for r in refs if r['split'] == s}
                for s in ('train', 'val', 'testA')}
    assert all(by_split.values()) and sum(len(v) for v in by_split.values()) == len(images)
    assert not (by_split['train'] & by_split['val'] or by_split['train'] & by_split['testA']
                or by_split['val'] & by_split['testA'])
    train_files = {images[i] for i in by_split['train']}
    osprey = json.loads((root / 'region_caption/osprey/osprey_detail_description.json').read_text())
    assert {row['file_name'] for row in osprey} == train_files

    def digest(path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    coco = root / 'glamm_data/images/coco2014/train2014'
    held_out = {digest(coco / images[i]) for i in by_split['val'] | by_split['testA']}
    for folder in ('glamm_data/images/grandf/train', 'mdpv_point/images',
                   'llava_data/LLaVA-Pretrain/images',
                   'llava_data/llava_images', 'ade20k/ADEChallengeData2016/images/training'):
        files = [p for p in (root / folder).rglob('*.jpg')]
        assert len(files) == NUM_TRAIN and not held_out & {digest(p) for p in files}, folder
    assert len(held_out) == NUM_VAL + NUM_TEST and digest(root / 'test.jpg') in held_out
    # every training image has an Osprey conversation, an MDPV point row and an inline-prompt row
    for name in ('osprey_conversation', 'prompt_conversation'):
        rows = json.loads((root / gen.ANNOTATION_FILES[name]).read_text())
        assert sorted(row['file_name'] for row in rows) == sorted(train_files), name
    mdpv = json.loads((root / gen.ANNOTATION_FILES['mdpv_point']).read_text())
    assert len(mdpv) == counts['mdpv_point'] == NUM_TRAIN
    assert ({digest(root / 'mdpv_point/images' / row['image']) for row in mdpv}
            == {digest(coco / file_name) for file_name in train_files})

    # the region-question manifest lists the val images; image k of a split is
    # sample_scene(rng([seed, split, k]))
    manifest = json.loads((root / 'region_questions_val.json').read_text())
    assert len(manifest['images']) == NUM_VAL and manifest['chance']['colour_kind'] == 1 / 24
    for k, row in enumerate(manifest['images']):
        scene = gen.sample_scene(np.random.default_rng([0, 1, k]), S)
        assert (root / row['image']).is_file()
        for region, obj in zip(row['regions'], scene.objects, strict=True):
            assert region['answer'] == f'{obj.colour} {obj.kind}'
            assert (decode_segmentation(region['segmentation'], S, S) == obj.mask).all()


def test_deterministic_by_seed(gen, built, tmp_path):
    root, counts = built
    files = ('ref_seg/refcoco/instances.json', 'ref_seg/refcoco/refs(unc).p',
             'mdpv_point/gpt4v_tiny_point.json',
             'glamm_data/annotations/GranDf_HA_GCG_train.json',
             'region_caption/osprey/osprey_conversation.json',
             'glamm_data/images/coco2014/train2014/COCO_train2014_000000000001.jpg')
    assert gen.write_dataset(str(tmp_path / 'again'), NUM_TRAIN, NUM_VAL,
                             num_test=NUM_TEST) == counts
    for path in files:
        assert (tmp_path / 'again' / path).read_bytes() == (root / path).read_bytes(), path
    gen.write_dataset(str(tmp_path / 'other'), 2, 1, seed=1)
    assert (tmp_path / 'other' / files[-1]).read_bytes() != (root / files[-1]).read_bytes()


def test_coco_instance_splits_feed_the_omg_seg_pre_stage(built, gen):
    drawing = part('shapes_scene')
    root, counts = built
    from omg_llava.datasets.coco_instances import CocoInstanceDataset
    for folder, count in (('train2017', NUM_TRAIN), ('val2017', NUM_VAL)):
        ds = CocoInstanceDataset(str(root / f'coco/annotations/instances_{folder}.json'),
                                 str(root / 'coco' / folder), image_size=S)
        assert (len(ds) == count == counts[f'coco_{folder}']
                and ds.category_names == list(gen.CATEGORIES))
        assert len(gen.CATEGORIES) == 24 and gen.CATEGORIES[:2] == ('red circle', 'yellow circle')
        sample = ds[0]
        assert (2 <= len(sample['gt_labels']) <= max(drawing.OBJECT_COUNTS)
                and sample['gt_masks'].shape[1:] == (S, S))
        assert not ds.skipped
    # the pre-stage config names the same classes: its dataset labels by them, its class embeddings
    # are built from them
    pre_stage = Config.fromfile(str(REPO_ROOT / 'configs/tiny/omg_seg_tiny_synthetic.py'))
    assert (pre_stage.model.class_names == list(gen.CATEGORIES)
            == pre_stage.train_dataloader.dataset.category_names)
    assert pre_stage.model.num_classes == len(gen.CATEGORIES)
    refs = load_refs(root / 'ref_seg/refcoco/refs(unc).p')
    train_ids = {r['image_id'] for r in refs if r['split'] == 'train'}
    coco_train = json.loads((root / 'coco/annotations/instances_train2017.json').read_text())
    # held-out images stay out of the pre-stage
    assert {img['id'] for img in coco_train['images']} == train_ids


def test_prompt_questions_answer_the_prompted_object(gen, scenes):
    """Every question about a prompt holds its one placeholder and is answered with that object's
    colour, shape or both; the template conversations do not always ask about prompt 1 first."""
    texts = importlib.import_module('shapes_texts')
    first_asked = Counter()
    for k, scene in enumerate(scenes):
        rng = np.random.default_rng(k)
        turns, prompts = texts.inline_conversation(scene, rng)
        assert len(turns) == len(prompts) and 1 <= len(turns) <= 3
        for (question, answer), (kind, index) in zip(turns, prompts):
            obj = scene.objects[index]
            assert question.count(f'<{kind}>') == 1 and question.count('<') == 1, question
            assert obj.colour in answer or obj.kind in answer, (question, answer, obj.name)
        chosen = [int(i) for i in rng.permutation(len(scene.objects))]
        conversation = texts.region_conversation(scene, chosen, rng)
        for question, answer in conversation:
            r = int(re.search(r'<region(\d+)>', question).group(1))
            obj = scene.objects[chosen[r - 1]]
            assert obj.colour in answer or obj.kind in answer, (question, answer, obj.name)
        first_asked[re.search(r'<region(\d+)>', conversation[0][0]).group(1)] += 1
    assert len(first_asked) > 1, first_asked
