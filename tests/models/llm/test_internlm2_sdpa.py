"""InternLM2 with SDPA attention equals the eager path (left padding, a KV cache, fp32 and bf16),
and the LM head runs on the kept positions only."""
from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from omg_llava.models.llm.internlm2 import InternLM2Config, InternLM2ForCausalLM


def tiny_pair(
    dtype: torch.dtype = torch.float32,
) -> tuple[InternLM2ForCausalLM, InternLM2ForCausalLM]:
    """The same random weights with eager and with SDPA attention (4 query heads on 2 KV groups)."""
    torch.manual_seed(0)
    config = InternLM2Config(vocab_size=128, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    eager = InternLM2ForCausalLM(config).eval().to(dtype)
    sdpa = InternLM2ForCausalLM(InternLM2Config(**{**config.to_dict(),
                                                   'attn_implementation': 'sdpa'})).eval()
    sdpa.load_state_dict(eager.state_dict())
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ('eager',
                                                                                     'sdpa')
    return eager, sdpa.to(dtype)


def _prefill_then_decode(model, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits of a left-padded prefill then ``steps`` cached one-token steps (feeding fixed ids):
    (B, S + steps, V)."""
    cache = DynamicCache()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = [model(ids, attention_mask=mask, position_ids=positions,
                        past_key_values=cache).logits]
        for step in range(steps):
            token = (ids[:, -1:] + step + 1) % 128
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = positions[:, -1:] + 1
            logits.append(model(token, attention_mask=mask, position_ids=positions,
                                past_key_values=cache).logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize('dtype, tolerance', [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_sdpa_equals_eager_with_left_padding_and_a_cache(dtype, tolerance):
    eager, sdpa = tiny_pair(dtype)
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0  # row 0 left-padded
    a = _prefill_then_decode(eager, ids, mask, steps=4)
    b = _prefill_then_decode(sdpa, ids, mask, steps=4)
    real = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], dim=1).bool()
    torch.testing.assert_close(b[real], a[real], atol=tolerance, rtol=tolerance)
    if dtype == torch.float32:
        assert torch.equal(a[real].argmax(-1), b[real].argmax(-1))
    # the cached steps equal one pass over the whole sequence
    whole = torch.cat([ids, (ids[:, -1:] + torch.arange(1, 5)) % 128], dim=1)
    with torch.no_grad():
        full = sdpa(whole, attention_mask=real.long(),
                    position_ids=(real.long().cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(b[real], full[real], atol=tolerance, rtol=tolerance)


def test_eager_is_still_selectable_and_returns_attention_probabilities():
    eager, sdpa = tiny_pair()
    ids = torch.randint(3, 128, (1, 5))
    with torch.no_grad():
        out = eager(ids, output_attentions=True)
        # SDPA has no probabilities: asking for them takes the eager path for that call
        out_sdpa = sdpa(ids, output_attentions=True)
    assert out.attentions[0].shape == (1, 4, 5, 5)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 4, 5))
    torch.testing.assert_close(out_sdpa.attentions[0], out.attentions[0])


def test_logits_to_keep_applies_the_head_to_the_last_positions_only():
    eager, _ = tiny_pair()
    ids = torch.randint(3, 128, (2, 7))
    with torch.no_grad():
        full = eager(ids).logits
        assert eager(ids, logits_to_keep=1).logits.shape == (2, 1, 128)
        torch.testing.assert_close(eager(ids, logits_to_keep=1).logits, full[:, -1:])
        # the 4.x name
        torch.testing.assert_close(eager(ids, num_logits_to_keep=3).logits, full[:, -3:])
        torch.testing.assert_close(eager(ids, logits_to_keep=torch.tensor([0, 4])).logits,
                                   full[:, [0, 4]])
        assert eager(ids, logits_to_keep=0).logits.shape == full.shape
    with pytest.raises(ValueError, match='labels need the logits of every position'):
        eager(ids, labels=ids, logits_to_keep=1)
