"""One error style in every tool (issue 25 item 9): a bad input gives one ``error:`` line and exit
status 2, before any model is built, and a file that is not what it should be is named for what it
is."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from omg_llava import cli_errors
from omg_llava.cli_errors import (UsageError, check_weight_file, describe_file, error_message,
                                  one_line_errors)

from conftest import TINY_CONFIG, load_tool


@pytest.fixture
def files(tmp_path):
    """A PNG, an empty file, an HTML error page, a text file, a folder, a torch file and an
    OMG-Seg-like file."""
    Image.new('RGB', (4, 4)).save(tmp_path / 'photo.png')
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'page.pth').write_text('<!doctype html><html><body>Not Found</body></html>')
    (tmp_path / 'config.txt').write_text('model = dict(type="OMGLLaVA")\n')
    (tmp_path / 'folder').mkdir()
    torch.save({'w': torch.zeros(2)}, tmp_path / 'weights.pth')
    torch.save({'panoptic_head.cls_embed.weight': torch.zeros(2, 3)},
               tmp_path / 'omg_seg_convl.pth')
    return tmp_path


def test_describe_file_names_what_a_file_is(files):
    assert [describe_file(files / n)
            for n in ('photo.png', 'empty.pth', 'page.pth', 'config.txt', 'folder',
                                               'weights.pth', 'absent.pth')] == [
        'a PNG image', 'an empty file (0 bytes)', 'an HTML page', 'a text file', 'a directory',
        'a torch zip checkpoint', 'missing']


def test_a_cut_torch_file_is_named_truncated(files):
    cut = files / 'cut.pth'
    cut.write_bytes((files / 'weights.pth').read_bytes()[:300])  # starts like a zip, no directory
    assert describe_file(cut) == 'a truncated zip file (its directory at the end is missing)'
    with pytest.raises(UsageError, match='is truncated or corrupt .* interrupted download'):
        check_weight_file(cut, '--pth')


def test_wrapper_prints_input_errors_and_keeps_tracebacks_of_bugs(capsys, monkeypatch):
    @one_line_errors
    def main(argv=None):
        raise {'usage': UsageError('--x is wrong; use --y'),
               'key': KeyError('no `model` in the config'),
               'empty': ValueError(''), 'bug': ZeroDivisionError('division by zero')}[argv]

    assert main('usage') == 2 and capsys.readouterr().err == 'error: --x is wrong; use --y\n'
    assert main('key') == 2 and capsys.readouterr().err == 'error: no `model` in the config\n'
    assert main('empty') == 2 and capsys.readouterr().err == 'error: ValueError (no message)\n'
    with pytest.raises(ZeroDivisionError):
        main('bug')
    monkeypatch.setenv(cli_errors.TRACEBACK_ENV, '1')
    with pytest.raises(UsageError):
        main('usage')
    assert error_message(KeyError(3)) == '3'


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


@pytest.mark.parametrize('name, message', [
    ('photo.png', 'is a PNG image, not a weight file'), ('empty.pth', 'is an empty file (0 bytes)'),
    ('page.pth', 'is an HTML page'), ('config.txt', 'is a text file'),
    ('folder', 'is a directory, not a file'), ('absent.pth', 'file not found')])
def test_export_names_the_file_given_as_pth(files, capsys, name, message):
    assert load_tool('export_hf').main([str(TINY_CONFIG), '--pth', str(files / name), '--out',
                                        str(files / 'export')]) == 2
    assert message in _one_line(capsys) and not (files / 'export').exists()


@pytest.mark.parametrize('name, message',
                         [('photo.png', 'is a PNG image'), ('empty.pth', 'is an empty file'),
                                           ('absent.pth', 'file not found'),
                                           ('folder',
                                            'is a folder but not a DeepSpeed checkpoint')])
def test_converter_names_the_file_it_was_given(files, capsys, name, message):
    assert load_tool('convert_to_pth').main([str(TINY_CONFIG), str(files / name), '--save-path',
                                             str(files / 'out.pth')]) == 2
    assert message in _one_line(capsys) and not (files / 'out.pth').exists()


def test_converter_recognises_the_omg_seg_file(files, capsys):
    assert load_tool('convert_to_pth').main([str(TINY_CONFIG), str(files / 'omg_seg_convl.pth'),
                                             '--save-path', str(files / 'out.pth')]) == 2
    err = capsys.readouterr().err
    assert (err.startswith('error: ')
            and 'looks like the OMG-Seg checkpoint (omg_seg_convl.pth)' in err)
    assert 'unrecognised' not in err


@pytest.mark.parametrize('tool, argv', [
    ('export_hf', ['--pth', '{weights}', '--out', '{tmp}/export']),
    ('segment_image', ['--config', str(TINY_CONFIG), '--out-dir', '{tmp}/seg']),
])
def test_cuda_without_a_gpu_is_refused_before_the_build(files, capsys, monkeypatch, tool, argv):
    monkeypatch.setattr('torch.cuda.is_available', lambda: False)
    argv = [a.format(weights=files / 'weights.pth', tmp=files) for a in argv]
    if tool == 'export_hf':
        argv.insert(0, str(TINY_CONFIG))
    assert load_tool(tool).main(argv + ['--device', 'cuda']) == 2
    assert '--device cuda: torch sees no CUDA GPU here' in _one_line(capsys)


@pytest.mark.parametrize('argv, message', [
    (['--image', '{files}/config.txt'], 'cannot read'),
    (['--image', '{files}/absent.png'], 'image not found'),
    (['--omg-seg-pth', '{files}/photo.png'], '--omg-seg-pth {files}/photo.png is a PNG image'),
    (['--out-dir', '{files}/config.txt'], 'is a file, not a folder'),
    (['--device', 'warp9'], 'is not a torch device'),
])
def test_segment_image_bad_inputs_are_one_line(files, capsys, monkeypatch, argv, message):
    from omg_llava.segmentation import builder
    monkeypatch.setattr(builder, 'build_segmenter',
                        lambda *a, **k: pytest.fail('the model was built'))
    argv = [a.format(files=files) for a in argv]
    out_dir = [] if '--out-dir' in argv else ['--out-dir', str(files / 'seg')]
    assert load_tool('segment_image').main(['--config', str(TINY_CONFIG), *out_dir, *argv]) == 2
    assert message.format(files=files) in _one_line(capsys)


def test_segment_image_refuses_non_finite_prompts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('segment_image').main(['--task', 'interactive', '--point', 'nan,3'])
    assert exit_info.value.code == 2 and 'finite numbers' in capsys.readouterr().err
