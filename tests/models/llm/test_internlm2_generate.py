"""InternLM2 KV cache and generate() on the installed transformers (4.48 … 5.x): cached decoding
equals full recomputation under either cache argument name; padding; peft LoRA wrapping."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers.cache_utils import DynamicCache

from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.llm.internlm2.modeling import CACHE_FIELD, causal_attention_bias

NEW_TOKENS = 8


def tiny_model(seed: int = 0) -> InternLM2ForCausalLM:
    torch.manual_seed(seed)
    config = InternLM2Config(vocab_size=128, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    return InternLM2ForCausalLM(config).eval()


def gen(model, **kwargs) -> torch.Tensor:
    # no EOS: every sequence runs NEW_TOKENS steps, so batched and single runs stay comparable
    return model.generate(max_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=2, **kwargs)


def greedy_without_cache(model, embeds: torch.Tensor) -> torch.Tensor:
    """Reference loop: recompute the whole (1, S, D) sequence for each new token."""
    new = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(inputs_embeds=embeds, use_cache=False).logits  # (1, S, V)
            token = logits[:, -1].argmax(-1)
            new.append(token)
            embeds = torch.cat([embeds, model.get_input_embeddings()(token)[:, None]], dim=1)
    return torch.stack(new, dim=1)


def cache_of(output):
    """The cache of a model output, under the field name of the installed transformers."""
    return getattr(output, CACHE_FIELD)


def test_forward_with_cache_equals_forward_without():
    model, ids = tiny_model(), torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False)
        first = model(ids[:, :7], use_cache=True)
        cache = cache_of(first)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 7
        rest = model(ids[:, 7:], cache=cache).logits  # the transformers 5.x argument name
        assert cache_of(full) is None and cache.get_seq_length() == 12
        again = cache_of(model(ids[:, :7], use_cache=True))
        rest_old_name = model(ids[:, 7:], past_key_values=again).logits  # the 4.x name
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), full.logits, atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(rest_old_name, rest, atol=0, rtol=0)


def test_cache_position_gives_the_past_length():
    model, ids = tiny_model(), torch.randint(0, 128, (1, 10))
    with torch.no_grad():
        cache = cache_of(model(ids[:, :6], use_cache=True))
        by_cache = model(ids[:, 6:], cache=copy.deepcopy(cache)).logits
        by_position = model(ids[:, 6:], cache=cache, cache_position=torch.arange(6, 10)).logits
        # a cache_position that disagrees with the cache is what the model follows (the rotary
        # positions move)
        shifted = model(ids[:, 6:], cache=cache_of(model(ids[:, :6], use_cache=True)),
                        cache_position=torch.arange(6, 10),
                        position_ids=torch.arange(16, 20)[None]).logits
    torch.testing.assert_close(by_position, by_cache, atol=0, rtol=0)
    assert (shifted - by_cache).abs().max() > 1e-4


def test_legacy_tuple_caches_and_two_cache_names_are_refused():
    model, ids = tiny_model(), torch.randint(0, 128, (1, 4))
    layer = (torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16))
    with pytest.raises(ValueError, match='legacy tuple caches are not supported'):
        model(ids, past_key_values=(layer, layer))
    with pytest.raises(ValueError, match='either cache or past_key_values'):
        model(ids, cache=DynamicCache(), past_key_values=DynamicCache())


class PaddedCache(DynamicCache):
    """A cache that hands back a fixed-length key/value buffer (like a static cache)."""

    def update(self, key, value, layer_idx, *args, **kwargs):
        pad = torch.zeros(*key.shape[:2], 32 - key.shape[2], key.shape[3])
        return torch.cat([key, pad], dim=2), torch.cat([value, pad], dim=2)


def test_a_fixed_length_cache_is_named_in_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match='caches that grow with the sequence.*PaddedCache'):
        model(torch.randint(0, 128, (1, 4)), cache=PaddedCache())


def test_boolean_4d_mask_equals_the_2d_padding_mask():
    model, ids = tiny_model(), torch.randint(0, 128, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :2] = 0
    # (2, 1, 7, 7)
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :].bool()
    with torch.no_grad():
        from_2d = model(ids, attention_mask=mask).logits
        from_4d = model(ids, attention_mask=allowed).logits
    torch.testing.assert_close(from_4d[:, 2:], from_2d[:, 2:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(from_4d[1], from_2d[1], atol=1e-6, rtol=1e-6)


def test_greedy_generate_with_and_without_cache():
    model, ids = tiny_model(), torch.randint(3, 128, (1, 6))
    cached, uncached = gen(model, input_ids=ids), gen(model, input_ids=ids, use_cache=False)
    assert cached.shape == (1, 6 + NEW_TOKENS) and torch.equal(cached, uncached)
    assert torch.equal(cached[:, 6:],
                       greedy_without_cache(model, model.get_input_embeddings()(ids)))


def test_greedy_generate_from_inputs_embeds():
    model, ids = tiny_model(), torch.randint(3, 128, (1, 6))
    # not a token row
    embeds = model.get_input_embeddings()(ids).detach() + 0.1 * torch.randn(1, 6, 64)
    mask = torch.ones(1, 6, dtype=torch.long)
    new = gen(model, inputs_embeds=embeds, attention_mask=mask)
    assert new.shape == (1, NEW_TOKENS)  # only the generated tokens come back
    assert torch.equal(new, greedy_without_cache(model, embeds))
    assert torch.equal(new, gen(model, inputs_embeds=embeds, attention_mask=mask, use_cache=False))


def test_sampling_with_a_seed_is_the_same_with_and_without_cache():
    model, ids = tiny_model(), torch.randint(3, 128, (2, 5))
    outputs = []
    for use_cache in (True, False):
        torch.manual_seed(123)
        outputs.append(gen(model, input_ids=ids, do_sample=True, top_k=0, temperature=1.0,
                           use_cache=use_cache))
    assert torch.equal(outputs[0], outputs[1])


def test_left_padded_batch_equals_single_runs():
    model = tiny_model()
    short, long = torch.randint(3, 128, (1, 4)), torch.randint(3, 128, (1, 9))
    batch = torch.full((2, 9), 2)
    batch[0, 5:], batch[1] = short[0], long[0]
    mask = (torch.arange(9) >= torch.tensor([[5], [0]])).long()  # (2, 9), left padding on row 0
    batched = gen(model, input_ids=batch, attention_mask=mask)
    assert torch.equal(batched[0, 9:], gen(model, input_ids=short)[0, 4:])
    assert torch.equal(batched[1, 9:], gen(model, input_ids=long)[0, 9:])


def test_peft_lora_names_and_training_step():
    # what xtuner runs before wrapping (no-op unquantized)
    model = prepare_model_for_kbit_training(tiny_model())
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': True})
    model.enable_input_require_grads()  # reentrant checkpointing needs an input that requires grad
    assert model.is_gradient_checkpointing
    lora = LoraConfig(r=4, lora_alpha=2, target_modules=['wqkv', 'wo', 'w1', 'w2', 'w3', 'output'],
                      task_type='CAUSAL_LM')
    peft_model = get_peft_model(model, lora)
    names = set(peft_model.state_dict())
    assert 'base_model.model.model.layers.0.attention.wqkv.lora_A.default.weight' in names
    assert 'base_model.model.output.base_layer.weight' in names
    assert 'base_model.model.output.lora_B.default.weight' in names
    assert sum('lora_A' in n for n in names) == 2 * 5 + 1
    peft_model.train()
    ids = torch.randint(0, 128, (2, 10))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grad = peft_model.base_model.model.model.layers[0].attention.wqkv.lora_B.default.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_left_padding_in_half_precision_stays_finite():
    ids, mask = torch.randint(3, 128, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0  # the first three queries of row 0 see no key at all
    bias = causal_attention_bias(mask, torch.arange(6), 6, 2, torch.float16)  # (2, 1, 6, 6)
    assert (bias[0, 0, :3] == 0).all()  # fully masked rows are opened: no all -inf softmax in fp16
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert ((bias[0, 0, 3:, :3] == torch.finfo(torch.float16).min).all()
            and (bias[1, 0][future] < 0).all())
    for implementation in ('eager', 'sdpa'):
        model = tiny_model().to(torch.float16)
        model.config._attn_implementation = implementation
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
        assert torch.isfinite(logits).all(), implementation


def test_left_padded_inputs_embeds_batch_equals_single_runs():
    model = tiny_model()
    short, long = torch.randn(1, 3, 64), torch.randn(1, 7, 64)
    # (2, 7, 64), row 0 left-padded
    batch = torch.cat([torch.cat([torch.zeros(1, 4, 64), short], dim=1), long])
    mask = (torch.arange(7) >= torch.tensor([[4], [0]])).long()
    batched = gen(model, inputs_embeds=batch, attention_mask=mask)
    assert torch.equal(batched[0], gen(model, inputs_embeds=short)[0])
    assert torch.equal(batched[1], greedy_without_cache(model, long)[0])
