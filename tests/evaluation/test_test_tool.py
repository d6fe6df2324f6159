"""tools/test.py in-process: with the tiny random model on the tiny REFER data, ModelPredictor's two
paths, and with a stand-in model (fixed answers) on files in the real formats, where ``--protocol
reference`` must give the released scripts' numbers computed here by hand; the quantization
options."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from conftest import TINY_CONFIG, load_project_module, load_tool
from omg_llava.evaluation import runner
from omg_llava.evaluation.captions import caption_metrics
from omg_llava.evaluation.runner import REGION_CAPTION_PROMPT, ModelPredictor, evaluate
from omg_llava.evaluation.splits import load_split, rle_of
from omg_llava.inference.chat import OMGLLaVAChat

from voc_fixtures import MASKS, REGIONS, Answer, write_region_captions


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny') / 'data'
    load_project_module('build_tiny_data').build_tiny_data(str(root))
    return root


@pytest.fixture(scope='module')
def chat():
    return OMGLLaVAChat.from_config(str(TINY_CONFIG), seed=0)[0]


def test_tool_on_tiny_refcoco_val(tiny_data, tmp_path, capsys):
    tool = load_tool('test')
    out_dir = tmp_path / 'out'
    assert tool.main([str(TINY_CONFIG), '--task', 'refseg', '--data-root',
                      str(tiny_data / 'ref_seg'),
                      '--dataset', 'refcoco', '--split', 'val', '--max-samples', '3', '--device',
                      'cpu', '--out-dir', str(out_dir), '--no-progress']) == 0
    metrics = json.loads((out_dir / 'metrics.json').read_text())
    assert {'cIoU', 'gIoU', 'num_expressions', 'num_without_seg'} <= metrics.keys()
    assert metrics['protocol'] == 'corrected'  # the default
    assert metrics['num_expressions'] == 3 and 0 <= metrics['cIoU'] <= 1
    assert metrics['num_failed'] == 0 and metrics['failures'] == []
    records = [json.loads(line)
               for line in (out_dir / 'predictions.jsonl').read_text().splitlines()]
    assert len(records) == 3
    assert {
        'sentence',
        'answer',
        'has_seg',
        'pred_mask',
        'intersection',
        'union',
        'iou',
    } <= records[0].keys()
    assert '"cIoU"' in capsys.readouterr().out


def test_predictor_masks_reach_the_metrics(chat, tiny_data):
    # the reference image folder
    split = load_split('refseg', str(tiny_data / 'ref_seg'), 'refcoco', 'val')
    seg = chat.model.token_ids.seg
    predictor = ModelPredictor(chat, max_new_tokens=2,
                               generation_kwargs=dict(sequence_bias={(seg, ): 100.0}))
    metrics = evaluate(split, predictor, None, max_samples=2, progress=False)
    assert metrics['num_without_seg'] == 0 and 0 <= metrics['cIoU'] <= 1
    answer = predictor(split.image_path(split.samples[0]),
                       'Please segment the camera in this image.')
    assert len(answer.masks) == 2 and answer.masks[0].shape == (split.samples[0]['height'],
                                                                  split.samples[0]['width'])


def test_predictor_puts_the_region_at_mark(chat, tmp_path):
    write_region_captions(tmp_path)
    split = load_split('region_caption', str(tmp_path), 'refcocog', 'val',
                       image_folder=str(tmp_path / 'images'))
    predictor = ModelPredictor(chat, max_new_tokens=3)
    answer = predictor.describe_region(split.image_path(split.samples[0]), REGION_CAPTION_PROMPT,
                                       split.region_mask(split.samples[0]))
    assert len(answer.token_ids) <= 3 and isinstance(answer.text, str)
    with pytest.raises(ValueError, match='does not match the image size'):
        predictor.describe_region(split.image_path(split.samples[0]), REGION_CAPTION_PROMPT,
                                  np.ones((3, 3), bool))
    metrics = evaluate(split, predictor.describe_region, None, progress=False, java=None)
    assert metrics['num_regions'] == 2 and 'CIDEr' in metrics
    assert MASKS[0].shape == split.region_mask(split.samples[1]).shape


# --------------------------------------------------------------------------------- a stand-in model
def install_fake_model(monkeypatch, answer) -> list[dict]:
    """Make tools/test.py build no model: ``OMGLLaVAChat.from_config`` returns a placeholder (its
    keyword arguments are appended to the returned list) and ``ModelPredictor`` answers
    ``answer(image_path, prompt, region_mask)``."""
    built = []

    class FakePredictor:
        def __init__(self, chat, max_new_tokens):
            self.max_new_tokens = max_new_tokens

        def __call__(self, image_path, prompt):
            return answer(image_path, prompt, None)

        def describe_region(self, image_path, prompt, region_mask):
            return answer(image_path, prompt, region_mask)

        def answer_with_regions(self, image_path, prompt, region_masks):
            raise AssertionError('no region_qa here')

    def from_config(config_path, **kwargs):
        built.append(kwargs)
        return object(), ['stand-in model']

    monkeypatch.setattr(OMGLLaVAChat, 'from_config', from_config)
    monkeypatch.setattr(runner, 'ModelPredictor', FakePredictor)
    return built


def run_tool(tmp_path, *args):
    out_dir = tmp_path / f'out_{len(list(tmp_path.glob("out_*")))}'
    assert load_tool('test').main([str(TINY_CONFIG), *args, '--device', 'cpu', '--out-dir',
                                   str(out_dir), '--no-progress', '--no-meteor']) == 0
    metrics = json.loads((out_dir / 'metrics.json').read_text())
    records = [json.loads(line)
               for line in (out_dir / 'predictions.jsonl').read_text().splitlines()]
    return metrics, records


def block(rows, cols, shape):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def rect(x0, y0, x1, y1):
    """A COCO polygon; pycocotools fills rows y0..y1-1, columns x0..x1-1 (checked below)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


REF_SHAPE = (8, 10)
#: sentence -> (annotation polygons, answer mask or None for an answer without [SEG])
REF_CASES = {
    'the two boxes': ([rect(0, 0, 4, 4), rect(2, 0, 6, 4)],
                      block(slice(0, 4), slice(0, 6), REF_SHAPE)),
    'the bar': ([rect(0, 5, 10, 8)], block(slice(5, 8), slice(0, 5), REF_SHAPE)),
    'the bottom bar': ([rect(0, 5, 10, 8)], None),
    'the corner': ([rect(7, 0, 10, 3)], block(slice(0, 3), slice(6, 10), REF_SHAPE)),
}


@pytest.fixture
def polygon_refer(tmp_path):
    """A REFER folder (refs(unc).p + instances.json, polygon segmentations) of one 8 x 10 image:
    object 1 is two overlapping polygons, objects 2 and 3 one polygon each; 'the bar' and 'the
    bottom bar' are two sentences of one ref."""
    from omg_llava.datasets.mask_decoding import decode_segmentation
    assert np.array_equal(decode_segmentation([rect(0, 0, 4, 4)], *REF_SHAPE),
                          block(slice(0, 4), slice(0, 4),
                                                                                     REF_SHAPE))
    root = tmp_path / 'ref_seg'
    (root / 'refcoco').mkdir(parents=True)
    (tmp_path / 'images').mkdir()
    annotations = [dict(id=1, image_id=7, category_id=1, segmentation=REF_CASES['the two boxes'][0],
                        iscrowd=0),
                   dict(id=2, image_id=7, category_id=1, segmentation=REF_CASES['the bar'][0],
                        iscrowd=0),
                   dict(id=3, image_id=7, category_id=1, segmentation=REF_CASES['the corner'][0],
                        iscrowd=0)]
    refs = [dict(ref_id=1, ann_id=1, image_id=7, split='val', category_id=1,
                 sentences=[dict(sent='the two boxes', sent_id=1)]),
            dict(ref_id=2, ann_id=2, image_id=7, split='val', category_id=1,
                 sentences=[dict(sent='the bar', sent_id=2),
                            dict(sent='the bottom bar', sent_id=3)]),
            dict(ref_id=3, ann_id=3, image_id=7, split='val', category_id=1,
                 sentences=[dict(sent='the corner', sent_id=4)])]
    with open(root / 'refcoco' / 'refs(unc).p', 'wb') as f:
        pickle.dump(refs, f, protocol=2)
    (root / 'refcoco' / 'instances.json').write_text(json.dumps(dict(
        images=[dict(id=7, file_name='img.jpg', height=REF_SHAPE[0], width=REF_SHAPE[1])],
        annotations=annotations)))
    return root


def refseg_answer(image_path, prompt, region_mask):
    sentence = re.fullmatch(r'Please segment (.+) in this image\.', prompt).group(1)
    mask = REF_CASES[sentence][1]
    return Answer('It is [SEG].', [mask]) if mask is not None else Answer('I cannot see it.', [])


def test_refseg_protocols_by_hand(polygon_refer, tmp_path, monkeypatch):
    install_fake_model(monkeypatch, refseg_answer)
    args = ['--task', 'refseg', '--data-root', str(polygon_refer), '--dataset', 'refcoco',
            '--split', 'val', '--image-folder', str(tmp_path / 'images')]
    # corrected: union ground truth (the two boxes: 24 pixels), no [SEG] = empty prediction.
    # (I, U): two boxes (24, 24), bar (15, 30), bottom bar (0, 30), corner (9, 12)
    corrected, _ = run_tool(tmp_path, *args)
    assert corrected['protocol'] == 'corrected'
    assert (corrected['cIoU'] == pytest.approx(48 / 96)
            and corrected['gIoU'] == pytest.approx((1 + 0.5 + 0 + 0.75) / 4))
    # reference: the boxes' overlap (columns 2-3, 8 pixels) counts 2 and is not ground truth: (I, U)
    # = (16, 24); the bottom bar (no [SEG]) is out of cIoU and counts 0 in gIoU; the script's 1e-10
    # / 1e-5 guards
    reference, records = run_tool(tmp_path, *args, '--protocol', 'reference')
    assert reference['protocol'] == 'reference' and reference['num_without_seg'] == 1
    assert reference['num_expressions'] == 4
    assert reference['cIoU'] == pytest.approx((16 + 15 + 9) / (24 + 30 + 12 + 1e-10), abs=1e-12)
    assert reference['gIoU'] == pytest.approx(
        (16 / (24 + 1e-5) + 15 / (30 + 1e-5) + 9 / (12 + 1e-5)) / 4, abs=1e-12
    )
    assert [(r['intersection'], r['union']) for r in records] == [(16, 24), (15, 30), (0, 30),
                                                                  (9, 12)]


GCG_SHAPE = (6, 10)
GCG_LEFT, GCG_RIGHT = block(slice(None), slice(0, 4), GCG_SHAPE), block(slice(None), slice(5, 10),
                                                                        GCG_SHAPE)
GCG_TRUTH = {'sa_1': ([GCG_LEFT, GCG_RIGHT], ['a red car', 'a tree'], 'A red car next to a tree.'),
             'sa_2': ([GCG_LEFT], ['a dog'], 'A dog on the grass.')}


@pytest.fixture
def grandf(tmp_path):
    """GranD-f val files: the caption file with the images and per image ``caption`` + ``labels``,
    the mask file with the images' sizes and one RLE annotation per phrase."""
    root = tmp_path / 'annotations'
    (root / 'gcg_val_test').mkdir(parents=True)
    (tmp_path / 'images').mkdir()
    mask_images, masks, caption_images, captions = [], [], [], []
    for image_id, (gt_masks, labels, caption) in GCG_TRUTH.items():
        mask_images.append(dict(id=image_id, file_name=f'{image_id}.jpg', height=GCG_SHAPE[0],
                                width=GCG_SHAPE[1]))
        masks += [dict(id=len(masks) + 1, image_id=image_id, category_id=1, segmentation=rle_of(m),
                       area=int(m.sum()), bbox=[0, 0, 1, 1], iscrowd=0) for m in gt_masks]
        caption_images.append(dict(id=image_id, file_name=f'{image_id}.jpg', height=GCG_SHAPE[0],
                                   width=GCG_SHAPE[1]))
        captions.append(dict(id=len(captions) + 1, image_id=image_id, caption=caption,
                             labels=labels))
    (root / 'gcg_val_test' / 'val_gcg_coco_mask_gt.json').write_text(json.dumps(dict(
        images=mask_images, annotations=masks, categories=[dict(id=1, name='object')])))
    (root / 'gcg_val_test' / 'val_gcg_coco_caption_gt.json').write_text(json.dumps(dict(
        images=caption_images, annotations=captions)))
    return root


def gcg_answer(image_path, prompt, region_mask):
    # the exact left mask named wrongly first, then the right one (IoU 0.8)
    if image_path.endswith('sa_1.jpg'):
        return Answer("'Here is\na scene with <p> a blue bus </p> [SEG] next to <p> a tree </p> "
                      "[SEG].'",
                      [GCG_LEFT, block(slice(None), slice(5, 9), GCG_SHAPE)])
    # sa_2: no [SEG] to the first question, the second one gets it
    if prompt.startswith('Could you please'):
        return Answer('A room.', [])
    return Answer('<p> A dog </p> [SEG] on the grass.', [GCG_LEFT])


def test_gcg_protocols_by_hand(grandf, tmp_path, monkeypatch):
    install_fake_model(monkeypatch, gcg_answer)
    args = ['--task', 'gcg', '--data-root', str(grandf), '--dataset', 'gcg_val_test', '--split',
            'val', '--image-folder', str(tmp_path / 'images')]
    corrected, _ = run_tool(tmp_path, *args)
    reference, records = run_tool(tmp_path, *args, '--protocol', 'reference')
    assert [r['question_index'] for r in records] == [0, 1]
    # mIoU: sa_1 pairs IoU 1 and 0.8, sa_2 IoU 1; AP50: every prediction matches its own ground
    # truth
    for metrics in (corrected, reference):
        assert metrics['mIoU'] == pytest.approx((0.9 + 1.0) / 2) and metrics['AP50'] == 1.0
        assert metrics['num_gt_phrases'] == 3
    # recall: in sa_1 the highest-IoU pair (left, 'a blue bus' vs 'a red car') fails the phrase
    # test: the reference stops there (0 of 2), the corrected protocol still pairs (right, 'a tree')
    # (1 of 2); sa_2: 1 of 1
    assert (reference['recall'] == pytest.approx(1 / 3)
            and corrected['recall'] == pytest.approx(2 / 3))
    # captions: newline removed without a space, quotes stripped
    hand = {'sa_1': 'Here isa scene with a blue bus next to a tree .',
            'sa_2': 'A dog on the grass.'}
    assert {r['image_id']: r['caption'] for r in records} == hand
    assert records[0]['phrases'] == ['a blue bus', 'a tree']
    expected = caption_metrics({i: [t[2]] for i, t in GCG_TRUTH.items()}, hand, meteor=False)
    for name in ('BLEU-1', 'BLEU-4', 'ROUGE-L', 'CIDEr'):
        assert reference[name] == pytest.approx(expected[name])
    assert reference['BLEU-1'] != pytest.approx(corrected['BLEU-1'])


def region_answer(image_path, prompt, region_mask):
    assert prompt == REGION_CAPTION_PROMPT
    if np.array_equal(region_mask, MASKS[15]):
        return Answer('Region1: a person sitting at a\ntable')
    return Answer("'a bottle standing on the table'")


def test_region_caption_protocols_by_hand(tmp_path, monkeypatch):
    install_fake_model(monkeypatch, region_answer)
    write_region_captions(tmp_path / 'region_caption')
    args = ['--task', 'region_caption', '--data-root', str(tmp_path / 'region_caption'),
            '--dataset', 'refcocog',
            '--split', 'val', '--image-folder', str(tmp_path / 'region_caption' / 'images')]
    corrected, corrected_records = run_tool(tmp_path, *args)
    reference, records = run_tool(tmp_path, *args, '--protocol', 'reference')
    hand = {1: 'a person sitting at atable', 2: 'a bottle standing on the table'}
    assert {r['image_id']: r['caption'] for r in records} == hand
    assert [r['caption'] for r in corrected_records] == ['a person sitting at a table',
                                                        "'a bottle standing on the table'"]
    expected = caption_metrics({i: [t] for i, t in enumerate(REGIONS.values(), start=1)}, hand,
                               meteor=False)
    for name in ('BLEU-1', 'BLEU-4', 'ROUGE-L', 'CIDEr'):
        assert reference[name] == pytest.approx(expected[name])
    assert corrected['BLEU-1'] == pytest.approx(1.0) and reference['BLEU-1'] < 1.0


# ------------------------------------------------------------------------------------- quantization
def test_quantized_llm_needs_cuda_and_fails_before_any_build(tmp_path, monkeypatch, capsys):
    built = install_fake_model(monkeypatch, refseg_answer)
    assert load_tool('test').main([str(TINY_CONFIG), '--task', 'refseg', '--data-root',
                                   str(tmp_path / 'absent'),
                                   '--dataset', 'refcoco', '--split', 'val', '--device', 'cpu',
                                   '--load-in-4bit']) == 2
    assert built == []  # before the split and the model
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and '--load-in-4bit needs a CUDA GPU with bitsandbytes' in err
    with pytest.raises(SystemExit):
        load_tool('test').main([str(TINY_CONFIG), '--task', 'refseg', '--data-root', str(tmp_path),
                                '--dataset',
                                'refcoco', '--split', 'val', '--load-in-4bit', '--load-in-8bit'])
    assert 'not allowed with argument' in capsys.readouterr().err


def test_quantization_reaches_the_builder_and_its_errors_are_one_line(polygon_refer, tmp_path,
                                                                      monkeypatch, capsys):
    built = install_fake_model(monkeypatch, refseg_answer)
    # --device cuda is checked before the build
    monkeypatch.setattr('torch.cuda.is_available', lambda: True)
    args = [str(TINY_CONFIG), '--task', 'refseg', '--data-root', str(polygon_refer), '--dataset',
            'refcoco',
            '--split', 'val', '--image-folder', str(tmp_path / 'images'), '--device', 'cuda',
            '--out-dir', str(tmp_path / 'out'), '--no-progress', '--no-resume']
    load_tool('test').main(args + ['--load-in-8bit'])
    # the reference's compute dtype
    assert built[-1]['quantization'] == '8bit' and built[-1]['dtype'] == 'fp16'
    load_tool('test').main(args)
    assert built[-1]['quantization'] == 'none' and built[-1]['dtype'] == 'bf16'

    def missing_bitsandbytes(config_path, **kwargs):
        raise ImportError('4bit loading needs bitsandbytes: pip install bitsandbytes')

    monkeypatch.setattr(OMGLLaVAChat, 'from_config', missing_bitsandbytes)
    capsys.readouterr()
    assert load_tool('test').main(args + ['--load-in-4bit']) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: 4bit loading needs bitsandbytes: pip install bitsandbytes'


def test_tool_protocols_are_the_runner_ones():
    assert set(load_tool('test').PROTOCOLS) == set(runner.PROTOCOLS)


# ------------------------------------------------------------------------------------- nothing lost
def _refseg_args(polygon_refer, tmp_path, out_dir, *extra):
    return [str(TINY_CONFIG), '--task', 'refseg', '--data-root', str(polygon_refer), '--dataset',
            'refcoco',
            '--split', 'val', '--image-folder', str(tmp_path / 'images'), '--device', 'cpu',
            '--out-dir', str(out_dir), '--no-progress', *extra]


def _lines(path):
    return path.read_text().splitlines()


def test_an_interrupted_evaluation_keeps_its_predictions_and_resumes(polygon_refer, tmp_path,
                                                                     monkeypatch):
    calls = []

    def interrupted(image_path, prompt, region_mask):
        calls.append(prompt)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) during the third expression
        return refseg_answer(image_path, prompt, region_mask)

    install_fake_model(monkeypatch, interrupted)
    out = tmp_path / 'resumed'
    with pytest.raises(KeyboardInterrupt):
        load_tool('test').main(_refseg_args(polygon_refer, tmp_path, out))
    kept = [json.loads(line) for line in _lines(out / 'predictions.jsonl')]
    assert [r['index'] for r in kept] == [0, 1]  # written as they were made
    with open(out / 'predictions.jsonl', 'a') as f:
        f.write('{"index": 2, "sentence": "the bott')  # a kill in the middle of a write

    calls.clear()
    install_fake_model(monkeypatch, lambda *a: (calls.append(a[1]), refseg_answer(*a))[1])
    assert load_tool('test').main(_refseg_args(polygon_refer, tmp_path, out)) == 0
    assert len(calls) == 2  # only the expressions without a prediction
    resumed = json.loads((out / 'metrics.json').read_text())
    assert resumed['num_resumed'] == 2 and resumed['num_failed'] == 0

    fresh_out = tmp_path / 'fresh'
    assert load_tool('test').main(_refseg_args(polygon_refer, tmp_path, fresh_out)) == 0
    fresh = json.loads((fresh_out / 'metrics.json').read_text())
    assert fresh['num_resumed'] == 0
    assert {k: v for k, v in resumed.items() if k != 'num_resumed'} == {k: v
                                                                        for k, v in fresh.items()
                                                                      if k != 'num_resumed'}
    assert _lines(out / 'predictions.jsonl') == _lines(fresh_out / 'predictions.jsonl')

    calls.clear()  # a finished run is not predicted again; --no-resume starts over
    assert load_tool('test').main(_refseg_args(polygon_refer, tmp_path, out)) == 0 and calls == []
    assert load_tool('test').main(_refseg_args(polygon_refer, tmp_path, out, '--no-resume')) == 0
    assert len(calls) == 4


def test_failing_samples_are_listed_and_the_others_scored(polygon_refer, tmp_path, monkeypatch,
                                                          capsys):
    instances = json.loads((polygon_refer / 'refcoco' / 'instances.json').read_text())
    instances['annotations'][2]['segmentation'] = 'not a polygon'  # the corner's annotation
    (polygon_refer / 'refcoco' / 'instances.json').write_text(json.dumps(instances))

    def missing_image_for_the_bar(image_path, prompt, region_mask):
        if prompt == 'Please segment the bar in this image.':
            raise FileNotFoundError(f'image not found: {image_path!r}')
        return refseg_answer(image_path, prompt, region_mask)

    install_fake_model(monkeypatch, missing_image_for_the_bar)
    out = tmp_path / 'out'
    assert load_tool('test').main(_refseg_args(polygon_refer, tmp_path, out)) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['num_failed'] == 2 and metrics['num_scored'] == 2 and metrics['num_samples'] == 4
    assert [f['index'] for f in metrics['failures']] == [1, 3]
    assert metrics['failures'][0]['error'].startswith('FileNotFoundError: image not found')
    assert ('annotation 3' in metrics['failures'][1]['error']
            and metrics['failures'][1]['image'].endswith('img.jpg'))
    # scored over the two others: the two boxes (24, 24) and the bottom bar without [SEG] (0, 30)
    assert metrics['cIoU'] == pytest.approx(24 / 54)
    assert [json.loads(line)['index'] for line in _lines(out / 'predictions.jsonl')] == [0, 2]
    err = capsys.readouterr().err
    assert 'warning: 2 sample(s) failed' in err and 'failed: sample 1' in err


def test_one_bad_gcg_annotation_fails_its_image_only(grandf, tmp_path, monkeypatch):
    path = grandf / 'gcg_val_test' / 'val_gcg_coco_mask_gt.json'
    masks = json.loads(path.read_text())
    masks['annotations'][-1]['segmentation'] = {'size': [6, 10], 'counts': 12}  # sa_2's only mask
    path.write_text(json.dumps(masks))
    install_fake_model(monkeypatch, gcg_answer)
    metrics, records = run_tool(tmp_path, '--task', 'gcg', '--data-root', str(grandf), '--dataset',
                                'gcg_val_test', '--split', 'val', '--image-folder',
                                str(tmp_path / 'images'))
    assert [r['image_id'] for r in records] == ['sa_1'] and metrics['num_failed'] == 1
    assert "image 'sa_2'" in metrics['failures'][0]['error'] and metrics['num_images'] == 1


@pytest.mark.parametrize('case',
                         ['out_dir_is_a_file', 'unknown_split', 'missing_data_root',
                          'other_protocol',
                                  'cuda_without_gpu', 'png_as_pth'])
def test_bad_inputs_fail_before_the_model_with_one_line(case, polygon_refer, tmp_path, monkeypatch,
                                                        capsys):
    built = install_fake_model(monkeypatch, refseg_answer)
    out = tmp_path / 'out'
    args = _refseg_args(polygon_refer, tmp_path, out)
    expected = {'out_dir_is_a_file': 'is a file, not a folder',
                'unknown_split': "has no refs of split 'testC'",
                'missing_data_root': 'not found',
                'other_protocol': "holds predictions of protocol 'corrected'",
                'cuda_without_gpu': '--device cuda: torch sees no CUDA GPU',
                'png_as_pth': 'is a PNG image'}[case]
    if case == 'out_dir_is_a_file':
        out.write_text('notes')
    elif case == 'unknown_split':
        args[args.index('val')] = 'testC'
    elif case == 'missing_data_root':
        args[args.index(str(polygon_refer))] = str(tmp_path / 'absent')
    elif case == 'other_protocol':
        assert load_tool('test').main(args) == 0
        built.clear()
        capsys.readouterr()
        args.append('--protocol=reference')
    elif case == 'cuda_without_gpu':
        monkeypatch.setattr('torch.cuda.is_available', lambda: False)
        args[args.index('cpu')] = 'cuda'
    else:
        from PIL import Image
        Image.new('RGB', (4, 4)).save(tmp_path / 'photo.png')
        args += ['--pth', str(tmp_path / 'photo.png')]
    assert load_tool('test').main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and expected in err and '\n' not in err
    assert built == []  # the model is built only after every input is checked
