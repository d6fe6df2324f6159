"""The full-size model of the real config has exactly the released files' names and shapes."""
from __future__ import annotations

from omg_llava.verification.model_keys import build_model_on_meta, part_key_shapes

from conftest import FINETUNE_CONFIG, PRETRAIN_CONFIG, load_tool, read_key_manifest


def test_visual_encoder_keys_equal_the_released_files():
    shapes = part_key_shapes(str(FINETUNE_CONFIG), 'visual_encoder')
    head = {k: v for k, v in shapes.items() if k.startswith('panoptic_head.')}
    trunk = {k: v for k, v in shapes.items() if k.startswith('backbone.')}
    assert head == read_key_manifest('omg_seg_convl.tsv')  # the 310 tensors of omg_seg_convl.pth
    assert len(head) == 310
    assert trunk == read_key_manifest('omg_llava_visual_backbone_model_side.tsv', 'visual_encoder.')
    assert len(trunk) == 345 and len(shapes) == 655


def test_trunk_keys_equal_the_open_clip_file_after_renaming():
    from omg_llava.checkpoint import rename_keys
    from omg_llava.models.backbones.convnext_clip import OPEN_CLIP_RENAMES
    open_clip = read_key_manifest('clip_convnext_large_d_320.tsv')
    visual = {k: v for k, v in open_clip.items() if k.startswith('visual.')}
    renamed, _ = rename_keys(visual, OPEN_CLIP_RENAMES)
    trunk = {k[len('backbone.'):]: v
             for k, v in part_key_shapes(str(FINETUNE_CONFIG), 'visual_encoder').items()
             if k.startswith('backbone.')}
    assert renamed == trunk


def test_built_on_meta_without_memory():
    encoder = build_model_on_meta(str(FINETUNE_CONFIG), 'visual_encoder')
    assert all(p.is_meta for p in encoder.parameters())
    # non-persistent, in no file
    assert tuple(encoder.panoptic_head.cls_embed.shape) == (768, 134, 17)
    assert 'panoptic_head.cls_embed' not in encoder.state_dict()


def test_cli_output_format(capsys):
    assert load_tool('model_keys').main([str(FINETUNE_CONFIG), '--part', 'visual_encoder']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == sorted(lines) and len(lines) == 655
    assert 'panoptic_head.pixel_decoder.input_convs.0.conv.weight\t256,1536,1,1' in lines
    assert 'panoptic_head.query_embed.weight\t300,256' in lines


def test_pretrain_checkpoint_keys_equal_the_manifest(capsys):
    """The 17 tensors of omg_llava_7b_pretrain_8gpus.pth: vocabulary (92548 rows) and both
    projectors."""
    assert load_tool('model_keys').main([str(PRETRAIN_CONFIG), '--part', 'pretrain']) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = read_key_manifest('omg_llava_7b_pretrain_8gpus.tsv')
    assert printed == [f'{k}\t{",".join(map(str, s))}' for k, s in sorted(expected.items())]
    assert len(printed) == 17


def test_finetune_checkpoint_keys_equal_the_manifest(capsys):
    """The 339 tensors the public code saves in omg_llava_7b_finetune_8gpus.pth (LoRA r=512 incl.
    the LM head)."""
    assert load_tool('model_keys').main([str(FINETUNE_CONFIG), '--part', 'finetune']) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = read_key_manifest('omg_llava_7b_finetune_8gpus.tsv')
    assert printed == [f'{k}\t{",".join(map(str, s))}' for k, s in sorted(expected.items())]
    assert len(printed) == 339


def test_full_finetune_model_equals_the_full_manifest():
    shapes = part_key_shapes(str(FINETUNE_CONFIG), 'full')
    assert shapes == read_key_manifest('omg_llava_7b_finetune_8gpus_full_model.tsv')
    assert len(shapes) == 1219


def test_finetune_part_needs_a_lora_config():
    import pytest
    with pytest.raises(ValueError, match='no llm_lora'):
        part_key_shapes(str(PRETRAIN_CONFIG), 'finetune')


def test_task_finetune_keys_add_the_decoder_copies():
    from conftest import REPO_ROOT
    shapes = part_key_shapes(
        str(REPO_ROOT / 'configs' / 'specific_tasks_finetune' / 'finetune_refseg.py'), 'finetune'
    )
    expected = dict(read_key_manifest('omg_llava_7b_finetune_8gpus.tsv'))
    expected.update(read_key_manifest('finetuned_task_extra.tsv'))
    assert shapes == expected and len(shapes) == 339 + 170
