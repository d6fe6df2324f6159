"""Own vocabulary: the open_clip text tower on transformers' CLIP text model, the CLIP BPE
tokenizer, the gen_cls embedding recipe, and tools/make_class_embeddings.py (OMG-Seg spec §1-2), on
tiny random weights."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from omg_llava.segmentation.text_tower import (CLIPTextEncoder, load_clip_tokenizer,
                                               load_text_tower,
                                               open_clip_text_to_transformers,
                                               text_config_from_open_clip)
from omg_llava.segmentation.vocabulary import (TEMPLATES, Vocabulary, coco_panoptic_vocabulary,
                                               embed_vocabulary, parse_vocabulary, split_synonyms)

from conftest import load_tool, read_key_manifest
from tiny_clip_text import open_clip_text_forward, write_tiny_text_tower


def test_transformers_tower_equals_open_clip_text_forward(tmp_path):
    weights, _, sd = write_tiny_text_tower(tmp_path)
    model, report = load_text_tower(weights)
    assert report.ok and len(report.loaded) == len(model.state_dict())
    assert sorted(report.ignored) == ['logit_scale', 'visual.trunk.stem.0.weight']
    cfg = model.config
    assert (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.projection_dim,
    ) == (64, 2, 1, 32)
    g = torch.Generator().manual_seed(1)
    eos = cfg.eos_token_id
    ids = torch.randint(1, eos - 1, (4, 77), generator=g)
    ids[:, 0] = eos - 1
    # end-of-text then 0 padding, as open_clip tokenizes
    for row, end in enumerate((5, 17, 40, 76)):
        ids[row, end] = eos
        ids[row, end + 1:] = 0
    expected = open_clip_text_forward(sd, ids, heads=1)
    with torch.no_grad():
        got = model(input_ids=ids).text_embeds
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # padding after the end-of-text token does not matter (causal mask, pooling at the first
    # end-of-text)
    padded_with_eos = ids.clone()
    padded_with_eos[padded_with_eos == 0] = eos
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=padded_with_eos).text_embeds, expected,
                                   rtol=1e-5, atol=1e-5)
    # two heads: the packed in-projection rows are split per head the way MultiheadAttention splits
    # them
    model2, _ = load_text_tower(weights, num_heads=2)
    with torch.no_grad():
        torch.testing.assert_close(model2(input_ids=ids).text_embeds,
                                   open_clip_text_forward(sd, ids, heads=2), rtol=1e-5, atol=1e-5)


def test_full_size_text_keys_map_one_to_one():
    manifest = read_key_manifest('clip_convnext_large_d_320.tsv')
    text = {k: v for k, v in manifest.items() if not k.startswith('visual.')}
    assert len(text) == 198
    meta = {k: torch.empty(shape, device='meta') for k, shape in text.items()}
    cfg = text_config_from_open_clip(meta)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.max_position_embeddings, cfg.projection_dim, cfg.eos_token_id, cfg.hidden_act) == (
                49408, 768, 3072, 16, 12, 77, 768, 49407, 'gelu')
    from transformers import CLIPTextModelWithProjection
    with torch.device('meta'):
        model = CLIPTextModelWithProjection(cfg)
    renamed, unknown = open_clip_text_to_transformers(meta)
    assert unknown == []
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # 197 file tensors (-logit_scale) + 3-way splits
    assert {k: tuple(v.shape) for k, v in renamed.items()} == own
    assert len(own) == 197 - 16 * 2 + 16 * 6


def test_tokenizer_from_open_clip_bpe_file(tmp_path):
    _, gz, _ = write_tiny_text_tower(tmp_path)
    tokenizer = load_clip_tokenizer(gz, cache_dir=tmp_path / 'cache')
    vocab = json.loads(next((tmp_path / 'cache').glob('*/vocab.json')).read_text())
    # byte symbols, then with </w>, then merges, then specials
    assert vocab['!'] == 0 and vocab['!</w>'] == 256
    assert tokenizer.bos_token_id == len(vocab) - 2 and tokenizer.eos_token_id == len(vocab) - 1
    encoder_ids = tokenizer(['This is a photo of a cat.', 'this  IS a photo of a CAT.'],
                            padding='max_length', max_length=77)['input_ids']
    assert encoder_ids[0] == encoder_ids[1]  # lowercased, whitespace collapsed
    ids = encoder_ids[0]
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    end = ids.index(tokenizer.eos_token_id)
    pieces = tokenizer.convert_ids_to_tokens(ids[1:end])
    assert ''.join(pieces).replace('</w>', ' ').strip() == 'this is a photo of a cat .'
    assert 'photo</w>' in pieces  # a merged word is one id (the BPE learnt from the templates)


def test_split_synonyms_as_gen_cls():
    assert split_synonyms('cupboard_or_showcase_or_storage_rack') == ['cupboard', 'showcase',
                                                                      'storage rack']
    assert split_synonyms('Giant_Panda') == ['giant panda']
    assert split_synonyms('sky/clouds') == ['sky', 'clouds']
    assert split_synonyms('tree,trees, palm tree') == ['tree', 'trees', 'palm tree']


def test_parse_vocabulary_inline_file_and_coco(tmp_path):
    inline = parse_vocabulary('cat,dog,traffic light,stuff:sky/clouds')
    assert (inline.classes == ('cat', 'dog', 'traffic light', 'sky,clouds')
            and inline.num_things == 3)
    assert inline.names == ('cat', 'dog', 'traffic light', 'sky')
    path = tmp_path / 'vocab.txt'
    path.write_text(inline.text())
    assert parse_vocabulary(path) == inline
    with pytest.raises(ValueError, match='thing class follows the stuff'):
        parse_vocabulary('stuff:sky,cat')
    with pytest.raises(FileNotFoundError):
        parse_vocabulary(str(tmp_path / 'missing.txt'))
    coco = coco_panoptic_vocabulary()
    assert (len(coco), coco.num_things) == (133, 80)
    assert sum(len(s) for s in coco.synonyms) == 254 and max(len(s) for s in coco.synonyms) == 17
    assert (coco.names[0] == 'person' and coco.names[116] == 'tree'
            and coco.classes[119] == 'sky,clouds')


class _CountingEncoder:
    """Deterministic fake text features: one random vector per string (seeded by its hash),
    scaled."""

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen.extend(texts)
        return torch.stack(
            [
                torch.randn(8, generator=torch.Generator().manual_seed(hash(t) % 2**31)) * 3
                for t in texts
            ]
        )


def test_embed_vocabulary_recipe():
    encoder = _CountingEncoder()
    emb = embed_vocabulary(encoder, Vocabulary(('cat,kitty,kitten', 'dog'), 2))
    assert emb.shape == (2, 3, 8) and emb.dtype == torch.float32
    assert encoder.seen[:14] == [t.format('cat') for t in TEMPLATES] and len(encoder.seen) == 4 * 14
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 3))
    # padding repeats synonym 0
    assert torch.equal(emb[1, 1], emb[1, 0]) and torch.equal(emb[1, 2], emb[1, 0])
    feats = encoder.encode([t.format('kitty') for t in TEMPLATES])
    expected = F.normalize(F.normalize(feats, dim=-1).mean(0), dim=0)  # normalise, mean, normalise
    torch.testing.assert_close(emb[0, 1], expected)
    assert not torch.allclose(emb[0, 1], F.normalize(feats.mean(0), dim=0), atol=1e-4)


def test_make_class_embeddings_tool_and_check(tmp_path, capsys):
    weights, gz, _ = write_tiny_text_tower(tmp_path)
    tool = load_tool('make_class_embeddings')
    out = tmp_path / 'emb.pth'
    assert tool.main(['--classes', 'cat,dog/puppy,traffic light,stuff:sky', '--out', str(out),
                      '--clip-pth', str(weights), '--tokenizer', str(gz)]) == 0
    emb = torch.load(out, weights_only=True)
    assert isinstance(emb, torch.Tensor) and emb.shape == (4, 2, 32) and emb.dtype == torch.float32
    assert parse_vocabulary(str(out.with_suffix('.txt'))).num_things == 3
    # the same numbers as the tower used directly
    model, _ = load_text_tower(weights)
    direct = embed_vocabulary(CLIPTextEncoder(model,
                                              load_clip_tokenizer(gz, cache_dir=tmp_path / 'c2')),
                              'cat,dog/puppy,traffic light,stuff:sky')
    torch.testing.assert_close(emb, direct)
    assert tool.main(['--classes', 'cat,dog/puppy,traffic light,stuff:sky', '--out',
                      str(tmp_path / 'again.pth'),
                      '--clip-pth', str(weights), '--tokenizer', str(gz), '--check', str(out)]) == 0
    assert 'min cosine 1.000000' in capsys.readouterr().out
    other = emb.clone()
    other[2] = F.normalize(torch.randn(2, 32), dim=-1)
    torch.save(other, tmp_path / 'other.pth')
    assert tool.main(['--classes', 'cat,dog/puppy,traffic light,stuff:sky', '--out',
                      str(tmp_path / 'x.pth'),
                      '--clip-pth', str(weights), '--tokenizer', str(gz), '--check',
                      str(tmp_path / 'other.pth')]) == 1
    printed = capsys.readouterr().out
    assert '1 of 4 classes at or below 0.9999' in printed and 'traffic light' in printed
    assert tool.main(['--classes', 'cat', '--out', str(tmp_path / 'y.pth'), '--clip-pth',
                      str(tmp_path / 'no.bin'), '--tokenizer', str(gz)]) == 2
    assert 'not found' in capsys.readouterr().err
