"""The lean inference build: in-place LoRA merge, adapters kept in the LLM dtype, memory-mapped
checkpoints whose pages are dropped, the chunked object prior, and the memory estimate that refuses
builds which cannot fit."""
from __future__ import annotations

import pytest
import torch

from omg_llava.checkpoint import CheckpointMismatchError, FilePages, read_weights
from omg_llava.inference import model_builder
from omg_llava.models.llm import InternLM2Config, InternLM2ForCausalLM
from omg_llava.models.lora import (add_inference_lora, merge_lora_, merge_lora_delta_,
                                   wrap_llm_with_lora)
from omg_llava.models.object_tokens import object_prior
from omg_llava.models.released_weights import merge_released_lora_

from conftest import FINETUNE_CONFIG, TINY_CONFIG, load_tool

LORA = dict(r=8, lora_alpha=4, lora_dropout=0.0, bias='none', task_type='CAUSAL_LM')


def tiny_llm(dtype=torch.float32) -> InternLM2ForCausalLM:
    torch.manual_seed(0)
    config = InternLM2Config(vocab_size=100, hidden_size=64, intermediate_size=96,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return InternLM2ForCausalLM(config).to(dtype).eval()


def randomise_lora(peft_llm) -> None:
    with torch.no_grad():
        for name, param in peft_llm.named_parameters():
            if '.lora_' in name:
                param.normal_(0, 0.1)


def test_merge_delta_in_place_and_in_chunks_equals_the_formula():
    torch.manual_seed(0)
    weight, a, b = torch.randn(37, 20), torch.randn(4, 20), torch.randn(37, 4)
    expected = weight + 0.5 * b @ a
    storage = weight.data_ptr()
    merge_lora_delta_(weight, a, b, 0.5, chunk_rows=8)
    assert weight.data_ptr() == storage  # in place, no second copy
    torch.testing.assert_close(weight, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='does not fit'):
        merge_lora_delta_(weight, a, b[:, :3], 0.5)
    # bf16: float32 arithmetic and one rounding (within one bf16 step of the exact sum), the last
    # chunk shorter than the reused buffers
    half = torch.randn(37, 20).to(torch.bfloat16)
    exact = half.double() + 0.5 * b.double() @ a.double()
    merge_lora_delta_(half, a, b, 0.5, chunk_rows=16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), exact, atol=1e-6, rtol=2 ** -8)


def test_in_place_merge_gives_the_adapter_outputs():
    peft_llm = add_inference_lora(tiny_llm(), LORA)
    randomise_lora(peft_llm)
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        want = peft_llm(input_ids=ids).logits
        storage = (
            peft_llm.get_base_model().model.layers[0].attention.wqkv.base_layer.weight.data_ptr()
        )
        plain = merge_lora_(peft_llm)
        got = plain(input_ids=ids).logits
    assert not any('lora_' in n for n, _ in plain.named_parameters())
    assert plain.model.layers[0].attention.wqkv.weight.data_ptr() == storage
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inference_adapters_stay_in_the_llm_dtype_while_training_upcasts():
    kept = add_inference_lora(tiny_llm(torch.bfloat16), LORA)
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in kept.parameters()) and not kept.training
    trained = wrap_llm_with_lora(tiny_llm(torch.bfloat16), LORA, use_gradient_checkpointing=False)
    # peft's k-bit preparation, training only
    assert torch.float32 in {p.dtype for p in trained.parameters()}


def finetune_state(peft_llm) -> dict:
    """The finetune-file layout of a peft LLM (``llm.base_model.model.…``, vocabulary and LoRA
    pairs)."""
    return {'llm.' + k: v.clone() for k, v in peft_llm.state_dict().items()
            if '.lora_' in k or 'tok_embeddings' in k or 'output.base_layer' in k}


def test_merging_a_finetune_state_into_a_plain_llm_matches_the_adapters():
    peft_llm = add_inference_lora(tiny_llm(), LORA)
    randomise_lora(peft_llm)
    state = finetune_state(peft_llm)
    plain = tiny_llm()
    with torch.no_grad():
        # the file's LM head must replace it before its LoRA goes on top
        plain.output.weight.add_(1.0)
    rest, merged = merge_released_lora_(plain, state, LORA, source='finetune.pth')
    assert sum('.lora_' in k for k in merged) == 2 * 11  # 2 layers x 5 linears + the LM head
    assert set(merged) - {k for k in merged if '.lora_' in k} == {
        'llm.base_model.model.output.base_layer.weight'
    }
    assert set(rest) == {'llm.model.tok_embeddings.weight'}
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, peft_llm(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)
    broken = {k: v for k, v in state.items() if 'layers.1.feed_forward.w2.lora_B' not in k}
    with pytest.raises(CheckpointMismatchError,
                       match=r'missing from the file \(1\)[\s\S]*layers\.1\.feed_forward\.w2'):
        merge_released_lora_(tiny_llm(), broken, LORA, source='finetune.pth')
    with pytest.raises(CheckpointMismatchError, match='rank 16'):
        merge_released_lora_(tiny_llm(), state, dict(LORA, r=16), source='finetune.pth')


def test_file_pages_are_dropped_after_use_and_read_back_unchanged(tmp_path):
    path = tmp_path / 'big.pth'
    torch.save({'x': torch.arange(16 * 2 ** 20, dtype=torch.float32)}, path)  # 64 MB

    def rss_file_kb() -> int:
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith('RssFile'))

    state = read_weights(path, mmap=True)
    before = rss_file_kb()
    total = float(state['x'].sum())
    touched = rss_file_kb()
    FilePages(path).release(state['x'])
    assert touched - before > 50_000 and touched - rss_file_kb() > 50_000
    assert float(state['x'].sum()) == total  # read again from the file


def test_chunked_object_prior_equals_upsampling_every_query_at_once():
    torch.manual_seed(0)
    B, Q, C = 2, 37, 6
    class_logits, tokens = torch.randn(B, Q, 5), torch.randn(B, Q, C)
    low = torch.randn(B, Q, 16, 16)
    full = torch.nn.functional.interpolate(low, size=(64, 64), mode='bilinear', align_corners=False)
    want = object_prior(class_logits, full, tokens, (4, 4))
    got = object_prior(class_logits, low, tokens, (4, 4), mask_size=(64, 64), query_chunk=5)
    # the same ops per query; SIMD order only
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(got[1], want[1])


def test_memory_estimate_of_the_7b_model_refuses_fp32_on_a_24gb_machine():
    fp32 = model_builder.estimate_memory(str(FINETUNE_CONFIG), 'fp32')
    assert fp32.llm == 7_737_741_312 and fp32.lora == 0 and 200e6 < fp32.encoder < 300e6
    with pytest.raises(model_builder.InsufficientMemoryError,
                       match=r'needs ~34 GB \(LLM 31\.0 GB in fp32.*22 GB available on cpu; use '
                             r'--dtype bf16'):
        model_builder.ensure_fits(fp32, 'cpu', 'fp32', available=int(22e9))
    model_builder.ensure_fits(model_builder.estimate_memory(str(FINETUNE_CONFIG), 'bf16'), 'cpu',
                              'bf16', available=int(22e9))
    kept = model_builder.estimate_memory(str(FINETUNE_CONFIG), 'bf16', keep_lora=True)
    assert 1.2e9 < kept.lora < 1.3e9  # r=512 on every linear layer
    with pytest.raises(model_builder.InsufficientMemoryError, match='drop --keep-lora'):
        model_builder.ensure_fits(kept, 'cpu', 'bf16', available=int(19e9))


def test_a_build_that_cannot_fit_is_refused_before_loading(monkeypatch, capsys):
    monkeypatch.setattr(model_builder, 'available_memory', lambda device: 10 ** 6)
    monkeypatch.setattr(model_builder, 'build_component',
                        lambda cfg: pytest.fail('built despite the estimate'))
    with pytest.raises(model_builder.InsufficientMemoryError, match='MB|GB available on cpu'):
        model_builder.build_model(str(TINY_CONFIG))
    assert load_tool('chat').main([str(TINY_CONFIG), '--prompt', 'hi', '--dtype', 'fp32']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('error: the model needs ~') and 'use --dtype bf16' in err

