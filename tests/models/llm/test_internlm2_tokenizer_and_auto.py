"""InternLM2 tokenizer over a sentencepiece model trained here, and loading an
``internlm2-chat-7b``-style folder through the transformers Auto classes without
``trust_remote_code``."""
from __future__ import annotations

import copy
import json
import pickle
import random

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from omg_llava.models.llm import (InternLM2Config, InternLM2ForCausalLM, InternLM2Model,
                                  InternLM2Tokenizer)

OMG_TOKENS = ['[SEG]', '<p>', '</p>', '<region>', '<mark>']
CHAT_TOKENS = ['<|im_start|>', '<|im_end|>']
WORDS = ('the a cat dog sat on mat user hello world assistant image segment please what is this '
         'picture region').split()


@pytest.fixture(scope='module')
def sp_file(tmp_path_factory):
    """A 120-piece BPE sentencepiece model with the chat markers as user-defined pieces 3 and 4."""
    root, rng = tmp_path_factory.mktemp('sp'), random.Random(0)
    lines = [' '.join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice('.?!, ')
             for _ in range(400)]
    (root / 'corpus.txt').write_text('\n'.join(lines))
    spm.SentencePieceTrainer.train(
        input=str(root / 'corpus.txt'), model_prefix=str(root / 'sp'), vocab_size=120,
        model_type='bpe',
        user_defined_symbols=CHAT_TOKENS, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0,
        normalization_rule_name='identity', remove_extra_whitespaces=False, minloglevel=2)
    return root / 'sp.model'


@pytest.fixture(scope='module')
def sp(sp_file):
    return spm.SentencePieceProcessor(model_file=str(sp_file))


def chat_tokenizer_config() -> dict:
    """tokenizer_config.json shaped like internlm2-chat-7b's (remote-code auto_map included)."""
    special = {'lstrip': False, 'normalized': False, 'rstrip': False, 'single_word': False,
               'special': True}
    decoder = {str(i): {'content': tok, **special}
               for i, tok in enumerate(['<unk>', '<s>', '</s>'] + CHAT_TOKENS)}
    return {'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer',
                                           'tokenization_internlm2_fast.InternLM2TokenizerFast']},
            'tokenizer_class': 'InternLM2Tokenizer', 'bos_token': '<s>', 'eos_token': '</s>',
            'pad_token': '</s>',
            'unk_token': '<unk>', 'add_bos_token': True, 'add_eos_token': False,
            'decode_with_prefix_space': False,
            'clean_up_tokenization_spaces': False, 'added_tokens_decoder': decoder,
            'additional_special_tokens': CHAT_TOKENS}


def write_folder(root, sp_file, weights_format: str) -> InternLM2ForCausalLM:
    """Write config.json, weights and tokenizer files like a downloaded internlm2-chat-7b; return
    the model."""
    torch.manual_seed(0)
    config = dict(architectures=['InternLM2ForCausalLM'], attn_implementation='eager', bias=False,
                  auto_map={'AutoConfig': 'configuration_internlm2.InternLM2Config',
                            'AutoModel': 'modeling_internlm2.InternLM2ForCausalLM',
                            'AutoModelForCausalLM': 'modeling_internlm2.InternLM2ForCausalLM'},
                  bos_token_id=1, eos_token_id=2, pad_token_id=2, hidden_act='silu', hidden_size=64,
                  initializer_range=0.02, intermediate_size=96, max_position_embeddings=256,
                  model_type='internlm2',
                  num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2,
                  rms_norm_eps=1e-5,
                  rope_scaling={'type': 'dynamic', 'factor': 2.0}, rope_theta=1000000,
                  tie_word_embeddings=False,
                  torch_dtype='bfloat16', transformers_version='4.33.2', use_cache=True,
                  vocab_size=120)
    (root / 'config.json').write_text(json.dumps(config))
    model = InternLM2ForCausalLM(InternLM2Config(**config)).eval()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights_format == 'bin':
        torch.save(weights, root / 'pytorch_model.bin')
    else:
        save_file(weights, str(root / 'model.safetensors'), metadata={'format': 'pt'})
    (root / 'tokenizer.model').write_bytes(sp_file.read_bytes())
    (root / 'tokenizer_config.json').write_text(json.dumps(chat_tokenizer_config()))
    return model


def test_plain_text_is_bos_plus_sentencepiece_ids(sp_file, sp):
    tok = InternLM2Tokenizer(str(sp_file))
    text = 'hello world, a cat sat on the mat.'
    assert tok.vocab_size == sp.get_piece_size() == 120 and len(tok.get_vocab()) == 120
    assert tok.encode(text) == [1] + sp.encode(text)
    assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    assert tok.tokenize(text) == sp.encode(text, out_type=str)
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.decode(tok.encode(text)) == '<s>' + text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)


def test_added_tokens_get_consecutive_ids_and_split_the_text(sp_file, sp):
    tok = InternLM2Tokenizer(str(sp_file))
    assert tok.add_tokens(OMG_TOKENS, special_tokens=True) == 5
    assert tok.convert_tokens_to_ids(OMG_TOKENS) == [120, 121, 122, 123, 124] and len(tok) == 125
    seg, p_open, p_close = 120, 121, 122
    text = '<p> a cat </p> [SEG]'
    expected = [1, p_open] + sp.encode(' a cat ') + [p_close] + sp.encode(' ') + [seg]
    assert tok.encode(text) == expected
    assert tok.decode(expected[1:], spaces_between_special_tokens=False) == text


def test_decode_sets_added_tokens_apart_on_every_transformers_version(sp_file, sp):
    tok = InternLM2Tokenizer(str(sp_file))
    tok.add_tokens(OMG_TOKENS, special_tokens=True)
    ids = [121] + sp.encode('the cat') + [122, 120] + sp.encode('.')  # <p> the cat </p> [SEG] .
    # the spacing transformers 4.x slow tokenizers gave
    assert tok.decode(ids) == '<p> the cat </p> [SEG] .'
    assert tok.decode(ids, spaces_between_special_tokens=False) == '<p>the cat</p>[SEG].'
    # named special tokens and pieces of the sentencepiece model (the chat markers) are not set
    # apart
    assert tok.decode([1, 3] + sp.encode('user') + [4]) == '<s><|im_start|> user<|im_end|>'
    # added special tokens dropped too
    assert tok.decode([1] + ids, skip_special_tokens=True) == 'the cat .'


def test_chat_markers_from_the_folder_config_split_like_the_reference(tmp_path, sp_file, sp):
    write_folder(tmp_path, sp_file, 'bin')
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok) is InternLM2Tokenizer
    assert tok.convert_tokens_to_ids(CHAT_TOKENS) == [3, 4] == [sp.piece_to_id(t)
                                                                for t in CHAT_TOKENS]
    text = '<|im_start|>user\nhello<|im_end|>\n'
    assert tok.encode(text) == [1, 3] + sp.encode('user\nhello') + [4] + sp.encode('\n')


def test_save_reload_pickle_and_deepcopy_keep_the_added_tokens(tmp_path, sp_file):
    tok = InternLM2Tokenizer(str(sp_file))
    tok.add_tokens(OMG_TOKENS, special_tokens=True)
    text = '<region> what is this [SEG] picture?'
    tok.save_pretrained(tmp_path / 'saved')
    assert (tmp_path / 'saved' / 'tokenizer.model').read_bytes() == sp_file.read_bytes()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / 'saved')
    clones = [reloaded, pickle.loads(pickle.dumps(tok)), copy.deepcopy(tok)]
    for clone in clones:
        assert type(clone) is InternLM2Tokenizer
        assert (clone.encode(text) == tok.encode(text)
                and clone.convert_tokens_to_ids(OMG_TOKENS)[0] == 120)


@pytest.mark.parametrize('weights_format', ['bin', 'safetensors'])
def test_auto_classes_load_a_chat_7b_style_folder_without_remote_code(tmp_path, sp_file,
                                                                      weights_format):
    original = write_folder(tmp_path, sp_file, weights_format)
    assert type(AutoConfig.from_pretrained(tmp_path)) is InternLM2Config
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32,
                                                       output_loading_info=True)
    assert type(model) is InternLM2ForCausalLM and not any(info.values())
    assert model.config._attn_implementation == 'eager'
    ids = AutoTokenizer.from_pretrained(tmp_path)('a cat sat on the mat',
                                                  return_tensors='pt').input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits)
    assert type(AutoModel.from_pretrained(tmp_path)) is InternLM2Model


def test_from_pretrained_with_bfloat16_and_resize(tmp_path, sp_file):
    write_folder(tmp_path, sp_file, 'safetensors')
    model = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    model.resize_token_embeddings(125)
    assert model.output.weight.shape == (125, 64) and model.config.vocab_size == 125
    with torch.no_grad():
        out = model(torch.tensor([[1, 5, 124]]), labels=torch.tensor([[1, 5, 124]]))
    assert (out.logits.dtype == torch.float32 and out.logits.shape == (1, 3, 125)
            and torch.isfinite(out.loss))
