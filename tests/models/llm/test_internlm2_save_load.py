"""InternLM2 ``save_pretrained`` / ``from_pretrained`` round trips and the tied-weights declaration,
on the installed transformers (the declaration is a {tied: source} mapping, which 5.x requires and
4.x reads by its keys)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.llm.internlm2.configuration import rope_settings


def tiny_model(seed: int = 0, **overrides) -> InternLM2ForCausalLM:
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4,
                  num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=16)
    return InternLM2ForCausalLM(InternLM2Config(**{**kwargs, **overrides})).eval()


def test_tied_weights_declaration_is_a_mapping_onto_the_embedding():
    model = tiny_model()
    assert dict(model._tied_weights_keys) == {'output.weight': 'model.tok_embeddings.weight'}
    names = {name for name, _ in model.named_parameters()}
    assert set(model._tied_weights_keys) | set(model._tied_weights_keys.values()) <= names
    # InternLM2 is untied
    assert model.output.weight.data_ptr() != model.model.tok_embeddings.weight.data_ptr()


@pytest.mark.parametrize('safe', [True, False])
def test_save_and_reload_give_the_same_model(tmp_path, safe):
    model = tiny_model(rope_scaling={'type': 'linear', 'factor': 3.0})
    model.save_pretrained(tmp_path, safe_serialization=safe)
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['model_type'] == 'internlm2' and saved['tie_word_embeddings'] is False
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is InternLM2ForCausalLM and not any(info.values()), info
    assert rope_settings(reloaded.config) == rope_settings(model.config)
    assert reloaded.state_dict().keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    ids = torch.randint(0, 128, (2, 20))  # past max_position_embeddings: RoPE settings matter
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_tied_embeddings_stay_tied_through_a_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    assert model.output.weight.data_ptr() == model.model.tok_embeddings.weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info['unexpected_keys'] and not info['mismatched_keys']
    assert set(info['missing_keys']) <= {'output.weight'}  # the tied copy need not be stored
    assert reloaded.output.weight.data_ptr() == reloaded.model.tok_embeddings.weight.data_ptr()
    torch.testing.assert_close(reloaded.output.weight, model.model.tok_embeddings.weight, atol=0,
                               rtol=0)


def test_a_config_saved_in_either_rope_spelling_loads(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    for key in ('rope_parameters', 'rope_scaling', 'rope_theta'):
        config.pop(key, None)
    # the released file
    spellings = [dict(rope_theta=1e6, rope_scaling={'type': 'dynamic', 'factor': 2.0}),
                 # 5.x
                 dict(rope_parameters={'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1e6})]
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        expected = model(ids).logits
        for spelling in spellings:
            (tmp_path / 'config.json').write_text(json.dumps({**config, **spelling}))
            reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
            torch.testing.assert_close(reloaded(ids).logits, expected, atol=0, rtol=0)
