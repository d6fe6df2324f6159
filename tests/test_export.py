"""LoRA merge and the self-contained export folder (spec §7.4): the merged LLM reproduces the
fixture's LoRA logits, and a reloaded export gives the same logits and [SEG] masks as the LoRA model
it came from."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from omg_llava.export import (CLS_EMBED_KEY, EXPORT_JSON, MODULES_FILE, export_merged_model,
                              load_exported_model, merge_lora_state_dict, merged_llm_state_dict)
from omg_llava.inference.model_builder import build_model as build_from_config
from omg_llava.models import OMGLLaVA
from omg_llava.models.multimodal_inputs import placeholder_batch_indices
from omg_llava.models.visual_prompts import prompts_from_tensors
from omg_llava.registry import MODELS
from omg_llava.utils.constants import IMAGE_TOKEN_INDEX
from omg_llava.verification.reference_fixture import (build_llm, build_model, build_visual_encoder,
                                                      load_fixture, load_fixture_weights)

from conftest import TINY_CONFIG, load_tool

ATOL = 1e-4


@pytest.fixture(scope='module')
def fixture(reference_fixture_path):
    return load_fixture(reference_fixture_path)


@pytest.fixture(scope='module')
def lora_model(fixture) -> OMGLLaVA:
    tensors, meta = fixture
    model = build_model(meta['config'])
    load_fixture_weights(model, tensors, '')
    model.visual_encoder.panoptic_head.set_class_embeddings(tensors['input/ov_class_embed'])
    return model.eval()


def fixture_encoder_config(config: dict) -> dict:
    """The visual encoder of ``reference_fixture.build_visual_encoder`` as a config dict (registered
    names)."""
    bb, head = config['backbone'], config['head']
    pd, td = head['pixel_decoder'], head['transformer_decoder']
    _, num_synonyms, clip_dim = head['ov_class_embed_shape']
    return dict(
        type='OMGSegVisualEncoder',
        backbone=dict(type='ConvNeXtCLIPBackbone', depths=tuple(bb['depths']),
                      dims=tuple(bb['dims']),
                      clip_embed_dim=bb['clip_embed_dim'], kernel_size=bb['kernel_size'],
                      mlp_ratio=bb['mlp_ratio']),
        panoptic_head=dict(
            type='OMGSegHead', in_channels=tuple(head['in_channels']),
            strides=tuple(head['strides']),
            feat_channels=head['feat_channels'], num_queries=head['num_queries'],
            num_things_classes=head['num_things_classes'],
            num_stuff_classes=head['num_stuff_classes'],
            num_synonyms=num_synonyms, clip_embed_dim=clip_dim, num_heads=td['num_heads'],
            pixel_decoder_heads=pd['num_heads'], pixel_decoder_layers=pd['encoder_num_layers'],
            pixel_decoder_ffn_channels=pd['ffn_dim'], deform_points=pd['num_points'],
            decoder_layers=td['num_layers'], decoder_ffn_channels=td['ffn_dim'],
            num_feature_levels=head['num_transformer_feat_level'], logit_scale=head['logit_scale']),
        pixel_shuffle_ratio=config['visual_encoder']['pixel_shuffle_down_ratio'],
        object_prior_smooth=config['visual_encoder']['object_prior_smooth_ratio'])


@torch.no_grad()
def llm_and_seg_outputs(model: OMGLLaVA,
                        tensors: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spliced fixture inputs → (logits, attention mask, last-step [SEG] mask logits)."""
    ids, mask = tensors['input/input_ids'], tensors['input/attention_mask']
    regions = prompts_from_tensors('mask', tensors['input/regions'],
                                   placeholder_batch_indices(ids, mask, model.token_ids.region))
    marks = prompts_from_tensors('point', tensors['input/points'],
                                 placeholder_batch_indices(ids, mask, model.token_ids.mark))
    images = model.encode_images(tensors['input/pixel_values'])
    spliced = model.splice(ids, mask, tensors['input/labels'], images, regions, marks)
    out = model.run_llm(spliced)
    seg = spliced.labels == model.token_ids.seg
    masks = model.decode_seg_masks(out.hidden_states[-1][seg], seg.nonzero()[:, 0], images)[-1]
    return out.logits, spliced.attention_mask, masks


def test_merged_llm_reproduces_the_fixture_lora_logits(fixture):
    tensors, meta = fixture
    llm_weights = {k[len('state_dict/'):]: v for k, v in tensors.items()
                   if k.startswith('state_dict/llm.')}
    lora = meta['config']['lora']
    merged = merge_lora_state_dict(llm_weights, lora['lora_alpha'] / lora['r'])
    assert not any('lora_' in k or 'base_layer' in k or 'base_model' in k for k in merged)
    assert {'llm.model.tok_embeddings.weight', 'llm.model.layers.1.attention.wqkv.weight',
            'llm.output.weight'} \
        <= set(merged)
    plain = build_llm(meta['config'])
    plain.resize_token_embeddings(meta['config']['llm']['vocab_size_after_resize'])
    plain.load_state_dict({k[len('llm.'):]: v for k, v in merged.items()}, strict=True)
    with torch.no_grad():
        logits = plain(inputs_embeds=tensors['out/llm/inputs_embeds'],
                       attention_mask=tensors['out/llm/attention_mask'],
                       position_ids=tensors['out/llm/position_ids']).logits
    valid = tensors['out/llm/attention_mask'].bool()
    torch.testing.assert_close(logits[valid], tensors['out/llm/logits'][valid], atol=ATOL,
                               rtol=ATOL)
    # LoRA mattered
    assert (logits[valid] - tensors['out/llm/logits_without_lora'][valid]).abs().max() > 1e-2


def test_state_dict_merge_agrees_with_peft_merge_and_unload(lora_model):
    ours = merged_llm_state_dict(lora_model)
    peft_merged = copy.deepcopy(lora_model.llm).merge_and_unload().state_dict()
    assert sorted(ours) == sorted(peft_merged)
    for key, value in peft_merged.items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-6)


def test_merge_refuses_incomplete_pairs():
    prefix = 'llm.base_model.model.model.layers.0.attention.wo.'
    a, b, w = torch.ones(2, 4), torch.ones(4, 2), torch.zeros(4, 4)
    with pytest.raises(ValueError, match='lora_B is missing'):
        merge_lora_state_dict({prefix + 'base_layer.weight': w,
                               prefix + 'lora_A.default.weight': a}, 0.5)
    # a released finetune file alone has no base weights
    with pytest.raises(ValueError, match='base weights'):
        merge_lora_state_dict({prefix + 'lora_A.default.weight': a,
                               prefix + 'lora_B.default.weight': b}, 0.5)
    merged = merge_lora_state_dict({prefix + 'base_layer.weight': w,
                                    prefix + 'lora_A.default.weight': a,
                                    prefix + 'lora_B.default.weight': b, 'projector.w': a}, 0.5)
    assert torch.equal(merged['llm.model.layers.0.attention.wo.weight'], torch.full((4, 4), 1.0))
    assert merged['projector.w'] is a


def test_export_reloads_to_the_same_outputs(fixture, lora_model, tmp_path):
    tensors, meta = fixture
    encoder_cfg = fixture_encoder_config(meta['config'])
    assert {k: v.shape for k, v in MODELS.build(encoder_cfg).state_dict().items()} == \
        {k: v.shape for k, v in build_visual_encoder(meta['config']).state_dict().items()}
    out = export_merged_model(lora_model, tmp_path / 'export', visual_encoder=encoder_cfg)

    record = json.loads((out / EXPORT_JSON).read_text())
    assert record['visual_encoder']['panoptic_head']['type'] == 'OMGSegHead'
    assert record['special_token_ids'] == dict(seg=128, phrase_start=129, phrase_end=130,
                                               region=131, mark=132)
    assert (record['merged_lora'] == dict(r=16, lora_alpha=8, scale=0.5)
            and record['projector_depth'] == 2)
    saved_llm = load_file(out / 'llm' / 'model.safetensors')
    assert 'model.layers.0.attention.wqkv.weight' in saved_llm and not any('lora' in k
                                                                           for k in saved_llm)
    modules = load_file(out / MODULES_FILE)
    assert torch.equal(modules[CLS_EMBED_KEY], tensors['out/misc/cls_embed_buffer'])
    assert not any(k.startswith('llm.') for k in modules)

    reloaded = load_exported_model(out)
    assert not reloaded.has_lora and reloaded.token_ids == lora_model.token_ids
    logits, mask, seg_masks = llm_and_seg_outputs(reloaded, tensors)
    want_logits, want_mask, want_seg = llm_and_seg_outputs(lora_model, tensors)
    assert torch.equal(mask, want_mask)
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], want_logits[valid], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(logits[valid], tensors['out/llm/logits'][valid], atol=ATOL,
                               rtol=ATOL)
    torch.testing.assert_close(seg_masks, want_seg, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(seg_masks, tensors['out/seg/mask_logits3'], atol=ATOL, rtol=ATOL)


def test_export_requires_the_encoder_config(lora_model, tmp_path):
    with pytest.raises(ValueError, match='exactly one of config_path and visual_encoder'):
        export_merged_model(lora_model, tmp_path / 'export')


def tiny_finetune_pth(path, seed: int = 1):
    """A finetune file for the tiny config (random LoRA, vocabulary and projectors)."""
    # with its adapters: the finetune keys
    model, _, _ = build_from_config(str(TINY_CONFIG), merge_lora=False)
    gen = torch.Generator().manual_seed(seed)
    torch.save({k: 0.1 * torch.randn(v.shape, generator=gen)
                for k, v in model.state_dict().items()}, path)


def test_export_tool_on_the_tiny_config(tmp_path, capsys):
    tiny_finetune_pth(tmp_path / 'tiny_finetune.pth')
    tool = load_tool('export_hf')
    assert tool.main([str(TINY_CONFIG), '--pth', str(tmp_path / 'tiny_finetune.pth'),
                      '--out', str(tmp_path / 'export')]) == 0
    assert 'LoRA merged' in capsys.readouterr().out

    original, _, _ = build_from_config(str(TINY_CONFIG), pth=str(tmp_path / 'tiny_finetune.pth'),
                                       dtype='bf16', encoder_dtype='fp32')  # as the export keeps it
    reloaded = load_exported_model(tmp_path / 'export')
    assert next(reloaded.llm.parameters()).dtype == torch.bfloat16  # the tool's default dtype
    assert reloaded.tokenizer is not None and reloaded.token_ids == original.token_ids
    tok = reloaded.tokenizer
    assert tok.convert_tokens_to_ids('[SEG]') == original.token_ids.seg
    text = tok('a cat on the mat').input_ids
    ids = torch.tensor([text[:1] + [IMAGE_TOKEN_INDEX] + text[1:] + [original.token_ids.seg]])
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        results = []
        for model in (original, reloaded):
            images = model.encode_images(pixels)
            out = model.run_llm(model.splice(ids, images=images))
            masks = model.decode_seg_masks(out.hidden_states[-1][:, -1], torch.tensor([0]),
                                           images)[-1]
            results.append((out.logits, masks))
    torch.testing.assert_close(results[1][0], results[0][0], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(results[1][1], results[0][1], atol=ATOL, rtol=ATOL)


def test_export_tool_names_missing_encoder_files(tmp_path, capsys):
    text = TINY_CONFIG.read_text().replace('weights=dict()',
                                           "weights=dict(omg_seg='/nonexistent/omg_seg_convl.pth')")
    assert 'nonexistent' in text
    (tmp_path / 'tiny_with_files.py').write_text(text)
    tiny_finetune_pth(tmp_path / 'tiny_finetune.pth')
    tool = load_tool('export_hf')
    assert tool.main([str(tmp_path / 'tiny_with_files.py'), '--pth',
                      str(tmp_path / 'tiny_finetune.pth'), '--out', str(tmp_path / 'export')]) == 2
    assert '/nonexistent/omg_seg_convl.pth' in capsys.readouterr().err
    assert not (tmp_path / 'export').exists()


def test_export_tool_keeps_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    tiny_finetune_pth(tmp_path / 'tiny_finetune.pth')
    (tmp_path / 'export').mkdir()
    (tmp_path / 'export' / 'notes.txt').write_text('mine')
    tool = load_tool('export_hf')
    argv = [str(TINY_CONFIG), '--pth', str(tmp_path / 'tiny_finetune.pth'), '--out',
            str(tmp_path / 'export')]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is not empty' in err and '--overwrite' in err
    assert os.listdir(tmp_path / 'export') == ['notes.txt']
    inside = [str(TINY_CONFIG), '--pth', str(tmp_path / 'export' / 'w.pth'), '--out',
              str(tmp_path / 'export'), '--overwrite']
    (tmp_path / 'export' / 'w.pth').write_bytes((tmp_path / 'tiny_finetune.pth').read_bytes())
    assert tool.main(inside) == 2 and 'holds the input --pth' in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / 'export')) == ['notes.txt', 'w.pth']


def test_export_tool_writes_into_a_temporary_folder_then_renames(tmp_path, capsys, monkeypatch):
    tiny_finetune_pth(tmp_path / 'tiny_finetune.pth')
    (tmp_path / 'export').mkdir()
    (tmp_path / 'export' / 'old.txt').write_text('old export')
    import omg_llava.export as export
    real = export.export_merged_model
    seen = []

    def failing(model, out_dir, **kwargs):
        seen.append(out_dir)
        real(model, out_dir, **kwargs)
        raise OSError('No space left on device')

    monkeypatch.setattr(export, 'export_merged_model', failing)
    tool = load_tool('export_hf')
    argv = [str(TINY_CONFIG), '--pth', str(tmp_path / 'tiny_finetune.pth'), '--out',
            str(tmp_path / 'export'), '--overwrite']
    assert tool.main(argv) == 2 and 'No space left' in capsys.readouterr().err
    assert os.path.dirname(seen[0]) == str(tmp_path) and seen[0] != str(tmp_path / 'export')
    assert os.listdir(tmp_path / 'export') == ['old.txt'] and sorted(os.listdir(tmp_path)) == [
        'export',
        'tiny_finetune.pth',
    ]
    monkeypatch.setattr(export, 'export_merged_model', real)
    assert tool.main(argv) == 0
    assert ('old.txt' not in os.listdir(tmp_path / 'export')
            and (tmp_path / 'export' / 'omg_llava_export.json').exists())
    assert sorted(os.listdir(tmp_path)) == ['export', 'tiny_finetune.pth']
