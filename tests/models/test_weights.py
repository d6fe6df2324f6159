"""Loading the released visual-encoder files: strict reports, wrong files, truncation, untrusted
pickles."""
from __future__ import annotations

import pytest
import torch

from omg_llava.checkpoint import CheckpointError, CheckpointMismatchError, read_weights
from omg_llava.inference.encoder_builder import visual_encoder_config
from omg_llava.models.weights import head_checkpoint_keys, load_visual_encoder_weights
from omg_llava.registry import MODELS

from conftest import TINY_CONFIG


@pytest.fixture
def encoder():
    cfg, _ = visual_encoder_config(str(TINY_CONFIG))
    torch.manual_seed(0)
    return MODELS.build(cfg)


def _omg_seg_file(encoder, path, mutate=None):
    sd = {k: torch.randn_like(v) for k, v in encoder.state_dict().items()
          if k in head_checkpoint_keys(encoder)}
    if mutate:
        mutate(sd)
    torch.save({'state_dict': sd, 'meta': {'mmengine_version': '0.10.7', 'epoch': 12}}, path)
    return sd


def test_mmengine_wrapped_file_loads_every_head_tensor(encoder, tmp_path):
    sd = _omg_seg_file(encoder, tmp_path / 'omg_seg.pth')
    [report] = load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'omg_seg.pth'))
    assert report.ok and sorted(report.loaded) == sorted(sd)
    for key, value in sd.items():
        assert torch.equal(encoder.state_dict()[key], value)


def test_shape_mismatch_is_reported_by_name_and_nothing_is_copied(encoder, tmp_path):
    before = encoder.state_dict()['panoptic_head.query_feat.weight'].clone()

    def mutate(sd):
        sd['panoptic_head.query_embed.weight'] = torch.zeros(21, 64)
    _omg_seg_file(encoder, tmp_path / 'bad.pth', mutate)
    with pytest.raises(CheckpointMismatchError,
                       match=r'query_embed\.weight: \[21, 64\] vs \[20, 64\]'):
        load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'bad.pth'))
    assert torch.equal(encoder.state_dict()['panoptic_head.query_feat.weight'], before)


def test_missing_and_unexpected_keys_are_listed(encoder, tmp_path):
    def mutate(sd):
        del sd['panoptic_head.pos_linear.bias']
        sd['panoptic_head.extra_layer.weight'] = torch.zeros(1)
    _omg_seg_file(encoder, tmp_path / 'bad.pth', mutate)
    with pytest.raises(CheckpointMismatchError) as err:
        load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'bad.pth'))
    message = str(err.value)
    assert 'missing from the file (1)' in message and 'panoptic_head.pos_linear.bias' in message
    assert 'unexpected in the file (1)' in message and 'panoptic_head.extra_layer.weight' in message


def test_pretrain_checkpoint_given_as_omg_seg_file_is_named(encoder, tmp_path):
    pretrain = {'llm.model.tok_embeddings.weight': torch.zeros(4, 2),
                'llm.output.weight': torch.zeros(4, 2),
                'projector.model.seperate_embed.weight': torch.zeros(1, 2)}
    torch.save(pretrain, tmp_path / 'omg_llava_7b_pretrain_8gpus.pth')
    with pytest.raises(CheckpointMismatchError, match='OMG-LLaVA pretrain checkpoint') as err:
        load_visual_encoder_weights(encoder,
                                    omg_seg=str(tmp_path / 'omg_llava_7b_pretrain_8gpus.pth'))
    assert f'missing from the file ({len(head_checkpoint_keys(encoder))})' in str(err.value)


def test_truncated_file(encoder, tmp_path):
    _omg_seg_file(encoder, tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'cut.pth'))


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'optimizer': _Opaque()},
               tmp_path / 'train_state.pth')
    with pytest.raises(CheckpointError, match='weights_only=False'):
        read_weights(tmp_path / 'train_state.pth')
    assert isinstance(read_weights(tmp_path / 'train_state.pth', weights_only=False)['optimizer'],
                      _Opaque)


class _Opaque:
    pass


def test_class_embedding_file(encoder, tmp_path):
    embed = torch.nn.functional.normalize(torch.randn(133, 2, 32), dim=-1)
    torch.save(embed, tmp_path / 'ov.pth')
    load_visual_encoder_weights(encoder, class_embed=str(tmp_path / 'ov.pth'))
    buffer = encoder.panoptic_head.cls_embed  # (clip_dim, K+1, synonyms)
    assert torch.equal(buffer[:, :133], embed.permute(2, 0, 1)) and torch.equal(buffer[:, 133],
                                                                                torch.zeros(32, 2))
    torch.save(embed * 2, tmp_path / 'not_normalised.pth')
    with pytest.raises(CheckpointError, match='unit-norm'):
        load_visual_encoder_weights(encoder, class_embed=str(tmp_path / 'not_normalised.pth'))
    torch.save(embed[:80], tmp_path / 'wrong_classes.pth')
    with pytest.raises(CheckpointError, match=r'\[133, 2, 32\]'):
        load_visual_encoder_weights(encoder, class_embed=str(tmp_path / 'wrong_classes.pth'))


def test_omg_seg_file_given_as_class_embeddings_and_vice_versa(encoder, tmp_path):
    _omg_seg_file(encoder, tmp_path / 'omg_seg.pth')
    with pytest.raises(CheckpointError, match='OMG-Seg checkpoint'):
        load_visual_encoder_weights(encoder, class_embed=str(tmp_path / 'omg_seg.pth'))
    torch.save(torch.zeros(133, 2, 32), tmp_path / 'ov.pth')
    with pytest.raises(CheckpointError, match='class-embedding file'):
        load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'ov.pth'))


def test_missing_file_names_the_path(encoder, tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        load_visual_encoder_weights(encoder, omg_seg=str(tmp_path / 'nowhere.pth'))


@pytest.mark.parametrize('kind, content, named', [
    ('empty', b'', 'is an empty file (0 bytes): an interrupted download or copy? Fetch it again'),
    ('png', b'\x89PNG\r\n\x1a\n' + bytes(64), 'is a PNG image, not a weight file'),
    ('html', b'<!DOCTYPE html><html>403 Forbidden</html>',
     'is an HTML page (a download that returned an error'),
    ('text', b'model = dict(type="OMGLLaVA")\n',
     'is a text file (a config or a list given in place of the'),
    ('directory', None, 'is a directory, not a file: give the file inside it'),
])
def test_a_file_that_is_no_weight_file_is_named_for_what_it_is(tmp_path, kind, content, named):
    path = tmp_path / f'{kind}.pth'
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        read_weights(path)
    message = str(err.value)
    assert message == f'weight file {path} {message.split(f"{path} ", 1)[1]}' and named in message
    assert ('\n' not in message and 'trust-checkpoint' not in message
            and 'weights_only' not in message)
