"""Configuration of the first-party InternLM2 decoder (``model_type = "internlm2"``).

Accepts every key of the released ``internlm2-chat-7b/config.json``; the defaults are the 7B values. The
``auto_map`` key of that file (pointing at hub remote code) is accepted and kept but never used: once
:mod:`omg_llava.models.llm` is imported, the transformers Auto classes resolve ``"internlm2"`` to these classes.
"""
from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

ROPE_SCALING_TYPES = ('linear', 'dynamic')
DEFAULT_ROPE_SCALING = {'type': 'dynamic', 'factor': 2.0}  # internlm2-chat-7b; copied, never mutated


def validate_rope_scaling(rope_scaling: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` unless ``rope_scaling`` is None or ``{"type": "linear"|"dynamic", "factor": f > 1}``."""
    if rope_scaling is None:
        return
    if not isinstance(rope_scaling, dict) or set(rope_scaling) - {'type', 'factor'}:
        raise ValueError(f'rope_scaling must be None or a dict with keys "type" and "factor", got {rope_scaling!r}')
    scaling_type, factor = rope_scaling.get('type'), rope_scaling.get('factor')
    if scaling_type not in ROPE_SCALING_TYPES:
        raise ValueError(f'rope_scaling["type"] must be one of {ROPE_SCALING_TYPES}, got {scaling_type!r}')
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1.0:
        raise ValueError(f'rope_scaling["factor"] must be a number > 1, got {factor!r}')


class InternLM2Config(PretrainedConfig):
    """InternLM2 hyper-parameters (defaults: internlm2-chat-7b).

    Args:
        vocab_size: number of token embeddings V (92544 before OMG-LLaVA adds its 4 tokens).
        hidden_size: model width D.
        intermediate_size: SwiGLU width of the feed-forward block.
        num_hidden_layers: number of decoder layers L.
        num_attention_heads: query heads; head_dim = D / heads.
        num_key_value_heads: key/value heads (grouped-query attention); divides ``num_attention_heads``.
        hidden_act: activation of the gated feed-forward (only ``"silu"`` is used by InternLM2).
        max_position_embeddings: trained context length (dynamic NTK scaling starts beyond it).
        initializer_range: std of the normal init of Linear and Embedding weights.
        rms_norm_eps: epsilon of every RMSNorm.
        use_cache: return a KV cache from ``forward`` by default.
        pad_token_id / bos_token_id / eos_token_id: special ids (2 / 1 / 2).
        tie_word_embeddings: share ``output.weight`` with ``model.tok_embeddings.weight`` (False for InternLM2).
        bias: biases on the attention and feed-forward projections (False for InternLM2).
        rope_theta: RoPE base θ.
        rope_scaling: None (no scaling), ``{"type": "linear", "factor": f}`` or
            ``{"type": "dynamic", "factor": f}`` (default: dynamic NTK, factor 2).
        attn_implementation: ``"eager"`` (the reference numerics; also used for None, which is what
            ``from_pretrained`` passes unless the caller asks for an implementation) or ``"sdpa"``.
    """

    model_type = 'internlm2'
    keys_to_ignore_at_inference = ['past_key_values']

    def __init__(self, vocab_size: int = 92544, hidden_size: int = 4096, intermediate_size: int = 14336,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32, num_key_value_heads: int = 8,
                 hidden_act: str = 'silu', max_position_embeddings: int = 32768, initializer_range: float = 0.02,
                 rms_norm_eps: float = 1e-5, use_cache: bool = True, pad_token_id: int = 2, bos_token_id: int = 1,
                 eos_token_id: int = 2, tie_word_embeddings: bool = False, bias: bool = False,
                 rope_theta: float = 1e6, rope_scaling: dict[str, Any] | None = DEFAULT_ROPE_SCALING,
                 attn_implementation: str | None = 'eager', **kwargs: Any) -> None:
        if num_attention_heads % num_key_value_heads or hidden_size % num_attention_heads:
            raise ValueError(f'num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads '
                             f'({num_key_value_heads}) and divide hidden_size ({hidden_size})')
        validate_rope_scaling(rope_scaling)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = dict(rope_scaling) if rope_scaling is not None else None
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, attn_implementation=attn_implementation or 'eager',
                         **kwargs)

