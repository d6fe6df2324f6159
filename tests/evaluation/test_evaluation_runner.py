"""Sharding, answer clean-up and the region-caption loop with injected answers."""
from __future__ import annotations

import json

import numpy as np
import pytest

from omg_llava.evaluation.runner import (REGION_CAPTION_PROMPT, clean_caption, clean_region_caption,
                                         evaluate,
                                         gather_records, phrases_per_mask, reference_gcg_answer,
                                         reference_region_caption, shard_range)
from omg_llava.evaluation.splits import load_split

from voc_fixtures import MASKS, REGIONS, Answer, write_region_captions


@pytest.mark.parametrize('num_samples', [0, 1, 7, 8, 13, 100])
@pytest.mark.parametrize('world_size', [1, 2, 3, 8])
def test_shards_cover_every_sample_exactly_once(num_samples, world_size):
    shards = [shard_range(num_samples, rank, world_size) for rank in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # contiguous: images stay together
    assert all(list(s) == list(range(s.start, s.stop)) for s in shards)


def test_shard_arguments_and_single_process_gather():
    with pytest.raises(ValueError, match='outside'):
        shard_range(10, 2, 2)
    records = [dict(index=2), dict(index=0), dict(index=1)]
    assert [r['index'] for r in gather_records(records, world_size=1)] == [0, 1, 2]


def test_answer_clean_up():
    text = 'The image shows <p> a man </p> [SEG] next to <p>a dog</p> [SEG].<|im_end|>'
    assert clean_caption(text) == 'The image shows a man next to a dog .'
    assert clean_region_caption('Region1: a man in a red shirt, region1 is sitting.<|im_end|>') == \
        'a man in a red shirt, is sitting.'
    assert phrases_per_mask(text, 2) == ['a man', 'a dog']
    assert phrases_per_mask('<p> a </p> <p> b </p> [SEG] [SEG] [SEG]', 3) == ['b', '', '']
    # more masks than [SEG] text: padded
    assert phrases_per_mask('<p> a </p> [SEG]', 2) == ['a', '']


def test_reference_answer_clean_up():
    # newlines go without a space, tags without a space (the decoded text sets them off by spaces
    # already), quotes at both ends go, [SEG] goes
    text = "'The image\nshows <p> a man </p> [SEG] next to <p> a dog </p> [SEG].'"
    assert reference_gcg_answer(text) == ('The imageshows a man next to a dog .',
                                          ['a man', 'a dog'])
    assert clean_caption(text) == "'The image shows a man next to a dog .'"
    assert reference_gcg_answer('A <p> big\ncat </p> [SEG].') == ('A bigcat .', ['bigcat'])
    assert reference_gcg_answer('ASSISTANT: <s>A  cat.') == ('A cat.', [])
    # region captions: region1 / Region1 / colons go anywhere (also inside region10), then the same
    # clean-up
    assert reference_region_caption('Region1: a man in a\nred shirt, region10 is sitting.') == \
        'a man in ared shirt, 0 is sitting.'
    assert reference_region_caption("'a bottle <p> on </p> [SEG] the table'") == ('a bottle on the '
                                                                                  'table')
    assert clean_region_caption("'a bottle <p> on </p> [SEG] the table'") == ("'a bottle on the "
                                                                              "table'")


@pytest.fixture(scope='module')
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp('region_caption')
    write_region_captions(root)
    return load_split('region_caption', str(root), 'refcocog', 'val',
                      image_folder=str(root / 'images'))


def test_region_caption_loop(split, tmp_path):
    by_region = {}
    for k, text in REGIONS.items():
        by_region[MASKS[k].tobytes()] = text

    def describe(image_path, prompt, region_mask):
        assert prompt == REGION_CAPTION_PROMPT and prompt.count('<mark>') == 1
        assert region_mask.shape == MASKS[0].shape and region_mask.dtype == bool
        return Answer(f'Region1: {by_region[region_mask.tobytes()]}.<|im_end|>')

    metrics = evaluate(split, describe, str(tmp_path), progress=False, java=None)
    assert metrics['num_regions'] == 2 and metrics['BLEU-1'] == pytest.approx(1.0)
    assert metrics['CIDEr'] > 0 and metrics['METEOR'] is None
    records = [json.loads(line)
               for line in (tmp_path / 'predictions.jsonl').read_text().splitlines()]
    assert [r['caption'] for r in records] == [f'{t}.' for t in REGIONS.values()]
    saved = json.loads((tmp_path / 'metrics.json').read_text())
    assert saved['task'] == 'region_caption' and 'CIDEr' in saved


def test_region_file_with_two_regions_per_image_is_refused(split, tmp_path):
    data = {'images': [dict(id=1, file_name='voc.jpg', height=2, width=2, caption='x')],
            'annotations': [dict(id=1, image_id=1, segmentation=[[0, 0, 1, 0, 1, 1]]),
                            dict(id=2, image_id=1, segmentation=[[0, 0, 1, 0, 1, 1]])]}
    (tmp_path / 'refcocog').mkdir()
    (tmp_path / 'refcocog' / 'finetune_refcocog_val_with_mask.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match='several regions'):
        load_split('region_caption', str(tmp_path), 'refcocog', 'val', image_folder=str(tmp_path))
    assert np.array_equal(split.region_mask(split.samples[0]), MASKS[list(REGIONS)[0]])
