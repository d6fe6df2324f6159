"""The random-weight bundle: the released layout, names, shapes and dtypes (the 7B preset against
the key manifests, on the meta device), and the tiny preset built through the user path, merged and
unmerged LoRA agreeing."""
from __future__ import annotations

import json
import os

import pytest
import sentencepiece as spm
import torch
from safetensors import safe_open

from omg_llava.benchmark import PRESETS, write_bundle
from omg_llava.benchmark.bundle import BundlePaths, bundle_config, llm_specs, open_clip_name
from omg_llava.inference.chat import OMGLLaVAChat
from omg_llava.models.weights import head_checkpoint_keys
from omg_llava.verification.model_keys import build_model_on_meta, part_key_shapes

from conftest import load_tool, read_key_manifest

PROMPT = 'Please segment the cat in this image.'


@pytest.fixture(scope='module')
def tiny_bundle(tmp_path_factory) -> BundlePaths:
    return write_bundle('tiny', tmp_path_factory.mktemp('bundle'), log=lambda line: None)


def test_7b_preset_has_the_released_names_and_shapes(tmp_path):
    paths = BundlePaths.under(tmp_path)
    os.makedirs(os.path.dirname(paths.config), exist_ok=True)
    with open(paths.config, 'w') as file:
        file.write(bundle_config(PRESETS['7b'], paths))
    assert part_key_shapes(paths.config, 'finetune') == read_key_manifest(
        'omg_llava_7b_finetune_8gpus.tsv'
    )
    encoder = build_model_on_meta(paths.config, 'visual_encoder')
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert {k: shapes[k] for k in head_checkpoint_keys(encoder)} == read_key_manifest(
        'omg_seg_convl.tsv'
    )
    clip = {open_clip_name(k[len('backbone.'):]): s for k, s in shapes.items()
            if k.startswith('backbone.')}
    assert clip == {k: s for k, s in read_key_manifest('clip_convnext_large_d_320.tsv').items()
                    if k.startswith('visual.')}
    llm = {spec.key: spec.shape for spec in llm_specs(PRESETS['7b'])}
    full = read_key_manifest('omg_llava_7b_finetune_8gpus_full_model.tsv', 'llm.base_model.model.')
    released = {k.replace('.base_layer', ''): (92544, s[1]) if s[0] == 92548 else s
                for k, s in full.items() if '.lora_' not in k}
    assert llm == released and sum(torch.Size(s).numel() for s in llm.values()) == 7_737_708_544


def test_tiny_bundle_files_have_the_released_layout_and_dtypes(tiny_bundle):
    llm_dir = tiny_bundle.llm_dir
    config = json.load(open(os.path.join(llm_dir, 'config.json')))
    assert (config['model_type'] == 'internlm2' and config['vocab_size'] == 1000
            and config['rope_theta'] == 1000000)
    index = json.load(open(os.path.join(llm_dir, 'model.safetensors.index.json')))
    shards = sorted(set(index['weight_map'].values()))
    assert len(shards) > 1 and shards[0] == f'model-00001-of-{len(shards):05d}.safetensors'
    seen = {}
    for shard in shards:
        with safe_open(os.path.join(llm_dir, shard), framework='pt') as f:
            seen.update({k: f.get_tensor(k) for k in f.keys()})
    assert set(seen) == set(index['weight_map']) == {s.key for s in llm_specs(PRESETS['tiny'])}
    assert {v.dtype for v in seen.values()} == {torch.bfloat16}
    assert torch.equal(seen['model.norm.weight'], torch.ones(64, dtype=torch.bfloat16))
    assert 0.015 < seen['model.layers.0.feed_forward.w1.weight'].float().std() < 0.025
    sp = spm.SentencePieceProcessor(model_file=os.path.join(llm_dir, 'tokenizer.model'))
    assert sp.get_piece_size() == 1000 and sp.piece_to_id('<|im_end|>') != sp.unk_id()
    omg_seg = torch.load(tiny_bundle.omg_seg, weights_only=True)
    assert set(omg_seg) == {'state_dict'} and all(k.startswith('panoptic_head.')
                                                  for k in omg_seg['state_dict'])
    finetune = torch.load(tiny_bundle.finetune, weights_only=True)
    assert ({v.dtype for v in finetune.values()} == {torch.float32}
            and len(finetune) == 2 + 2 * 11 + 15)
    assert torch.load(tiny_bundle.class_embed, weights_only=True).shape == (133, 2, 32)
    assert all(k.startswith('visual.') for k in torch.load(tiny_bundle.clip, weights_only=True))


def test_tiny_bundle_builds_through_the_user_path_with_a_clean_report(tiny_bundle):
    chat, notes = OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune,
                                           dtype='bf16')
    assert any('11 LoRA pairs merged' in n for n in notes) and not chat.model.has_lora
    assert any(n.startswith('omg_seg: ') for n in notes) and not any('random' in n for n in notes)
    chat.set_image(torch.randint(0, 255, (91, 127, 3), dtype=torch.uint8).numpy())
    assert len(chat.ask(PROMPT, max_new_tokens=3).token_ids) >= 1


@torch.no_grad()
def llm_outputs(chat: OMGLLaVAChat, image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, final hidden states, [SEG] mask logits read at the last prompt position) of the
    first question."""
    from omg_llava.utils.conversation import Turn, encode_conversation
    chat.set_image(image)
    model = chat.model
    ids = torch.tensor([encode_conversation(chat.tokenizer, [Turn(PROMPT)],
                                            with_image=True).input_ids])
    images = chat._conversation.encoded
    spliced = model.splice(ids, None, None, images, [], [])
    out = model.run_llm(spliced)
    hidden = out.hidden_states[-1][:, -1]
    masks = model.decode_seg_masks(hidden, torch.zeros(1, dtype=torch.long), images)[-1]
    return out.logits.float(), hidden.float(), masks.float()


def test_merged_and_unmerged_lora_agree_within_bf16_rounding(tiny_bundle):
    image = torch.randint(0, 255, (91, 127, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    # the fp32 encoder of the fp32 runs below, so that their visual tokens line up
    merged, _ = OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='bf16',
                                         encoder_dtype='fp32')
    kept, notes = OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune,
                                           dtype='bf16', merge_lora=False, encoder_dtype='fp32')
    assert kept.model.has_lora and not any('merged' in n for n in notes)
    assert {p.dtype for n, p in kept.model.llm.named_parameters()} == {torch.bfloat16}
    (logits_m, hidden_m, masks_m), (logits_k, hidden_k, masks_k) = (llm_outputs(c, image.numpy())
                                                                   for c in (merged, kept))
    assert (logits_m - logits_k).abs().max() < 0.05 * logits_k.abs().max()
    torch.testing.assert_close(hidden_m, hidden_k, atol=0.1, rtol=0.05)
    assert ((masks_m > 0) == (masks_k > 0)).float().mean() > 0.98
    # Greedy answers of a random model meet near-ties that bf16 rounding flips; in fp32 they must be
    # equal.
    fp32 = [OMGLLaVAChat.from_config(tiny_bundle.config, pth=tiny_bundle.finetune, dtype='fp32',
                                     merge_lora=merge)[0]
            for merge in (True, False)]
    logits = [llm_outputs(c, image.numpy())[0] for c in fp32]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-4, rtol=1e-4)
    # bf16 is not fp32: the tolerance above is a real one
    assert (logits[1] - logits_k).abs().max() > 0
    answers = [c.ask(PROMPT, max_new_tokens=6).token_ids for c in fp32]
    assert answers[0] == answers[1]


def test_write_bundle_command(tmp_path, capsys):
    assert load_tool('benchmark').main(['write-bundle', '--preset', 'tiny', '--out',
                                        str(tmp_path / 'b')]) == 0
    info = json.loads((tmp_path / 'b' / 'bundle.json').read_text())
    assert info['preset']['name'] == 'tiny' and info['bytes']['finetune'] > 0
    assert f'tools/chat.py {tmp_path / "b" / "omg_llava_bundle.py"}' in capsys.readouterr().out
