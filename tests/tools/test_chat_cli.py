"""tools/chat.py on the tiny model and the bundled photo, and the output writer it uses
(chat_outputs)."""
from __future__ import annotations

import importlib.util
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from omg_llava.assets import ASSET_DIR
from omg_llava.cli_errors import UsageError
from omg_llava.inference.chat import ChatAnswer, OMGLLaVAChat
from omg_llava.inference.chat_outputs import (PALETTE, PhraseStreamer, decode_rle, encode_rle,
                                              render_answer, write_answer)
from omg_llava.inference.model_builder import build_model

from conftest import TINY_CONFIG, load_tool

chat_tool = load_tool('chat')
# skimage's chelsea, bundled for the random-weight tests
PHOTO_PATH = os.path.join(ASSET_DIR, 'demo.jpg')
PHOTO = np.asarray(Image.open(PHOTO_PATH))  # 451 x 300
H, W = PHOTO.shape[:2]


def _masks(n: int) -> list[np.ndarray]:
    masks = []
    for i in range(n):
        m = np.zeros((H, W), dtype=bool)
        m[20 + 30 * i:120 + 30 * i, 40 + 50 * i:260 + 50 * i] = True
        masks.append(m)
    return masks


def test_bundled_photo_is_small_and_real():
    assert (H, W) == (300, 451) and os.path.getsize(PHOTO_PATH) < 100_000


def test_writer_outputs_overlay_mask_pngs_and_rle(tmp_path):
    longer = ChatAnswer('[SEG] [SEG] [SEG]', '', [], _masks(3), [1])
    write_answer(tmp_path, longer, PHOTO)  # an earlier, longer answer: its mask_2.png goes
    (tmp_path / 'mask_7.png').write_bytes(b'mine')  # not written by the chat: kept
    answer = ChatAnswer('<p> cat </p> [SEG] on <p> a mat </p> [SEG].', 'cat on a mat .',
                        ['cat', 'a mat'], _masks(2), [1, 2, 3])
    paths = write_answer(tmp_path, answer, PHOTO, question='Segment the cat.', image='demo.jpg')
    assert sorted(os.listdir(tmp_path)) == ['answer.json', 'mask_0.png', 'mask_1.png', 'mask_7.png',
                                            'overlay.png']
    assert (tmp_path / 'mask_7.png').read_bytes() == b'mine'
    overlay = np.asarray(Image.open(paths['overlay']))
    assert overlay.shape == PHOTO.shape
    outside = ~answer.masks[0] & ~answer.masks[1]
    assert ((overlay[outside] == PHOTO[outside]).all()
            and not (overlay[answer.masks[0]] == PHOTO[answer.masks[0]]).all())
    for path, mask in zip(paths['masks'], answer.masks):
        assert ((np.asarray(Image.open(path)) > 0) == mask).all()
    record = json.loads(open(paths['json']).read())
    assert record['text'] == answer.text and record['clean_text'] == answer.clean_text
    assert record['phrases'] == ['cat', 'a mat'] and record['question'] == 'Segment the cat.'
    assert record['mask_colours'] == [PALETTE[0].name, PALETTE[1].name]
    for rle, mask in zip(record['masks'], answer.masks):
        assert rle['size'] == [H, W] and isinstance(rle['counts'], str)
        decoded = mask_utils.decode({'size': rle['size'], 'counts': rle['counts'].encode()})
        assert decoded.shape == (H, W) and (decoded.astype(bool) == mask).all()
        assert (decode_rle(encode_rle(mask)) == mask).all()


@pytest.mark.parametrize('link', ['same', 'symlink', 'hardlink', 'stale'])
def test_writer_never_replaces_or_deletes_an_input(tmp_path, link):
    out = tmp_path / 'out'
    # mask_0.png, mask_1.png
    write_answer(out, ChatAnswer('[SEG] [SEG]', '', [], _masks(2), [1]), PHOTO)
    given = out / 'mask_1.png'
    if link != 'same' and link != 'stale':
        given = tmp_path / 'my_mask.png'
        given.write_bytes(b'input')
        (out / 'mask_1.png').unlink()
        (os.symlink if link == 'symlink' else os.link)(given, out / 'mask_1.png')
    before = given.read_bytes()
    # a one-mask answer would delete the earlier mask_1.png: not when it is an input
    if link == 'stale':
        write_answer(out, ChatAnswer('[SEG]', '', [], _masks(1), [1]), PHOTO, inputs=[str(given)])
    else:
        with pytest.raises(UsageError,
                           match=r'--out-dir: output .*mask_1.png would overwrite the input'):
            write_answer(out, ChatAnswer('[SEG] [SEG]', '', [], _masks(2), [1]), PHOTO,
                         inputs=[str(given)])
    assert given.read_bytes() == before


def test_phrases_take_the_colour_of_their_mask():
    text = 'The <p> cat </p> [SEG] sits on <p> a mat </p> [SEG].</s>'
    assert render_answer(text, ansi=False) == 'The cat sits on a mat .</s>'
    coloured = render_answer(text, ansi=True)
    assert f'{PALETTE[0].ansi}cat' in coloured and f'{PALETTE[1].ansi}a mat' in coloured
    assert render_answer('bell\x07 and\x1b escape', ansi=False) == 'bell and escape'


@pytest.fixture(scope='module')
def chat() -> OMGLLaVAChat:
    return OMGLLaVAChat.from_config(str(TINY_CONFIG))[0]


def test_streamer_prints_the_rendered_answer_token_by_token(chat):
    import torch
    ids = chat.tokenizer.encode('The <p> cat </p> [SEG] is here.', add_special_tokens=False)
    ids += chat.model.stop_token_ids[:1]
    stream = io.StringIO()
    streamer = PhraseStreamer(chat.tokenizer, chat.model.stop_token_ids, prefix='answer: ',
                              stream=stream)
    streamer.put(torch.zeros((1, 0), dtype=torch.long))  # generate puts the (empty) prompt first
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert stream.getvalue() == 'answer: The cat is here.\n'


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = chat_tool.main([str(TINY_CONFIG), '--image', PHOTO_PATH, '--max-new-tokens', '3', *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def force_seg(monkeypatch):
    """Make the random model answer [SEG] at every step (as tests/inference/test_chat.py does)."""
    ask = OMGLLaVAChat.ask

    def ask_with_seg(self, question, **kwargs):
        return ask(self, question, sequence_bias={(self.model.token_ids.seg, ): 100.0}, **kwargs)

    monkeypatch.setattr(OMGLLaVAChat, 'ask', ask_with_seg)


def test_one_shot_writes_overlay_masks_and_json(tmp_path, capsys, force_seg):
    code, out, err = _run(capsys, '--prompt', 'Please segment the main object in this image.',
                          '--out-dir', str(tmp_path))
    assert code == 0
    assert 'random' in err and 'answer: ' in out and '3 mask(s)' in out and '(red)' in out
    assert np.asarray(Image.open(tmp_path / 'overlay.png')).shape == PHOTO.shape
    record = json.loads((tmp_path / 'answer.json').read_text())
    assert record['image'] == os.path.abspath(PHOTO_PATH) and record['image_size'] == [H, W]
    assert (record['text'].count('[SEG]') == 3
            and record['mask_files'] == ['mask_0.png', 'mask_1.png', 'mask_2.png'])
    for rle in record['masks']:
        assert decode_rle(rle).shape == (H, W)


def test_boxes_and_masks_fill_region_in_command_line_order(tmp_path, capsys):
    mask_path = tmp_path / 'region.png'
    Image.fromarray(_masks(1)[0].astype(np.uint8) * 255).save(mask_path)
    code, out, _ = _run(capsys, '--prompt', 'Compare <region>, <region> and <region> at <mark>.',
                        '--box',
                        '10,10,200,150', '--mask', str(mask_path), '--box', '0,0,451,300',
                        '--point', '100,50', '--out-dir', str(tmp_path / 'out'))
    assert code == 0, out
    prompts = json.loads((tmp_path / 'out' / 'answer.json').read_text())['prompts']
    assert prompts == {'points': [[100.0, 50.0]], 'regions': [{'box': [10.0, 10.0, 200.0, 150.0]},
                                                               {'mask': str(mask_path)},
                                                               {'box': [0.0, 0.0, 451.0, 300.0]}]}


def test_interactive_turns_reset_and_exit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr('sys.stdin',
                        io.StringIO('What is at <mark>?\nAnd then?\n\nreset\nWhat is this?\nexit\n'
                                                 'never asked\n'))
    code, out, _ = _run(capsys, '--point', '120,80', '--out-dir', str(tmp_path))
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ['turn_1', 'turn_2', 'turn_3']
    turns = [json.loads((tmp_path / f'turn_{i}' / 'answer.json').read_text()) for i in (1, 2, 3)]
    assert turns[0]['prompts']['points'] == [[120.0, 80.0]] and turns[1]['prompts']['points'] == []
    assert [t['conversation'] for t in turns] == [1, 1, 2]
    assert turns[1]['history'][0][0] == 'What is at <mark>?' and turns[2]['history'] == []
    assert out.count('>>> answer: ') == 3 and 'conversation reset' in out


def test_interactive_bad_question_is_reported_and_the_chat_goes_on(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr('sys.stdin', io.StringIO('What is <region>?\n'))  # then EOF
    code, out, _ = _run(capsys, '--out-dir', str(tmp_path))
    assert code == 0 and 'error: the question holds 1 <region> but 0 regions' in out
    assert not tmp_path.exists() or not os.listdir(tmp_path)


@pytest.mark.parametrize('argv, message', [
    (['--prompt', 'What is at <mark>?', '--point', '451,10'],
     '--point 451,10 lies outside the 451x300 image'),
    (['--prompt', 'What is <region>?', '--box', '0,0,500,100'], 'leaves the 451x300 image'),
    (['--prompt', 'Compare <region>.', '--box', '1,1,5,5', '--box', '2,2,6,6'],
     'the prompt holds 1 <region> but 2 --box/--mask were given'),
    (['--prompt', 'What is this?', '--point', '3,3'], 'the prompt holds 0 <mark> but 1 --point'),
    (['--prompt', 'hi', '--pth', 'missing/omg_llava.pth'],
     '--pth file not found: missing/omg_llava.pth'),
    (['--prompt', 'hi', '--load-in-4bit'], '--load-in-4bit needs a CUDA GPU with bitsandbytes'),
    (['--prompt', 'hi', '--device', 'warp9'], "--device 'warp9' is not a torch device"),
])
def test_bad_inputs_exit_2_with_one_line(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.strip().startswith('error: ') and message in err and 'Traceback' not in err


def test_unreadable_image_and_mask(tmp_path, capsys):
    bad = tmp_path / 'notes.png'
    bad.write_text('not an image')
    code, _, err = _run(capsys, '--prompt', 'hi', '--image', str(bad))
    assert code == 2 and f"--image: cannot read '{bad}' as an image" in err
    small = tmp_path / 'small.png'
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(small)
    code, _, err = _run(capsys, '--prompt', '<region>?', '--mask', str(small))
    assert code == 2 and 'is 10x10 but the image is 451x300' in err


@pytest.mark.parametrize('argv, message',
                         [(['--point', '1,2,3'], '--point takes 2 comma-separated finite numbers'),
                                           (['--point', 'nan,5'],
                                            "--point takes 2 comma-separated finite numbers"),
                                           (['--box', '1,1,nan,5'],
                                            '--box takes 4 comma-separated finite numbers'),
                                           (['--box', '1,1,inf,5'],
                                            '--box takes 4 comma-separated finite numbers')])
def test_malformed_flags_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        chat_tool.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1


def test_build_model_quantization_needs_a_gpu_and_bitsandbytes():
    with pytest.raises(ValueError, match='needs a CUDA GPU'):
        build_model(str(TINY_CONFIG), quantization='4bit', device='cpu')
    if importlib.util.find_spec('bitsandbytes') is None:  # checked before any CUDA call
        with pytest.raises(ImportError, match='pip install bitsandbytes'):
            build_model(str(TINY_CONFIG), quantization='8bit', device='cuda')
    # no quantization_config: unchanged
    model, _, _ = build_model(str(TINY_CONFIG), quantization='none')
    assert next(model.llm.parameters()).dtype.is_floating_point


# ---------------------------------------------------------------------------------- nothing crashes
@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if the model is built (bad inputs must be answered before)."""
    monkeypatch.setattr(OMGLLaVAChat, 'from_config',
                        lambda *a, **k: pytest.fail('the model was built'))


def _weight_file(tmp_path, kind):
    if kind == 'png':
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'photo.png')
        return tmp_path / 'photo.png', 'is a PNG image'
    if kind == 'empty':
        (tmp_path / 'empty.pth').write_bytes(b'')
        return tmp_path / 'empty.pth', 'is an empty file (0 bytes)'
    if kind == 'html':
        (tmp_path / 'page.pth').write_text('<!DOCTYPE html><html>Access denied</html>')
        return tmp_path / 'page.pth', 'is an HTML page (a download that returned an error page?)'
    return tmp_path, 'is a directory, not a file'


@pytest.mark.parametrize('kind', ['png', 'empty', 'html', 'directory'])
def test_a_weight_file_that_is_something_else_is_named(tmp_path, capsys, no_build, kind):
    path, message = _weight_file(tmp_path, kind)
    code, _, err = _run(capsys, '--prompt', 'hi', '--pth', str(path))
    assert code == 2 and err.strip() == f'error: --pth {path} {message}' + (
        ', not a weight file: give the .pth / .bin / .safetensors file' if kind in ('png', 'html')
        else
        ': an interrupted download or copy? Fetch it again' if kind == 'empty'
        else ': give the file inside it')


@pytest.mark.parametrize('argv, message', [
    (['--prompt', ''], '--prompt: the question is empty'),
    (['--prompt', ' \t '], '--prompt: the question is empty'),
    (['--prompt', 'caf\udce9?'], '--prompt: the question holds an invalid character at position 3'),
    (['--prompt', 'hi', '--device', 'cuda'], '--device cuda: torch sees no CUDA GPU here'),
    (['--prompt', 'hi', '--device', 'cuda:0'], '--device cuda:0: torch sees no CUDA GPU here'),
])
def test_bad_text_and_device_are_refused_before_the_build(capsys, monkeypatch, no_build, argv,
                                                          message):
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.strip().startswith(f'error: {message}') and err.count('\n') == 1


@pytest.mark.parametrize('interactive', [False, True])
def test_an_input_mask_in_out_dir_is_refused_before_the_build(tmp_path, capsys, monkeypatch,
                                                              no_build, interactive):
    out = tmp_path / 'out'
    folder = out / 'turn_1' if interactive else out
    folder.mkdir(parents=True)
    Image.fromarray(_masks(1)[0].astype(np.uint8) * 255).save(folder / 'mask_0.png')
    before = (folder / 'mask_0.png').read_bytes()
    monkeypatch.chdir(tmp_path)
    prompt = [] if interactive else ['--prompt', 'Describe <region>.']
    code, _, err = _run(capsys, *prompt, '--mask',
                        os.path.join('out', 'turn_1' if interactive else '', 'mask_0.png'),
                        '--out-dir', os.path.join('.', 'out', '..', 'out'))
    assert (code == 2 and err.count('\n') == 1 and 'would overwrite the input' in err
            and 'mask_0.png' in err)
    assert (folder / 'mask_0.png').read_bytes() == before


def test_out_dir_that_is_a_file_is_refused_before_the_build(tmp_path, capsys, no_build):
    (tmp_path / 'out').write_text('my notes')
    code, _, err = _run(capsys, '--prompt', 'hi', '--out-dir', str(tmp_path / 'out'))
    assert code == 2 and 'is a file, not a folder' in err
    assert (tmp_path / 'out').read_text() == 'my notes'


def test_interactive_chat_survives_bad_bytes_and_failing_questions(tmp_path, capsys, monkeypatch):
    ask = OMGLLaVAChat.ask

    def ask_or_fail(self, question, **kwargs):
        if question == 'crash':
            raise RuntimeError('CUDA error: device-side assert triggered')
        return ask(self, question, **kwargs)

    monkeypatch.setattr(OMGLLaVAChat, 'ask', ask_or_fail)
    stdin = io.TextIOWrapper(io.BytesIO(b'caf\xe9?\n   \ncrash\nWhat is this?\n'), encoding='utf-8')
    monkeypatch.setattr('sys.stdin', stdin)
    code, out, _ = _run(capsys, '--out-dir', str(tmp_path))
    assert code == 0
    assert 'error: the question holds an invalid character at position 3' in out
    assert 'error: CUDA error: device-side assert triggered' in out
    # the last question was answered
    assert out.count('answer: ') == 1 and os.listdir(tmp_path) == ['turn_1']


def test_mask_prompts_are_read_upright_and_from_alpha(tmp_path, capsys, monkeypatch):
    seen = []
    ask = OMGLLaVAChat.ask
    monkeypatch.setattr(OMGLLaVAChat, 'ask',
                        lambda self, q, **kw: seen.append(kw['regions']) or ask(self, q, **kw))
    region = _masks(1)[0]
    alpha = np.zeros((H, W, 4), np.uint8)
    alpha[..., 3] = region * 255  # drawn only in the alpha channel
    Image.fromarray(alpha).save(tmp_path / 'alpha.png')
    # stored turned left, EXIF turns it back
    rotated = Image.fromarray(np.rot90(region).astype(np.uint8) * 255)
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / 'rotated.png', exif=exif.tobytes())
    code, out, err = _run(capsys, '--prompt', 'Compare <region> and <region>.', '--mask',
                          str(tmp_path / 'alpha.png'),
                          '--mask', str(tmp_path / 'rotated.png'), '--out-dir',
                          str(tmp_path / 'out'))
    assert code == 0, err
    assert [np.array_equal(m, region) for m in seen[0]] == [True, True]
