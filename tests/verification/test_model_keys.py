"""The full-size model of the real config has exactly the released files' names and shapes."""
from __future__ import annotations

from omg_llava.verification.model_keys import build_part_on_meta, part_key_shapes

from conftest import FINETUNE_CONFIG, load_tool, read_key_manifest


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
    trunk = {k[len('backbone.'):]: v for k, v in part_key_shapes(str(FINETUNE_CONFIG), 'visual_encoder').items()
             if k.startswith('backbone.')}
    assert renamed == trunk


def test_built_on_meta_without_memory():
    encoder = build_part_on_meta(str(FINETUNE_CONFIG), 'visual_encoder')
    assert all(p.is_meta for p in encoder.parameters())
    assert tuple(encoder.panoptic_head.cls_embed.shape) == (768, 134, 17)  # non-persistent, in no file
    assert 'panoptic_head.cls_embed' not in encoder.state_dict()


def test_cli_output_format(capsys):
    assert load_tool('model_keys').main([str(FINETUNE_CONFIG), '--part', 'visual_encoder']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == sorted(lines) and len(lines) == 655
    assert 'panoptic_head.pixel_decoder.input_convs.0.conv.weight\t256,1536,1,1' in lines
    assert 'panoptic_head.query_embed.weight\t300,256' in lines
