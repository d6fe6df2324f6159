"""Configuration of the first-party InternLM2 decoder (``model_type = "internlm2"``).

Accepts every key of the released ``internlm2-chat-7b/config.json``; the defaults are the 7B values.
The ``auto_map`` key of that file (pointing at hub remote code) is accepted and kept but never used:
once :mod:`omg_llava.models.llm` is imported, the transformers Auto classes resolve ``"internlm2"``
to these classes.

RoPE settings come in two spellings, and both are read on every supported transformers version:

* the released / transformers 4.x form: ``rope_theta=1e6, rope_scaling={"type": "dynamic",
  "factor": 2.0}``;
* the transformers 5.x standardized form: ``rope_parameters={"rope_type": "dynamic", "factor": 2.0,
  "rope_theta": 1e6}`` (``rope_scaling`` may also carry ``rope_type`` instead of ``type``).

The config stores them the way the installed transformers does (``rope_parameters`` on 5.x,
``rope_theta`` + ``rope_scaling`` on 4.x), so a saved ``config.json`` reloads on either line. Read
them with :func:`rope_settings`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from transformers import PretrainedConfig

ROPE_TYPES = ('default', 'linear', 'dynamic')
# internlm2-chat-7b; copied, never mutated
DEFAULT_ROPE_SCALING = {'type': 'dynamic', 'factor': 2.0}
# transformers >= 5 keeps RoPE in ``config.rope_parameters`` and makes ``rope_scaling`` an alias of
# it.
STANDARDIZED_ROPE = isinstance(getattr(PretrainedConfig, 'rope_scaling', None), property)


@dataclass(frozen=True)
class RopeSettings:
    """RoPE base θ, scaling type (``"default"`` = none, ``"linear"`` or ``"dynamic"``) and factor (1
    unscaled)."""

    theta: float
    type: str = 'default'
    factor: float = 1.0


def _parse_scaling(scaling: Any, name: str) -> tuple[str, float, float | None]:
    """(type, factor, θ or None) of one RoPE dict in either spelling; ``name`` is the argument named
    in errors."""
    if not isinstance(scaling, Mapping):
        raise ValueError(f'{name} must be None or a dict like {{"type": "dynamic", "factor": '
                         f'2.0}}, got {scaling!r}')
    unknown = set(scaling) - {'type', 'rope_type', 'factor', 'rope_theta'}
    if unknown:
        raise ValueError(f'{name} has unsupported keys {sorted(unknown)}; InternLM2 reads "type" '
                         f'(or "rope_type"), "factor" and "rope_theta", got {dict(scaling)!r}')
    scaling_type = scaling.get('rope_type', scaling.get('type', 'default'))
    if scaling_type not in ROPE_TYPES:
        raise ValueError(f'{name}["type"] must be one of {ROPE_TYPES}, got {scaling_type!r}')
    theta = scaling.get('rope_theta')
    if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))
                              or theta <= 0):
        raise ValueError(f'{name}["rope_theta"] must be a positive number, got {theta!r}')
    if scaling_type == 'default':
        return scaling_type, 1.0, theta
    factor = scaling.get('factor')
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 1.0:
        raise ValueError(f'{name}["factor"] must be a number > 1 for "{scaling_type}" scaling, got '
                         f'{factor!r}')
    return scaling_type, float(factor), theta


def parse_rope(rope_theta: float | None, rope_scaling: Mapping | None = None,
               rope_parameters: Mapping | None = None) -> RopeSettings:
    """RoPE settings from either spelling (``rope_parameters`` wins over ``rope_scaling``, a θ
    inside a dict wins over ``rope_theta``).

    Raises:
        ValueError: unknown scaling type, a factor ≤ 1 for a scaled type, unknown keys, or no θ at
            all.
    """
    scaling_type, factor, theta = 'default', 1.0, None
    if rope_parameters is not None:
        scaling_type, factor, theta = _parse_scaling(rope_parameters, 'rope_parameters')
    elif rope_scaling is not None:
        scaling_type, factor, theta = _parse_scaling(rope_scaling, 'rope_scaling')
    theta = rope_theta if theta is None else theta
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise ValueError(f'rope_theta must be a positive number, got {theta!r}')
    return RopeSettings(float(theta), scaling_type, factor)


def rope_settings(config: PretrainedConfig) -> RopeSettings:
    """The RoPE settings of a config, whichever form the installed transformers stored them in."""
    parameters = getattr(config, 'rope_parameters', None) if STANDARDIZED_ROPE else None
    if parameters:
        return parse_rope(None, rope_parameters=parameters)
    return parse_rope(getattr(config, 'rope_theta', None), getattr(config, 'rope_scaling', None))


class InternLM2Config(PretrainedConfig):
    """InternLM2 hyper-parameters (defaults: internlm2-chat-7b).

    Args:
        vocab_size: number of token embeddings V (92544 before OMG-LLaVA adds its 4 tokens).
        hidden_size: model width D.
        intermediate_size: SwiGLU width of the feed-forward block.
        num_hidden_layers: number of decoder layers L.
        num_attention_heads: query heads; head_dim = D / heads.
        num_key_value_heads: key/value heads (grouped-query attention); divides
            ``num_attention_heads``.
        hidden_act: activation of the gated feed-forward (only ``"silu"`` is used by InternLM2).
        max_position_embeddings: trained context length (dynamic NTK scaling starts beyond it).
        initializer_range: std of the normal init of Linear and Embedding weights.
        rms_norm_eps: epsilon of every RMSNorm.
        use_cache: return a KV cache from ``forward`` by default.
        pad_token_id / bos_token_id / eos_token_id: special ids (2 / 1 / 2).
        tie_word_embeddings: share ``output.weight`` with ``model.tok_embeddings.weight`` (False for
            InternLM2).
        bias: biases on the attention and feed-forward projections (False for InternLM2).
        rope_theta: RoPE base θ.
        rope_scaling: None (no scaling), ``{"type": "linear", "factor": f}`` or
            ``{"type": "dynamic", "factor": f}`` (default: dynamic NTK, factor 2); ``"rope_type"``
            may replace ``"type"``.
        rope_parameters: the transformers 5.x form ``{"rope_type": ..., "factor": ...,
            "rope_theta": ...}``; when given it replaces ``rope_theta`` and ``rope_scaling``.
        attn_implementation: ``"eager"`` (the reference numerics; also used for None, which is what
            ``from_pretrained`` passes unless the caller asks for an implementation) or ``"sdpa"``.
    """

    model_type = 'internlm2'
    keys_to_ignore_at_inference = ['past_key_values', 'cache']

    def __init__(self, vocab_size: int = 92544, hidden_size: int = 4096,
                 intermediate_size: int = 14336,
                 num_hidden_layers: int = 32, num_attention_heads: int = 32,
                 num_key_value_heads: int = 8,
                 hidden_act: str = 'silu', max_position_embeddings: int = 32768,
                 initializer_range: float = 0.02,
                 rms_norm_eps: float = 1e-5, use_cache: bool = True, pad_token_id: int = 2,
                 bos_token_id: int = 1,
                 eos_token_id: int = 2, tie_word_embeddings: bool = False, bias: bool = False,
                 rope_theta: float = 1e6, rope_scaling: Mapping | None = DEFAULT_ROPE_SCALING,
                 rope_parameters: Mapping | None = None, attn_implementation: str | None = 'eager',
                 **kwargs: Any) -> None:
        if num_attention_heads % num_key_value_heads or hidden_size % num_attention_heads:
            raise ValueError(f'num_attention_heads ({num_attention_heads}) must be a multiple of '
                             f'num_key_value_heads ({num_key_value_heads}) and divide hidden_size '
                             f'({hidden_size})')
        rope = parse_rope(rope_theta, rope_scaling, rope_parameters)
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
        scaled = {'factor': rope.factor} if rope.type != 'default' else {}
        if STANDARDIZED_ROPE:
            self.rope_parameters = {'rope_type': rope.type, 'rope_theta': rope.theta, **scaled}
        else:
            self.rope_theta = rope.theta
            self.rope_scaling = {'type': rope.type, **scaled} if scaled else None
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings,
                         attn_implementation=attn_implementation or 'eager', **kwargs)
