"""InternLM2 KV cache and generate(): cached decoding equals full recomputation; padding; peft LoRA wrapping."""
from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers.cache_utils import DynamicCache

from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.llm.internlm2.modeling import causal_attention_bias

NEW_TOKENS = 8


def tiny_model(seed: int = 0) -> InternLM2ForCausalLM:
    torch.manual_seed(seed)
    config = InternLM2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
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


def test_forward_with_cache_equals_forward_without():
    model, ids = tiny_model(), torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :7], use_cache=True)
        assert isinstance(first.past_key_values, DynamicCache)
        rest = model(ids[:, 7:], past_key_values=first.past_key_values).logits
        legacy = model(ids[:, :7], use_cache=True, past_key_values=None).past_key_values.to_legacy_cache()
        rest_legacy = model(ids[:, 7:], past_key_values=legacy)
    torch.testing.assert_close(torch.cat([first.logits, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rest_legacy.logits, rest, atol=1e-6, rtol=1e-6)
    assert isinstance(rest_legacy.past_key_values, tuple) and rest_legacy.past_key_values[0][0].shape[2] == 12


def test_greedy_generate_with_and_without_cache():
    model, ids = tiny_model(), torch.randint(3, 128, (1, 6))
    cached, uncached = gen(model, input_ids=ids), gen(model, input_ids=ids, use_cache=False)
    assert cached.shape == (1, 6 + NEW_TOKENS) and torch.equal(cached, uncached)
    assert torch.equal(cached[:, 6:], greedy_without_cache(model, model.get_input_embeddings()(ids)))


def test_greedy_generate_from_inputs_embeds():
    model, ids = tiny_model(), torch.randint(3, 128, (1, 6))
    embeds = model.get_input_embeddings()(ids).detach() + 0.1 * torch.randn(1, 6, 64)  # not a token row
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
        outputs.append(gen(model, input_ids=ids, do_sample=True, top_k=0, temperature=1.0, use_cache=use_cache))
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
    model = prepare_model_for_kbit_training(tiny_model())  # what xtuner runs before wrapping (no-op unquantized)
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
    assert (bias[0, 0, 3:, :3] == torch.finfo(torch.float16).min).all() and (bias[1, 0][future] < 0).all()
    for implementation in ('eager', 'sdpa'):
        model = tiny_model().to(torch.float16)
        model.config._attn_implementation = implementation
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
        assert torch.isfinite(logits).all(), implementation
