"""A bad row never stops a run (issue 25 item 2): each row that stopped training in the issue's
trials, written in its dataset's real format next to good rows, is skipped and counted under its
exception type with the file and row in the log; the length estimate survives them too; counts add
up across DataLoader workers."""
from __future__ import annotations

import ast
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from mmengine.logging import MMLogger
from PIL import Image
from pycocotools import mask as mask_utils
from skimage import data as skdata
from torch.utils.data import DataLoader

from omg_llava.assets import TINY_TOKENIZER_DIR
from omg_llava.datasets import LengthGroupedSampler, MalformedSample, base
from omg_llava.datasets.base import SkippingDataset
from omg_llava.datasets.gcg import FlickrGCGDataset, GranDfGCGDataset
from omg_llava.datasets.llava import LLaVADataset
from omg_llava.datasets.refer_seg import ReferSegDataset
from omg_llava.models.llm import InternLM2Tokenizer

from numbers_dataset import Numbers, first

SIZE = 32
DATASETS_DIR = Path(base.__file__).parent


@pytest.fixture(scope='module')
def tokenizer():
    return InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)


@pytest.fixture
def log():
    """The warnings the datasets log (mmengine's current logger), as text."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = Keep()
    logger.addHandler(handler)
    yield lambda: '\n'.join(lines)
    logger.removeHandler(handler)


@pytest.fixture
def photos(tmp_path):
    (tmp_path / 'photos').mkdir()
    Image.fromarray(skdata.chelsea()).save(tmp_path / 'photos' / 'cat.png')  # 300 x 451
    Image.fromarray(skdata.coffee()).save(tmp_path / 'photos' / 'coffee.png')  # 400 x 600
    return tmp_path


def message(role, value):
    return {'from': role, 'value': value}


def caption_row(row_id, value='A tabby cat.', image='photos/cat.png'):
    return {'id': row_id, 'image': image,
            'conversations': [message('human', '<image>\nDescribe the picture.'),
                              message('gpt', value)]}


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': [int(s) for s in encoded['size']], 'counts': encoded['counts'].decode('ascii')}


def box(shape, x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def supervised(item) -> list[int]:
    return [i for i in item['labels'].tolist() if i >= 0]


# ---------------------------------------------------------- the rows, in their real formats
def test_a_number_where_a_string_belongs_does_not_stop_the_length_estimate(photos, tokenizer, log):
    rows = [caption_row('good'), caption_row('number', value=42),
            caption_row('also good', value='A cat indoors.')]
    path = photos / 'llava.json'
    path.write_text(json.dumps(rows))
    ds = LLaVADataset(str(path), str(photos), tokenizer, image_size=SIZE, max_length=256)
    lengths = ds.modality_length  # len(42) raised TypeError here, before the first iteration
    assert lengths[1] == base.DEFAULT_LENGTH and lengths[0] > 0 and lengths[2] > 0
    assert ds.length_errors == {'TypeError': 1}
    assert f"no length estimate for row 1 (id 'number') of {path} (TypeError: " in log()
    assert ds.modality_length is lengths  # computed (and counted) once
    assert len(LengthGroupedSampler(ds, per_device_batch_size=1, seed=0)) == 3
    assert supervised(ds[1]) == supervised(ds[2])  # drawn, the row is skipped as malformed
    assert ds.skipped == {'message is not human/gpt with a text value': 1}


def test_a_missing_height_is_skipped(photos, tokenizer, log):
    """REFER layout: an instances.json image entry without ``height`` (KeyError while building the
    masks)."""
    folder = photos / 'refcoco'
    folder.mkdir()
    shape = skdata.chelsea().shape[:2]
    images = [dict(id=i, file_name='cat.png', height=shape[0], width=shape[1]) for i in (1, 2, 3)]
    del images[1]['height']
    annotations = [dict(id=10 * i, image_id=i,
                        segmentation=rle(box(shape, 20 * i, 20, 20 * i + 50, 90)))
                   for i in (1, 2, 3)]
    refs = [dict(ref_id=i, ann_id=10 * i, image_id=i, split='train', category_id=1,
                 sentences=[dict(sent=f'the cat number {i}')]) for i in (1, 2, 3)]
    (folder / 'instances.json').write_text(json.dumps(dict(images=images, annotations=annotations,
                                                           categories=[])))
    with open(folder / 'refs(unc).p', 'wb') as f:
        pickle.dump(refs, f)
    ds = ReferSegDataset(str(photos), str(photos / 'photos'), tokenizer, dataset='refcoco',
                         image_size=SIZE, max_length=256)
    assert supervised(ds[1]) == supervised(ds[2])  # row 1 (image 2) skipped, row 2 served instead
    assert ds.skipped == {'KeyError': 1}
    assert f"skipped row 1 (image_id '2') of {folder / 'refs(unc).p'}: KeyError: 'height'" in log()


def test_a_string_area_is_skipped(photos, tokenizer, log):
    """Flickr GCG (COCO style): ``"area": "100"`` (TypeError in GLaMM's box filter)."""
    shape = skdata.chelsea().shape[:2]
    caption = 'A tabby cat is lying on a blanket.'

    def ann(image_id, area):
        return {'image_id': image_id, 'bbox': [20, 20, 50, 70], 'area': area, 'iscrowd': 0,
                'tokens_positive': [[0, 11]], 'sam_mask': rle(box(shape, 20, 20, 70, 90))}

    data = {'images': [{'id': i, 'file_name': f'flickr30k_{i}_cat.png', 'height': shape[0],
                        'width': shape[1], 'caption': caption} for i in (1, 2)],
            'annotations': [ann(1, 3500), ann(2, '3500')]}
    path = photos / 'flickr.json'
    path.write_text(json.dumps(data))
    ds = FlickrGCGDataset(str(path), str(photos / 'photos'), tokenizer, image_size=SIZE,
                          max_length=256)
    assert supervised(ds[1]) == supervised(ds[0])  # the walk wraps round to row 0
    assert ds.skipped == {'TypeError': 1}
    assert f"skipped row 1 (id '2') of {path}: TypeError: '>' not supported" in log()


def test_a_lone_surrogate_that_sentencepiece_rejects_is_skipped(photos, tokenizer, log):
    path = photos / 'llava.json'
    rows = [caption_row('good'), caption_row('surrogate', value='A cat \ud800.'),
            caption_row('next')]
    path.write_text(json.dumps(rows))  # written as the JSON escape "\ud800", as such files hold it
    assert '\\ud800' in path.read_text()
    ds = LLaVADataset(str(path), str(photos), tokenizer, image_size=SIZE, max_length=256)
    assert supervised(ds[1]) == supervised(ds[2])
    assert ds.skipped == {'RuntimeError': 1}  # sentencepiece's pybind11 cast error
    assert f"skipped row 1 (id 'surrogate') of {path}: RuntimeError: " in log()


def test_a_decompression_bomb_is_skipped(photos, tokenizer, log, monkeypatch):
    """GranD-f GCG: PIL refuses an image over twice ``Image.MAX_IMAGE_PIXELS``
    (DecompressionBombError, which is not an OSError) while reading its size; here the limit is
    lowered instead of writing a 180-megapixel file."""
    Image.fromarray(skdata.chelsea()[:20, :30]).save(photos / 'photos' / 'small.png')  # 600 pixels
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)

    def entry(file_name, shape):
        return {'file_name': file_name, 'caption': 'A cat in the photo.',
                'groundings': {'A cat': {'token_positives': [0, 5],
                                         'rle_masks': [rle(box(shape, 2, 2, 12, 12))]}}}

    path = photos / 'grandf.json'
    path.write_text(json.dumps([entry('small.png', (20, 30)), entry('cat.png', (300, 451))]))
    ds = GranDfGCGDataset(str(path), str(photos / 'photos'), tokenizer, image_size=SIZE,
                          max_length=256)
    assert supervised(ds[1]) == supervised(ds[0])
    assert ds.skipped == {'DecompressionBombError': 1}
    assert f"skipped row 1 (file_name 'cat.png') of {path}: DecompressionBombError: " in log()


def test_an_unexpected_error_logs_its_traceback_once_per_type(photos, tokenizer):
    records = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = MMLogger.get_current_instance()
    handler = Keep()
    logger.addHandler(handler)
    try:
        path = photos / 'llava.json'
        path.write_text(json.dumps([caption_row(i, value=f'A cat \ud800 {i}.') for i in range(3)]
                                   + [caption_row('good')]))
        ds = LLaVADataset(str(path), str(photos), tokenizer, image_size=SIZE, max_length=256)
        ds[0], ds[1]
    finally:
        logger.removeHandler(handler)
    skips = [r for r in records if 'skipped row' in r.getMessage()]
    assert len(skips) == 3 + 2  # rows 0-2 from the first draw, rows 1-2 from the second
    assert skips[0].exc_info is not None and all(r.exc_info is None for r in skips[1:])
    assert ds.skipped == {'RuntimeError': 5}


# ------------------------------------------------------------------ run totals across workers
def test_counts_add_up_across_dataloader_workers(photos, tokenizer):
    """With 2 workers, each a copy of the dataset, the main process reads the run total (a
    per-worker Counter, as before, left the main process's count at zero)."""
    bad = {1, 4, 7, 10}  # isolated: each is drawn once and walked past once
    rows = [caption_row(i, image='photos/absent.png' if i in bad else 'photos/cat.png')
            for i in range(12)]
    path = photos / 'llava.json'
    path.write_text(json.dumps(rows))
    ds = LLaVADataset(str(path), str(photos), tokenizer, image_size=SIZE, max_length=256)
    loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=first)
    items = list(loader)
    assert len(items) == 12 and all(item['pixel_values'] is not None for item in items)
    assert ds.skipped == {'image not found': 4}
    assert ds.skipped.served == 12 and ds.skipped.total == 4


def test_spawned_workers_share_the_counts_too():
    ds = Numbers(11)
    loader = DataLoader(ds, batch_size=1, num_workers=2, multiprocessing_context='spawn',
                        collate_fn=first)
    assert len(list(loader)) == 11
    # ZeroDivisionError: rows 0, 3, 6, 9 drawn, and row 6 again when the draw of row 5 walks past it
    assert ds.skipped == {'ZeroDivisionError': 5, 'bad number': 1}
    assert ds.skipped.served == 11


def test_a_copied_counter_is_independent_and_keeps_the_counts():
    ds = Numbers(4)
    ds[0]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.skipped == {'ZeroDivisionError': 1} and copy.skipped.served == 1
    copy[3]  # skips 3, wraps round to 0 (skipped again), serves 1
    assert copy.skipped.total == 3 and copy.skipped.served == 2
    assert ds.skipped.total == 1 and ds.skipped.served == 1


def test_reasons_beyond_the_table_are_counted_together():
    from omg_llava.datasets.skip_counter import OTHER_REASONS, SkipCounter
    counter = SkipCounter(max_reasons=3)
    for reason in ['a', 'b', 'c', 'd', 'a']:
        counter.add(reason)
    assert counter == {'a': 2, 'b': 1, OTHER_REASONS: 2}


def test_every_malformed_sample_names_a_fixed_reason_before_its_details():
    """Counts are keyed by the message up to its first colon: that part must hold no value (path,
    number, coordinates), or one reason would split into as many keys as rows."""
    offenders = []
    for path in sorted(DATASETS_DIR.glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call)
                    and getattr(node.func, 'id', None) == 'MalformedSample'):
                continue
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                continue
            head = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else None
            if not (isinstance(head, ast.Constant) and ':' in head.value
                    and head.value.index(':') > 0):
                offenders.append(f'{path.name}:{node.lineno}')
    assert not offenders, offenders


def test_the_first_skip_of_a_new_reason_is_logged_after_the_first_ten(log):
    class LateSurprise(SkippingDataset):
        """Rows 0-11 malformed, row 12 a ValueError, row 13 good."""

        def __init__(self) -> None:
            super().__init__()
            self.records = list(range(14))

        def load_record(self, index: int) -> int:
            if index < 12:
                raise MalformedSample(f'bad number: {index}')
            return int('x') if index == 12 else index

    ds = LateSurprise()
    assert ds[0] == 13
    assert ds.skipped == {'bad number': 12, 'ValueError': 1}
    text = log()
    # rows 10 and 11: the 11th, 12th skips
    assert 'skipped row 9 ' in text and 'skipped row 10 ' not in text
    assert "skipped row 12 ('12'): ValueError: invalid literal for int()" in text
