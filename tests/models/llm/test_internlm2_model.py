"""InternLM2 decoder: key names/shapes, grouped wqkv attention vs hand-written math, RoPE scaling,
fixture parity."""
from __future__ import annotations

import json
import math

import pytest
import torch

from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.llm.internlm2.configuration import (STANDARDIZED_ROPE, RopeSettings,
                                                          rope_settings)
from omg_llava.models.llm.internlm2.rope import rotary_cos_sin

from conftest import fixture_paths, read_key_manifest

LORA_SCALE = 0.5  # fixture LoRA: alpha / r = 8 / 16


def tiny_config(**overrides) -> InternLM2Config:
    kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    return InternLM2Config(**{**kwargs, **overrides})


def tiny_model(seed: int = 0, **overrides) -> InternLM2ForCausalLM:
    torch.manual_seed(seed)
    return InternLM2ForCausalLM(tiny_config(**overrides)).eval()


def test_config_defaults_are_internlm2_chat_7b_and_rope_scaling_is_validated():
    cfg = InternLM2Config()
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (
        92544,
        4096,
        14336,
        32,
    )
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings) == (
        32,
        8,
        32768,
    )
    assert rope_settings(cfg) == RopeSettings(theta=1e6, type='dynamic', factor=2.0)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.bias) == (2, 1, 2, False)
    assert cfg._attn_implementation == 'eager' and not cfg.tie_word_embeddings
    assert rope_settings(InternLM2Config(rope_scaling=None)) == RopeSettings(theta=1e6)
    assert (
        rope_settings(InternLM2Config(rope_scaling={'type': 'linear', 'factor': 4})).type
        == 'linear'
    )
    for bad in ({'type': 'yarn', 'factor': 2.0}, {'type': 'dynamic'},
                {'type': 'linear', 'factor': 0.5}, 'dynamic',
                {'type': 'dynamic', 'factor': 2.0, 'beta_fast': 32}):
        with pytest.raises(ValueError, match='rope_scaling'):
            InternLM2Config(rope_scaling=bad)
    with pytest.raises(ValueError, match='rope_parameters'):
        InternLM2Config(rope_parameters={'rope_type': 'dynamic', 'factor': 1.0})
    with pytest.raises(ValueError, match='rope_theta'):
        InternLM2Config(rope_theta=-1.0)


def test_rope_settings_are_stored_the_way_the_installed_transformers_does():
    cfg = InternLM2Config(rope_theta=5e5, rope_scaling={'type': 'linear', 'factor': 3.0})
    saved = cfg.to_dict()
    if STANDARDIZED_ROPE:  # transformers 5.x: one rope_parameters dict, rope_scaling is its alias
        assert cfg.rope_parameters == {'rope_type': 'linear', 'factor': 3.0, 'rope_theta': 5e5}
        assert (cfg.rope_scaling is cfg.rope_parameters
                and saved['rope_parameters'] == cfg.rope_parameters)
    else:  # transformers 4.x: rope_theta plus the released rope_scaling form
        assert (cfg.rope_theta, cfg.rope_scaling) == (5e5, {'type': 'linear', 'factor': 3.0})
        assert (saved['rope_theta'], saved['rope_scaling']) == (5e5,
                                                                {'type': 'linear', 'factor': 3.0})


@pytest.mark.parametrize('spelling', [
    # released config.json, transformers 4.x
    dict(rope_theta=1e6, rope_scaling={'type': 'dynamic', 'factor': 2.0}),
    dict(rope_theta=1e6, rope_scaling={'rope_type': 'dynamic', 'factor': 2.0}),
    dict(rope_scaling={'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1e6}),
    # transformers 5.x
    dict(rope_parameters={'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1e6}),
    dict(rope_theta=7.0, rope_scaling=None,
         rope_parameters={'rope_type': 'dynamic', 'factor': 2, 'rope_theta': 1e6}),
])
def test_old_and_new_rope_spellings_give_the_same_settings_and_tables(spelling):
    cfg = tiny_config(max_position_embeddings=16, **spelling)
    assert rope_settings(cfg) == RopeSettings(theta=1e6, type='dynamic', factor=2.0)
    reference = tiny_config(max_position_embeddings=16)
    positions = torch.arange(24)[None]  # beyond max_position_embeddings: the dynamic base is in use
    torch.testing.assert_close(rotary_cos_sin(positions, cfg, torch.float32),
                               rotary_cos_sin(positions, reference, torch.float32), atol=0, rtol=0)
    assert rope_settings(InternLM2Config.from_dict(cfg.to_dict())) == rope_settings(cfg)


def test_default_rope_in_the_new_spelling_has_no_scaling():
    cfg = tiny_config(rope_parameters={'rope_type': 'default', 'rope_theta': 100.0})
    assert rope_settings(cfg) == RopeSettings(theta=100.0)
    torch.testing.assert_close(rotary_cos_sin(torch.arange(10)[None], cfg, torch.float32),
                               rotary_cos_sin(torch.arange(10)[None],
                                              tiny_config(rope_theta=100.0, rope_scaling=None),
                                              torch.float32), atol=0, rtol=0)


def test_tiny_parameter_names_and_shapes():
    got = {k: tuple(v.shape) for k, v in tiny_model().named_parameters()}
    expected = {'model.tok_embeddings.weight': (128, 64), 'model.norm.weight': (64,),
                'output.weight': (128, 64)}
    for i in range(2):
        p = f'model.layers.{i}.'
        expected.update({p + 'attention.wqkv.weight': ((4 + 2 * 2) * 16, 64),
                         p + 'attention.wo.weight': (64, 64),
                         p + 'feed_forward.w1.weight': (96, 64),
                         p + 'feed_forward.w3.weight': (96, 64),
                         p + 'feed_forward.w2.weight': (64, 96), p + 'attention_norm.weight': (64,),
                         p + 'ffn_norm.weight': (64,)})
    assert got == expected


def test_full_size_keys_equal_the_released_finetune_llm():
    with torch.device('meta'):
        model = InternLM2ForCausalLM(InternLM2Config())
    expected = {k.replace('.base_layer', ''): v for k, v in
                read_key_manifest('omg_llava_7b_finetune_8gpus_full_model.tsv',
                                  'llm.base_model.model.').items()
                if 'lora_' not in k}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    vocab_rows = {'model.tok_embeddings.weight', 'output.weight'}
    assert {k: v for k, v in got.items() if k not in vocab_rows} == {k: v
                                                                     for k, v in expected.items()
                                                                       if k not in vocab_rows}
    assert got['output.weight'] == got['model.tok_embeddings.weight'] == (92544, 4096)
    model.resize_token_embeddings(92548, mean_resizing=False)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert (len(expected) == 32 * 7 + 3
            and sum(p.numel() for p in model.parameters()) == 7_737_741_312)


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


def test_grouped_wqkv_attention_matches_hand_written_reference():
    model = tiny_model(rope_theta=100.0)
    cfg, layer = model.config, model.model.layers[0]
    n_heads, n_kv, hd, seq = 4, 2, 16, 6
    q_per_kv = n_heads // n_kv
    ids = torch.randint(0, 128, (1, seq))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    x = model.model.tok_embeddings.weight[ids[0]].double()  # (S, D)
    wqkv = layer.attention.wqkv.weight.double().view(n_kv, q_per_kv + 2, hd, cfg.hidden_size)
    h = _rms(x, layer.attention_norm.weight.double())
    inv_freq = 1.0 / 100.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angle = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq  # (S, hd / 2)

    def rope(v):  # v (S, hd): pairs (i, i + hd/2) rotate by angle i
        a, b = v[:, :hd // 2], v[:, hd // 2:]
        return torch.cat([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()],
                         dim=1)

    heads = []
    for head in range(n_heads):
        group, slot = head // q_per_kv, head % q_per_kv
        q, k, v = (rope(h @ wqkv[group, slot].T), rope(h @ wqkv[group, q_per_kv].T),
                   h @ wqkv[group, q_per_kv + 1].T)
        scores = q @ k.T / math.sqrt(hd)
        scores = scores.masked_fill(torch.ones(seq, seq).triu(1).bool(), float('-inf'))
        heads.append(scores.softmax(-1) @ v)
    x = x + torch.cat(heads, dim=1) @ layer.attention.wo.weight.double().T
    f = _rms(x, layer.ffn_norm.weight.double())
    w1, w3, w2 = (getattr(layer.feed_forward, name).weight.double() for name in ('w1', 'w3', 'w2'))
    x = x + (torch.nn.functional.silu(f @ w1.T) * (f @ w3.T)) @ w2.T
    torch.testing.assert_close(out.hidden_states[1][0].double(), x, atol=1e-4, rtol=1e-4)


def test_sdpa_matches_eager():
    ids, mask = torch.randint(0, 128, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    eager = tiny_model()
    sdpa = tiny_model(attn_implementation='sdpa')
    assert sdpa.config._attn_implementation == 'sdpa'
    with torch.no_grad():
        a, b = eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-4, rtol=1e-4)


def test_dynamic_ntk_uses_the_scaled_base_beyond_max_positions_only():
    cfg = tiny_config(max_position_embeddings=16, rope_scaling={'type': 'dynamic', 'factor': 2.0})
    hd = 16

    def expected(positions: torch.Tensor, base: float):
        angle = positions.double()[:, None] * (
            1.0 / base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        )
        angle = torch.cat([angle, angle], dim=-1)
        return angle.cos().float(), angle.sin().float()

    long_pos, short_pos = torch.arange(20), torch.arange(16)
    scaled_base = 1e6 * ((2.0 * 20 / 16) - 1.0) ** (hd / (hd - 2))
    for pos, base in ((long_pos, scaled_base), (short_pos, 1e6)):
        cos, sin = rotary_cos_sin(pos[None], cfg, torch.float32)
        exp_cos, exp_sin = expected(pos, base)
        torch.testing.assert_close(cos[0], exp_cos, atol=1e-5, rtol=0)
        torch.testing.assert_close(sin[0], exp_sin, atol=1e-5, rtol=0)

    model = tiny_model(max_position_embeddings=16, rope_scaling={'type': 'dynamic', 'factor': 2.0})
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        short_before = model(ids[:, :8]).logits
        long = model(ids).logits
        short_after = model(ids[:, :8]).logits
    assert torch.equal(short_before, short_after)  # no state carried over from the long sequence
    assert (long[:, :8] - short_before).abs().max() > 1e-4  # the long sequence used the scaled base


def test_linear_scaling_divides_positions():
    cfg = tiny_config(rope_scaling={'type': 'linear', 'factor': 4.0})
    plain = tiny_config(rope_scaling=None)
    cos, sin = rotary_cos_sin(torch.arange(0, 40, 4)[None], cfg, torch.float32)
    cos_ref, sin_ref = rotary_cos_sin(torch.arange(10)[None], plain, torch.float32)
    torch.testing.assert_close((cos, sin), (cos_ref, sin_ref))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids = torch.randint(0, 128, (2, 10))
    losses, grads = [], []
    for checkpointing in (False, True):
        model = tiny_model()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.model.gradient_checkpointing
        model.train()
        loss = model(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append(model.model.layers[0].attention.wqkv.weight.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def _fixture_llm(path):
    fx = torch.load(path, weights_only=True)
    c = json.loads(path.with_suffix('.json').read_text())['config']['llm']
    torch.manual_seed(0)
    model = InternLM2ForCausalLM(InternLM2Config(
        vocab_size=c['vocab_size_base'], hidden_size=c['hidden_size'],
        intermediate_size=c['intermediate_size'],
        num_hidden_layers=c['num_hidden_layers'], num_attention_heads=c['num_attention_heads'],
        num_key_value_heads=c['num_key_value_heads'], hidden_act=c['hidden_act'],
        rms_norm_eps=c['rms_norm_eps'],
        rope_theta=c['rope_theta'], rope_scaling=c['rope_scaling'], bias=c['bias'],
        max_position_embeddings=c['max_position_embeddings'],
        tie_word_embeddings=c['tie_word_embeddings'])).eval()
    model.resize_token_embeddings(c['vocab_size_after_resize'], mean_resizing=False)
    return fx, model


def _llm_weights(fx: dict, merge_lora: bool) -> dict[str, torch.Tensor]:
    prefix = 'state_dict/llm.base_model.model.'
    weights = {k[len(prefix):].replace('.base_layer', ''): v for k, v in fx.items()
               if k.startswith(prefix) and 'lora_' not in k}
    if merge_lora:
        for name in weights:
            lora_a = fx.get(prefix + name.replace('.weight', '.lora_A.default.weight'))
            if lora_a is not None:
                lora_b = fx[prefix + name.replace('.weight', '.lora_B.default.weight')]
                weights[name] = weights[name] + LORA_SCALE * lora_b @ lora_a
    return weights


def _run_fixture(fx, model):
    with torch.no_grad():
        return model(inputs_embeds=fx['out/llm/inputs_embeds'],
                     attention_mask=fx['out/llm/attention_mask'],
                     position_ids=fx['out/llm/position_ids'], labels=fx['out/llm/labels'],
                     output_hidden_states=True)


@pytest.mark.parametrize('path', fixture_paths(), ids=lambda p: p.stem)
def test_reference_fixture_parity_with_merged_lora(path):
    fx, model = _fixture_llm(path)
    model.load_state_dict(_llm_weights(fx, merge_lora=True), strict=True)
    out, valid = _run_fixture(fx, model), fx['out/llm/attention_mask']
    torch.testing.assert_close(out.logits[valid], fx['out/llm/logits'][valid], atol=1e-4, rtol=1e-4)
    assert len(out.hidden_states) == 3
    for i, hidden in enumerate(out.hidden_states):
        torch.testing.assert_close(hidden[valid], fx[f'out/llm/hidden_states{i}'][valid], atol=1e-4,
                                   rtol=1e-4)
    torch.testing.assert_close(out.loss, fx['out/llm/loss'], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('path', fixture_paths(), ids=lambda p: p.stem)
def test_reference_fixture_parity_without_lora(path):
    fx, model = _fixture_llm(path)
    model.load_state_dict(_llm_weights(fx, merge_lora=False), strict=True)
    out, valid = _run_fixture(fx, model), fx['out/llm/attention_mask']
    torch.testing.assert_close(out.logits[valid], fx['out/llm/logits_without_lora'][valid],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('path', fixture_paths(), ids=lambda p: p.stem)
def test_reference_fixture_loads_into_peft_wrapped_model(path):
    from peft import LoraConfig, get_peft_model

    fx, model = _fixture_llm(path)
    lora = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.05, task_type='CAUSAL_LM',
                      target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3', 'output'])
    peft_model = get_peft_model(model, lora).eval()
    weights = {k[len('state_dict/llm.'):]: v for k, v in fx.items()
               if k.startswith('state_dict/llm.')}
    peft_model.load_state_dict(weights, strict=True)
    out, valid = _run_fixture(fx, peft_model), fx['out/llm/attention_mask']
    torch.testing.assert_close(out.logits[valid], fx['out/llm/logits'][valid], atol=1e-4, rtol=1e-4)
    with peft_model.disable_adapter():
        plain = _run_fixture(fx, peft_model)
    torch.testing.assert_close(plain.logits[valid], fx['out/llm/logits_without_lora'][valid],
                               atol=1e-4, rtol=1e-4)
