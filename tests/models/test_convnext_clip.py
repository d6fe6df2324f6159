"""Tests of the first-party ConvNeXt CLIP trunk and of the open_clip weight loader."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from omg_llava.checkpoint import CheckpointError, CheckpointMismatchError, load_into
from omg_llava.models.backbones.convnext_clip import (ConvNeXtBlock, ConvNeXtCLIPBackbone,
                                                      load_open_clip_weights)
from omg_llava.registry import MODELS

from conftest import DATA_DIR, KEYS_DIR

SPEC_TSV = KEYS_DIR / 'omg_llava_visual_backbone_model_side.tsv'
PREFIX = 'visual_encoder.backbone.'
TINY = dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256), clip_embed_dim=32)


def _tiny(**kwargs) -> ConvNeXtCLIPBackbone:
    return ConvNeXtCLIPBackbone(**TINY, **kwargs)


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5 + (1.0 if p.dim() == 1 else 0.0))


def test_full_size_keys_match_spec():
    assert SPEC_TSV.is_file(), f'spec key table not found: {SPEC_TSV}'
    expected = {}
    for line in SPEC_TSV.read_text().splitlines()[1:]:
        if not line.strip():
            continue
        key, shape = line.split('\t')
        assert key.startswith(PREFIX)
        expected[key[len(PREFIX):]] = tuple(int(s) for s in shape.split(',')) if shape else ()
    with torch.device('meta'):
        model = ConvNeXtCLIPBackbone()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 345
    assert got == expected
    assert all(p.is_meta for p in model.parameters())


def test_registry_builds_backbone():
    model = MODELS.build(dict(type='ConvNeXtCLIPBackbone', **TINY))
    assert isinstance(model, ConvNeXtCLIPBackbone)


def test_tiny_output_shapes():
    model = _tiny()
    _randomize(model)
    x = torch.randn(2, 3, 64, 64)
    feats = model(x)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4),
                                               (2, 256, 2, 2)]
    assert tuple(model.embed_image(x).shape) == (2, 32)
    assert all(torch.isfinite(f).all() for f in feats)


def test_block_matches_direct_computation():
    torch.manual_seed(0)
    dim = 16
    block = ConvNeXtBlock(dim, kernel_size=7, mlp_ratio=4, layer_norm_eps=1e-6)
    _randomize(block, seed=1)
    x = torch.randn(2, dim, 9, 11)
    p = dict(block.named_parameters())
    y = F.conv2d(x, p['conv_dw.weight'], p['conv_dw.bias'], padding=3, groups=dim)
    y = y.permute(0, 2, 3, 1)
    mu = y.mean(-1, keepdim=True)
    var = y.var(-1, unbiased=False, keepdim=True)
    y = (y - mu) / torch.sqrt(var + 1e-6) * p['norm.weight'] + p['norm.bias']
    y = F.linear(y, p['mlp.fc1.weight'], p['mlp.fc1.bias'])
    y = 0.5 * y * (1 + torch.erf(y / 2 ** 0.5))
    y = F.linear(y, p['mlp.fc2.weight'], p['mlp.fc2.bias'])
    expected = x + y.permute(0, 3, 1, 2) * p['gamma'][None, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_golden_fixture_parity():
    # the sizes below are this fixture's
    path = DATA_DIR / 'fixtures' / 'omg_llava_reference_tiny.pt'
    fx = torch.load(path, weights_only=True)
    head = 'state_dict/' + PREFIX
    weights = {k[len(head):]: v for k, v in fx.items() if k.startswith(head)}
    model = _tiny()
    report = load_into(model, weights, source=str(path))
    assert report.ok and len(report.loaded) == len(model.state_dict()) == 66
    feats = model(fx['input/pixel_values'])
    for i, feat in enumerate(feats):
        torch.testing.assert_close(feat, fx[f'out/backbone/feat{i}'], atol=1e-4, rtol=1e-4)


def test_frozen_semantics():
    model = _tiny()
    model.train()
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert all(f.grad_fn is None and not f.requires_grad for f in model(x))
    assert model.embed_image(x).grad_fn is None


def test_not_frozen_trains_normally():
    model = _tiny(frozen=False)
    model.train()
    assert all(m.training for m in model.modules())
    model.eval()
    assert not model.layer2.training
    feats = model(torch.randn(1, 3, 64, 64))
    feats[-1].sum().backward()
    assert model.stem[0].weight.grad is not None


# --------------------------------------------------------------------------------------------------
# open_clip loading

def _to_open_clip(name: str) -> str:
    """Inverse of the loader's renaming table, written independently."""
    if name.startswith('stem.'):
        return 'visual.trunk.' + name
    m = re.match(r'layer(\d)\.(.*)', name)
    if m:
        return f'visual.trunk.stages.{int(m.group(1)) - 1}.{m.group(2)}'
    if name.startswith('head.0.'):
        return 'visual.trunk.head.' + name[len('head.0.'):]
    if name.startswith('head.1.'):
        return 'visual.head.' + name[len('head.1.'):]
    raise AssertionError(name)


def _open_clip_state_dict(model: ConvNeXtCLIPBackbone) -> dict[str, torch.Tensor]:
    sd = {_to_open_clip(k): v.clone() for k, v in model.state_dict().items()}
    sd['transformer.resblocks.0.attn.in_proj_weight'] = torch.randn(96, 32)
    sd['token_embedding.weight'] = torch.randn(10, 32)
    sd['positional_embedding'] = torch.randn(77, 32)
    sd['ln_final.weight'] = torch.ones(32)
    sd['text_projection'] = torch.randn(32, 32)
    sd['logit_scale'] = torch.tensor(4.6052)
    return sd


@pytest.fixture
def source_model() -> ConvNeXtCLIPBackbone:
    model = _tiny()
    _randomize(model, seed=3)
    return model


def _save(state_dict: dict, path) -> None:
    """Write a flat state dict as ``.safetensors`` or as a torch pickle, by suffix."""
    if str(path).endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)


def _assert_same_weights(a: ConvNeXtCLIPBackbone, b: ConvNeXtCLIPBackbone) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize('suffix', ['.bin', '.safetensors'])
def test_load_open_clip_file(tmp_path, source_model, suffix):
    sd = _open_clip_state_dict(source_model)
    path = tmp_path / f'open_clip_pytorch_model{suffix}'
    _save(sd, path)
    target = _tiny()
    report = load_open_clip_weights(target, str(path))
    assert report.ok and len(report.loaded) == 66
    assert len(report.ignored) == 6 and 'logit_scale' in report.ignored
    _assert_same_weights(source_model, target)


def test_load_backbone_named_and_prefixed_files(tmp_path, source_model):
    plain = tmp_path / 'plain.pth'
    torch.save(source_model.state_dict(), plain)
    target = _tiny()
    load_open_clip_weights(target, plain)
    _assert_same_weights(source_model, target)

    prefixed = tmp_path / 'prefixed.pth'
    sd = {PREFIX + k: v for k, v in source_model.state_dict().items()}
    sd['visual_encoder.panoptic_head.query_feat.weight'] = torch.randn(4, 8)
    torch.save({'state_dict': sd}, prefixed)
    target = _tiny()
    report = load_open_clip_weights(target, prefixed)
    assert report.ignored == ['visual_encoder.panoptic_head.query_feat.weight']
    _assert_same_weights(source_model, target)


def test_shape_mismatch_names_key(tmp_path, source_model):
    sd = _open_clip_state_dict(source_model)
    sd['visual.trunk.stages.2.blocks.1.mlp.fc1.weight'] = torch.randn(3, 5)
    path = tmp_path / 'bad_shape.bin'
    torch.save(sd, path)
    target = _tiny()
    before = target.stem[0].weight.clone()
    with pytest.raises(CheckpointMismatchError, match=re.escape('layer3.blocks.1.mlp.fc1.weight')):
        load_open_clip_weights(target, path)
    assert torch.equal(target.stem[0].weight, before)  # nothing copied on failure


def test_missing_key_names_key(tmp_path, source_model):
    sd = _open_clip_state_dict(source_model)
    del sd['visual.head.mlp.fc2.weight']
    path = tmp_path / 'missing.bin'
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match=re.escape('head.1.mlp.fc2.weight')):
        load_open_clip_weights(_tiny(), path)


@pytest.mark.parametrize('suffix', ['.bin', '.safetensors'])
def test_truncated_file(tmp_path, source_model, suffix):
    sd = _open_clip_state_dict(source_model)
    full = tmp_path / f'full{suffix}'
    _save(sd, full)
    data = full.read_bytes()
    cut = tmp_path / f'cut{suffix}'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_open_clip_weights(_tiny(), cut)
