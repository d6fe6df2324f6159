"""LLaVADataset on a small LLaVA json written at test time (real photos, real tokenizer)."""
import json

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets.llava import LLaVADataset, has_turn, llava_turns, remove_image_token
from omg_llava.inference.image_io import preprocess_image
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from omg_llava.utils.conversation import Turn

SIZE = 64


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


def message(role, value):
    return {'from': role, 'value': value}


ROWS = [
    # 0: two turns about a photo, <image> at the end of the first question and (wrongly) in the
    # second
    {'id': 'a', 'image': 'photos/coffee.png', 'conversations': [
        message('human', 'What is in the cup?\n<image>'), message('gpt', 'Coffee with latte art.'),
        message('human', '<image> Is there a spoon?'), message('gpt', 'Yes, on the saucer.')]},
    # 1: text only
    {'id': 'b',
     'conversations': [message('human', 'Name a prime number.'), message('gpt', 'Seven.')]},
    # 2: missing image file
    {'id': 'c', 'image': 'photos/absent.png', 'conversations': [
        message('human', '<image>\nDescribe.'), message('gpt', 'A cat.')]},
    # 3: a question without answer: no turn, left out when loading (as xtuner's empty-conversation
    # filter)
    {'id': 'd', 'image': 'photos/cat.png', 'conversations': [message('human', '<image>\nHi')]},
    # 4: a gpt message then a question: the gpt message is dropped, no turn is left (left out too)
    {'id': 'e', 'image': 'photos/cat.png', 'conversations': [
        message('gpt', 'A cat.'), message('human', '<image>\nDescribe.')]},
    # 5: empty answer
    {'id': 'f', 'image': 'photos/cat.png', 'conversations': [
        message('human', '<image>\nDescribe.'), message('gpt', '  ')]},
    # 6: a pretrain-style caption row
    {'id': 'g', 'image': 'photos/cat.png', 'conversations': [
        message('human', 'Write a terse but informative summary of the picture.\n<image>'),
        message('gpt', 'a tabby cat looking at the camera')]},
    # 7: unknown role
    {'id': 'h', 'image': 'photos/cat.png', 'conversations': [
        message('human', '<image>\nDescribe.'), message('system', 'Be brief.'),
        message('gpt', 'A cat.')]},
]
#: indices of ROWS kept by the loader (rows 3 and 4 hold no human -> gpt turn)
KEPT = [0, 1, 2, 5, 6, 7]


@pytest.fixture(scope='module')
def llava_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('llava')
    (root / 'photos').mkdir()
    Image.fromarray(skdata.coffee()).save(root / 'photos' / 'coffee.png')
    Image.fromarray(skdata.chelsea()).save(root / 'photos' / 'cat.png')
    path = root / 'instruct.json'
    path.write_text(json.dumps(ROWS))
    return path, root


@pytest.fixture
def dataset(llava_files, tokenizer):
    path, root = llava_files
    return LLaVADataset(str(path), str(root), tokenizer, image_size=SIZE, max_length=512)


def answer_spans(labels):
    """Contiguous runs of supervised label ids."""
    spans, current = [], []
    for value in labels.tolist() + [IGNORE_INDEX]:
        if value != IGNORE_INDEX:
            current.append(value)
        elif current:
            spans.append(current)
            current = []
    return spans


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_image_conversation(dataset, tokenizer, llava_files):
    item = dataset[0]
    ids = item['input_ids']
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1
    user = encode(tokenizer, '<|im_start|>user\n')
    assert ids[:1 + len(user) + 1].tolist() == [tokenizer.bos_token_id] + user + [IMAGE_TOKEN_INDEX]
    # <image> was removed from both questions: the second question is plain text
    assert contains(ids.tolist(),
                    encode(tokenizer, '<|im_start|>user\nIs there a spoon?<|im_end|>'))
    assert answer_spans(item['labels']) == [encode(tokenizer, 'Coffee with latte art.<|im_end|>'),
                                            encode(tokenizer, 'Yes, on the saucer.<|im_end|>')]
    expected, _ = preprocess_image(
        Image.open(llava_files[1] / 'photos' / 'coffee.png').convert('RGB'), SIZE
    )
    assert torch.equal(item['pixel_values'], expected)
    assert item['image_size'] == skdata.coffee().shape[:2]
    assert item['masks'].shape == (0, SIZE, SIZE)


def contains(haystack, needle):
    return any(haystack[i:i + len(needle)] == needle
               for i in range(len(haystack) - len(needle) + 1))


def test_text_only_row(dataset, tokenizer):
    item = dataset[1]
    assert item['pixel_values'] is None
    assert IMAGE_TOKEN_INDEX not in item['input_ids'].tolist()
    assert answer_spans(item['labels']) == [encode(tokenizer, 'Seven.<|im_end|>')]


def test_malformed_rows_are_skipped_and_counted(dataset, tokenizer):
    assert [r['id'] for r in dataset.records] == [ROWS[i]['id'] for i in KEPT]
    caption = encode(tokenizer, 'a tabby cat looking at the camera<|im_end|>')
    for index in (2, 3):  # rows 2 and 5: each falls through to row 6
        assert answer_spans(dataset[index]['labels']) == [caption]
    assert sum(dataset.skipped.values()) == 2 + 1
    assert dataset.skipped == {'image not found': 1, 'empty question or answer': 2}
    assert answer_spans(dataset[5]['labels'])[0] == encode(tokenizer,
                                                           # row 7
                                                           'Coffee with latte art.<|im_end|>')
    # wrapped round to row 0
    assert dataset.skipped['message is not human/gpt with a text value'] == 1


def test_modality_length(dataset):
    lengths = dataset.modality_length
    assert len(lengths) == len(dataset) == len(KEPT)
    for row, length in zip([ROWS[i] for i in KEPT], lengths):
        chars = sum(len(m['value']) for m in row['conversations'])
        assert length == (chars // 4 if 'image' in row else -(chars // 4))
    assert lengths[1] < 0 < lengths[0]


def test_pretrain_caption_is_deterministic(llava_files, tokenizer):
    path, root = llava_files
    a = LLaVADataset(str(path), str(root), tokenizer, image_size=SIZE, seed=1)[4]
    b = LLaVADataset(str(path), str(root), tokenizer, image_size=SIZE, seed=2)[4]
    assert torch.equal(a['input_ids'], b['input_ids']) and torch.equal(a['labels'], b['labels'])
    assert torch.equal(a['pixel_values'], b['pixel_values'])


def test_turns_as_the_reference_map_builds_them():
    """xtuner's llava_map_fn rules on a mix665k-shaped row: a leading gpt message is dropped and the
    rest kept; the question holding <image> is stripped, later questions and every answer are kept
    as written; consecutive questions are joined; a final question without answer is dropped."""
    row = {'id': '000000215677', 'image': 'coco/train2017/000000215677.jpg', 'conversations': [
        message('gpt', 'Hello! Ask me about the picture.'),
        message('human', '<image>\nWhat is the man holding? '),
        message('gpt', ' He is holding an umbrella.\n'),
        message('human', ' Why? '), message('human', 'Explain.'),
        message('gpt', 'It is raining. '),
        message('human', 'Anything else?')]}
    assert llava_turns(row['conversations'], 'row') == [
        Turn('What is the man holding?', ' He is holding an umbrella.\n'),
        Turn(' Why? Explain.', 'It is raining. ')]
    assert has_turn(row['conversations'])
    assert not has_turn([message('gpt', 'A.'), message('human', 'B?')])
    assert remove_image_token(' <image>\n Hi ') == 'Hi' and remove_image_token(' Hi ') == ' Hi '


def test_answers_and_later_questions_keep_their_spaces(tmp_path, tokenizer, llava_files):
    _, root = llava_files
    rows = [{'id': 'x', 'image': 'photos/cat.png', 'conversations': [
        message('gpt', 'Hi.'), message('human', '<image>\nDescribe.'), message('gpt', ' A cat. '),
        message('human', ' And the colour? '), message('gpt', 'Grey.')]}]
    path = tmp_path / 'rows.json'
    path.write_text(json.dumps(rows))
    item = LLaVADataset(str(path), str(root), tokenizer, image_size=SIZE)[0]
    assert answer_spans(item['labels']) == [encode(tokenizer, ' A cat. <|im_end|>'),
                                            encode(tokenizer, 'Grey.<|im_end|>')]
    assert contains(item['input_ids'].tolist(),
                    encode(tokenizer, '<|im_start|>user\n And the colour? <|im_end|>'))


def test_truncation_to_max_length(llava_files, tokenizer):
    path, root = llava_files
    item = LLaVADataset(str(path), str(root), tokenizer, image_size=SIZE, max_length=12)[0]
    assert len(item['input_ids']) == len(item['labels']) == 12


def test_rejects_a_json_that_is_not_a_list(tmp_path, tokenizer):
    path = tmp_path / 'bad.json'
    path.write_text('{"conversations": []}')
    with pytest.raises(ValueError, match='JSON list'):
        LLaVADataset(str(path), str(tmp_path), tokenizer)
