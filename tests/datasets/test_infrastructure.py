"""Shared data machinery: collate, the combined dataset's length list, the length-grouped sampler
and the skipping of malformed rows, on tiny in-memory datasets with a real tokenizer and real
photos."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets import (CombinedDataset, GroundedConversation, LengthGroupedSampler,
                                MalformedSample,
                                OMGDatasetBase, encode_sample, omg_llava_collate_fn)
from omg_llava.datasets.base import MAX_CONSECUTIVE_SKIPS
from omg_llava.models.llm import InternLM2Tokenizer
from omg_llava.models.special_tokens import add_special_tokens
from omg_llava.utils.constants import DEFAULT_PAD_TOKEN_ID, IGNORE_INDEX
from omg_llava.utils.conversation import Turn

SIZE = 32


@pytest.fixture(scope='module')
def tokenizer():
    tokenizer = InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    add_special_tokens(tokenizer)
    return tokenizer


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp('photos') / 'cat.png'
    Image.fromarray(skdata.chelsea()).save(path)  # (300, 451)
    return str(path)


class EchoDataset(OMGDatasetBase):
    """One turn per text: "Repeat." → the text. Record ``bad`` rows raise
    :class:`MalformedSample`."""

    def __init__(self, texts, tokenizer, image_path=None, bad=()):
        self.texts, self.image_path, self.bad = list(texts), image_path, set(bad)
        super().__init__(tokenizer, image_size=SIZE, max_length=512)

    def load_records(self):
        return list(range(len(self.texts)))

    def build_conversation(self, record, rng):
        if record in self.bad:
            raise MalformedSample(f'bad row: {record}')
        return GroundedConversation(self.image_path, [Turn('Repeat.', self.texts[record])])

    def record_length(self, record):
        return len(self.texts[record])

    def record_has_image(self, record):
        return self.image_path is not None


def supervised(item):
    return [i for i in item['labels'].tolist() if i != IGNORE_INDEX]


# ---------------------------------------------------------------- collate
def test_collate(tokenizer, photo):
    H, W = skdata.chelsea().shape[:2]
    mask = np.zeros((H, W), bool)
    mask[50:150, 100:300] = True
    region_a, region_b, region_c = (np.roll(mask, s, axis=1) for s in (0, 60, 120))
    items = [
        encode_sample(GroundedConversation(photo, [Turn('What is <region> near <mark> and <mark>?',
                                                        'The <p> cat </p> [SEG].')],
                                           masks=[mask], regions=[region_a],
                                           points=[(10, 20), (400, 250)]),
                      tokenizer, SIZE, 512),
        encode_sample(GroundedConversation(None,
                                           [Turn('Say hello to everyone in the room.', 'Hello!')]),
                      tokenizer, SIZE, 512),
        encode_sample(GroundedConversation(photo,
                                           [Turn('Compare <region> with <region> at <mark>.',
                                                 'Similar.')],
                                           regions=[region_b, region_c], points=[(30, 40)]),
                      tokenizer, SIZE, 512),
    ]
    batch = omg_llava_collate_fn(items)
    assert batch['data_samples'] is None
    data = batch['data']
    lengths = [len(x['input_ids']) for x in items]
    assert data['input_ids'].shape == data['labels'].shape == (3, max(lengths))
    for b, (item, n) in enumerate(zip(items, lengths)):
        assert torch.equal(data['input_ids'][b, :n], item['input_ids'])
        assert torch.equal(data['labels'][b, :n], item['labels'])
        assert (data['input_ids'][b, n:] == DEFAULT_PAD_TOKEN_ID).all()
        assert (data['labels'][b, n:] == IGNORE_INDEX).all()
        assert data['attention_mask'][b].tolist() == [True] * n + [False] * (max(lengths) - n)
    assert data['pixel_values'].shape == (3, 3, SIZE, SIZE)
    assert torch.equal(data['pixel_values'][0], items[0]['pixel_values'])
    assert torch.equal(data['pixel_values'][2], items[2]['pixel_values'])
    assert (data['pixel_values'][1] == 0).all()  # the text-only sample: blank (CLIP-mean) image
    assert torch.equal(data['masks'][0], items[0]['masks']) and data['masks'][1:] == [None, None]
    assert torch.equal(data['regions'], torch.cat([items[0]['regions'], items[2]['regions']]))
    assert data['regions'].shape[0] == 3 and not torch.equal(data['regions'][0], data['regions'][1])
    assert torch.equal(data['points'], torch.cat([items[0]['points'], items[2]['points']]))
    scale = SIZE / W  # landscape: the padding is on top
    top = (W - H) // 2
    assert torch.allclose(data['points'][2], torch.tensor([30 * scale, (40 + top) * scale]))


def test_collate_text_only_batch(tokenizer):
    item = encode_sample(GroundedConversation(None, [Turn('Hi.', 'Hello.')]), tokenizer, SIZE, 512)
    data = omg_llava_collate_fn([item, item])['data']
    assert data['pixel_values'] is None and data['regions'] is None and data['points'] is None


# ---------------------------------------------------------------- combined dataset
def test_combined_length_list_describes_each_index(tokenizer, photo):
    with_image = EchoDataset(['alpha ' * n for n in (1, 4, 9)], tokenizer, image_path=photo)
    text_only = EchoDataset(['beta ' * n for n in (2, 7)], tokenizer)
    combined = CombinedDataset([with_image, text_only], repeats=[2, 1], shuffle_seed=42)
    assert len(combined) == 2 * 3 + 2 == len(combined.modality_length)
    answers = {}  # supervised ids → (dataset, text)
    for ds in (with_image, text_only):
        for r, text in enumerate(ds.texts):
            answers[tuple(supervised(ds[r]))] = (ds, text)
    seen = []
    for i, length in enumerate(combined.modality_length):
        item = combined[i]
        ds, text = answers[tuple(supervised(item))]
        assert abs(length) == len(text)
        assert (length > 0) == (ds is with_image) == (item['pixel_values'] is not None)
        seen.append(text)
    assert sorted(seen) == sorted(with_image.texts * 2 + text_only.texts)
    assert seen != with_image.texts * 2 + text_only.texts  # permuted
    again = CombinedDataset([with_image, text_only], repeats=[2, 1], shuffle_seed=42)
    assert again.index == combined.index  # one fixed permutation


def test_combined_rejects_wrong_repeats(tokenizer):
    ds = EchoDataset(['a'], tokenizer)
    with pytest.raises(ValueError, match='repeats'):
        CombinedDataset([ds], repeats=[1, 2])


def test_combined_flags_which_samples_get_the_text_only_pass(tokenizer, photo):
    with_image = EchoDataset(['alpha ' * n for n in (1, 4, 9)], tokenizer, image_path=photo)
    text_only = EchoDataset(['beta ' * n for n in (2, 7)], tokenizer)
    combined = CombinedDataset([with_image, text_only], text_only_lm=[False, True])
    flags = [combined[i]['text_only_lm'] for i in range(len(combined))]
    assert flags == [d == 1 for d, _ in combined.index]
    batch = omg_llava_collate_fn([combined[i] for i in range(len(combined))])['data']
    assert batch['text_only_lm'].tolist() == flags
    # unflagged data: no flags
    assert 'text_only_lm' not in omg_llava_collate_fn([with_image[0]])['data']
    for wrong in ([True], [1, 0]):
        with pytest.raises(ValueError, match='one True/False per dataset'):
            CombinedDataset([with_image, text_only], text_only_lm=wrong)


# ---------------------------------------------------------------- sampler
def test_length_grouped_sampler(tokenizer, photo):
    lengths_wanted = [3, 40, 17, 8, 25, 1, 33, 12, 5, 29, 21]
    ds = EchoDataset(['x' * n for n in lengths_wanted], tokenizer, image_path=photo)
    sampler = LengthGroupedSampler(ds, per_device_batch_size=2, mega_batch_mult=2, seed=0)
    assert sampler.group_size == 4
    order = list(sampler)
    assert len(sampler) == len(order) == len(ds)
    assert sorted(order) == list(range(len(ds)))  # every index once
    for start in range(0, len(order), 4):  # each mega-batch is sorted longest first
        group = [lengths_wanted[i] for i in order[start:start + 4]]
        assert group == sorted(group, reverse=True)
    sampler.set_epoch(1)
    other = list(sampler)
    assert sorted(other) == list(range(len(ds))) and other != order


def test_length_grouped_sampler_needs_one_length_per_index():
    class Mismatched:
        modality_length = [1, 2, 3]

        def __len__(self):
            return 5

    with pytest.raises(ValueError, match='3 entries but the dataset has 5'):
        LengthGroupedSampler(Mismatched(), per_device_batch_size=2, seed=0)


# ---------------------------------------------------------------- malformed rows
def test_malformed_row_is_skipped_and_counted(tokenizer):
    ds = EchoDataset(['one', 'two', 'three'], tokenizer, bad={1})
    served = supervised(ds[1])
    assert ds.skipped == {'bad row': 1}
    assert served == supervised(ds[2]) != supervised(ds[0])  # row 2 is served in place of row 1


def test_all_rows_malformed_is_an_error(tokenizer):
    ds = EchoDataset(['one', 'two'], tokenizer, bad={0, 1})
    with pytest.raises(RuntimeError,
                       match=r"all 2 rows could not be used \(run total: 2 skipped, 0 served; "
                                           r"\{'bad row': 2\}.*paths in the config are wrong: "
                                           r"check them"):
        ds[0]


def test_a_long_run_of_malformed_rows_is_an_error(tokenizer):
    texts = [f'text {i}' for i in range(MAX_CONSECUTIVE_SKIPS + 20)]
    ds = EchoDataset(texts, tokenizer, bad=set(range(5, 5 + MAX_CONSECUTIVE_SKIPS)))
    with pytest.raises(RuntimeError, match=f'{MAX_CONSECUTIVE_SKIPS} consecutive rows from row 5'):
        ds[5]
    # a good row is still served
    assert supervised(ds[4]) == supervised(EchoDataset(texts, tokenizer)[4])


def test_placeholder_count_mismatch_is_malformed(tokenizer, photo):
    # no mask
    conversation = GroundedConversation(photo, [Turn('Segment it.', '<p> It </p> [SEG].')])
    with pytest.raises(MalformedSample):
        encode_sample(conversation, tokenizer, SIZE, 512)
