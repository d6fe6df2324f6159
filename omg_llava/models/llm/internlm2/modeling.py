"""First-party InternLM2 decoder (InternLM2 technical report, arXiv:2403.17297, §2.2) for
transformers.

Parameter names equal the released ``internlm2-chat-7b`` checkpoint keys (``model.tok_embeddings``,
``model.layers.{i}.attention.{wqkv,wo}``, ``model.layers.{i}.feed_forward.{w1,w3,w2}``,
``model.layers.{i}.{attention_norm,ffn_norm}``, ``model.norm``, ``output``), so the released weights
and the OMG-LLaVA LoRA checkpoints load without renaming. Written from the architecture description,
not from the hub's remote code. Numerics follow the early-2024 remote-code revision with eager
attention: fp32 RMSNorm, fp32 softmax, rotate-half RoPE with dynamic-NTK or linear scaling, logits
returned in fp32.

Runs on transformers 4.48 through 5.x with the Cache API only (no legacy tuple caches): the cache
comes in as ``cache`` (the 5.x name) or ``past_key_values`` (the 4.x name), the number of cached
tokens is read from ``cache_position`` when ``generate`` passes it (4.x) and from the cache object
otherwise (5.x), and the outputs carry the cache under the field name of the installed transformers.
"""
from __future__ import annotations

import math
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration import InternLM2Config
from .rope import apply_rotary, rotary_cos_sin

# Name of the cache field of the model outputs: ``cache`` from transformers 5.x on,
# ``past_key_values`` before.
CACHE_FIELD = ('cache' if 'cache' in {f.name for f in fields(BaseModelOutputWithPast)}
               else 'past_key_values')


def resolve_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The one cache passed under either name.

    Raises:
        ValueError: both names are given, or the cache is not a transformers ``Cache`` (legacy tuple
            caches are not supported: wrap them with ``DynamicCache`` on transformers 4.x, or let
            ``generate`` build the cache).
    """
    if cache is not None and past_key_values is not None:
        raise ValueError('pass the KV cache as either cache or past_key_values, not both')
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, Cache):
        raise ValueError('the KV cache must be a transformers Cache (e.g. DynamicCache), got '
                         f'{type(cache).__name__}; '
                         'legacy tuple caches are not supported')
    return cache


class InternLM2RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x²) + eps)``, normalised in fp32 and cast back before the scale."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(hidden_states.dtype)


class InternLM2MLP(nn.Module):
    """SwiGLU feed-forward: ``w2(act(w1 x) * w3 x)``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Grouped-query causal self-attention with one fused ``wqkv`` projection.

    ``wqkv`` has ``(nH + 2·nKV)·hd`` output rows laid out as ``(nKV, nH/nKV + 2, hd)``: each KV
    group g holds its ``q_per_kv`` query heads (heads ``g·q_per_kv …``), then its key, then its
    value. Query head h reads group ``h // q_per_kv``.
    """

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.q_per_kv = self.num_heads // self.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        qkv_rows = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.wqkv = nn.Linear(config.hidden_size, qkv_rows, bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, hidden_states: Tensor, cos: Tensor, sin: Tensor,
                attention_bias: Tensor | None = None,
                past_key_value: Cache | None = None,
                output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        """
        Args:
            hidden_states: (B, S, D) normed layer input.
            cos, sin: (B, S, hd) rotary tables of the S query positions.
            attention_bias: (B, 1, S, S_past + S) additive mask (0 = attend, dtype-min = blocked) or
                None.
            past_key_value: cache updated in place with this layer's keys/values (post-RoPE).
            output_attentions: also return the (B, nH, S, S_past + S) attention probabilities (eager
                path).

        Returns:
            (B, S, D) attention output after ``wo``, and the probabilities or None.
        """
        batch, seq_len, _ = hidden_states.shape
        qkv = self.wqkv(hidden_states).view(batch, seq_len, self.num_key_value_heads,
                                            self.q_per_kv + 2,
                                            self.head_dim)  # (B, S, nKV, q_per_kv + 2, hd)
        query = qkv[..., :self.q_per_kv, :].reshape(batch, seq_len, self.num_heads,
                                                    self.head_dim).transpose(1, 2)
        key = qkv[..., -2, :].transpose(1, 2)  # (B, nKV, S, hd)
        value = qkv[..., -1, :].transpose(1, 2)
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if past_key_value is not None:
            # (B, nKV, S_past + S, hd)
            key, value = past_key_value.update(key, value, self.layer_idx)
            if attention_bias is not None and key.shape[-2] != attention_bias.shape[-1]:
                raise ValueError(f'the cache returned {key.shape[-2]} keys for '
                                 f'{attention_bias.shape[-1]} past + current tokens; InternLM2 '
                                 'supports caches that grow with the sequence (DynamicCache), not '
                                 f'{type(past_key_value).__name__}')
        probs = None
        if self.config._attn_implementation == 'sdpa' and not output_attentions:
            # Fused kernel; query head h reads KV group h // q_per_kv without copying the cache per
            # head.
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_bias,
                                                 enable_gqa=self.q_per_kv > 1)
        else:
            # (B, nH, S_kv, hd): head h <- group h // q_per_kv
            key = key.repeat_interleave(self.q_per_kv, dim=1)
            value = value.repeat_interleave(self.q_per_kv, dim=1)
            scores = query @ key.transpose(2, 3) / math.sqrt(self.head_dim)  # (B, nH, S, S_kv)
            if attention_bias is not None:
                scores = scores + attention_bias
            probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
            out = probs @ value  # (B, nH, S, hd)
        out = out.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        return self.wo(out), probs


class InternLM2DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attention(attention_norm(x))``, then ``+
    feed_forward(ffn_norm(·))``."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, cos: Tensor, sin: Tensor,
                attention_bias: Tensor | None = None,
                past_key_value: Cache | None = None,
                output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, S, D) → (B, S, D) and the attention probabilities (see
        :class:`InternLM2Attention`)."""
        attn_out, probs = self.attention(self.attention_norm(hidden_states), cos, sin,
                                         attention_bias, past_key_value, output_attentions)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return hidden_states, probs


def causal_attention_bias(attention_mask: Tensor | None, cache_position: Tensor, kv_len: int,
                          batch: int, dtype: torch.dtype) -> Tensor:
    """Additive causal + padding mask.

    Args:
        attention_mask: (B, kv_len) with 1 for real tokens and 0 for padding, or None (no padding).
            A 4-D float mask is taken to be additive already and returned cast to ``dtype``; a 4-D
            boolean mask (True = attend) is turned into the additive form.
        cache_position: (S,) absolute index of each query token in the key sequence.
        kv_len: number of keys (past + current).

    Returns:
        (B, 1, S, kv_len) tensor: 0 where query i may attend key j (``j <= cache_position[i]`` and
        key j is not padding), ``finfo(dtype).min`` elsewhere. Rows with no visible key are left
        fully open.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
            return bias.masked_fill(~attention_mask, torch.finfo(dtype).min)
        return attention_mask.to(dtype)
    # (S, kv)
    allowed = torch.arange(kv_len, device=cache_position.device)[None, :] <= cache_position[:, None]
    allowed = allowed[None, None].expand(batch, 1, -1, -1)
    if attention_mask is not None:
        if attention_mask.shape[-1] != kv_len:
            raise ValueError(f'attention_mask covers {attention_mask.shape[-1]} tokens, expected '
                             f'{kv_len} '
                             '(past + current tokens)')
        allowed = allowed & attention_mask[:, None, None, :].bool()
        # A query with no visible key (left padding) would softmax over all-masked scores, which
        # overflow to -inf in fp16 and give NaN; let such padding rows see every key instead (their
        # outputs are never used).
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=cache_position.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


class InternLM2PreTrainedModel(PreTrainedModel):
    """Shared transformers plumbing: config class, init, gradient checkpointing, cache and SDPA
    support."""

    config_class = InternLM2Config
    base_model_prefix = 'model'
    supports_gradient_checkpointing = True
    _no_split_modules = ['InternLM2DecoderLayer']
    _skip_keys_device_placement = ['past_key_values']
    _supports_cache_class = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, InternLM2RMSNorm):
            module.weight.data.fill_(1.0)


class InternLM2Model(InternLM2PreTrainedModel):
    """Embedding, L decoder layers and the final RMSNorm (the ``model.`` part of the checkpoint)."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = InternLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_embeddings = value

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: Tensor | None = None,
                cache: Cache | None = None, **kwargs) -> BaseModelOutputWithPast | tuple:
        """Run the decoder on (B, S) ``input_ids`` or (B, S, D) ``inputs_embeds``.

        ``attention_mask`` is (B, S_past + S) with 0 on padding; ``position_ids`` (B, S) default to
        the cache positions. ``cache`` (or its 4.x name ``past_key_values``) is a transformers
        ``Cache``, updated in place; with ``use_cache`` and no cache a ``DynamicCache`` is started.
        ``cache_position`` (S,) gives the absolute index of each token; without it the tokens follow
        the ``cache.get_seq_length()`` cached ones. ``hidden_states`` (when requested) holds L + 1
        tensors (B, S, D): the embeddings, the outputs of layers 0 … L−2, and the final RMSNorm of
        the last layer's output (= ``last_hidden_state``).
        """
        cfg = self.config
        output_attentions = (cfg.output_attentions if output_attentions is None
                             else output_attentions)
        output_hidden_states = (cfg.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        use_cache = cfg.use_cache if use_cache is None else use_cache
        return_dict = cfg.return_dict if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError('pass exactly one of input_ids and inputs_embeds')
        cache = resolve_cache(cache, past_key_values)
        if self.gradient_checkpointing and self.training:
            use_cache = False  # recomputation and an incrementally filled cache do not mix
        if use_cache and cache is None:
            cache = DynamicCache()
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)  # (B, S, D)

        batch, seq_len = inputs_embeds.shape[:2]
        if cache_position is None:
            past_len = cache.get_seq_length() if cache is not None else 0
            cache_position = torch.arange(past_len, past_len + seq_len, device=inputs_embeds.device)
        else:
            past_len = int(cache_position[0]) if cache_position.numel() else 0
        if position_ids is None:
            position_ids = cache_position[None].expand(batch, -1)
        attention_bias = causal_attention_bias(attention_mask, cache_position, past_len + seq_len,
                                               batch,
                                               inputs_embeds.dtype)  # (B, 1, S, S_past + S)
        cos, sin = rotary_cos_sin(position_ids, cfg, inputs_embeds.dtype)  # (B, S, hd) each

        hidden_states = inputs_embeds
        all_hidden, all_attentions = (), ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            if self.gradient_checkpointing and self.training:
                hidden_states, probs = self._gradient_checkpointing_func(
                    layer.__call__, hidden_states, cos, sin, attention_bias, None,
                    output_attentions)
            else:
                hidden_states, probs = layer(hidden_states, cos, sin, attention_bias, cache,
                                             output_attentions)
            if output_attentions:
                all_attentions += (probs,)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None},
            hidden_states=all_hidden if output_hidden_states else None,
            attentions=all_attentions if output_attentions else None)
        return output if return_dict else output.to_tuple()


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    """:class:`InternLM2Model` plus the untied LM head ``output``; works with ``generate()`` and
    peft."""

    # {tied parameter: its source}, used only when ``config.tie_word_embeddings`` (False for
    # InternLM2); transformers 5.x reads this mapping, 4.x iterates its keys.
    _tied_weights_keys = {'output.weight': 'model.tok_embeddings.weight'}

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.output

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.output = new_embeddings

    def get_decoder(self) -> InternLM2Model:
        return self.model

    def set_decoder(self, decoder: InternLM2Model) -> None:
        self.model = decoder

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: Tensor | None = None, labels: Tensor | None = None,
                use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, cache_position: Tensor | None = None,
                cache: Cache | None = None,
                logits_to_keep: int | Tensor = 0, num_logits_to_keep: int = 0,
                **kwargs) -> CausalLMOutputWithPast | tuple:
        """Logits (B, S, V) in fp32; with (B, S) ``labels`` also the next-token cross-entropy.

        The loss is the mean over positions whose shifted label is not −100 (``labels[:, 1:]``
        against ``logits[:, :-1]``), computed in fp32. ``logits_to_keep`` (the 5.x name;
        ``num_logits_to_keep`` in 4.x, which ``generate`` passes as 1) > 0 applies the LM head to
        the last that many positions only (logits (B, k, V)); a 1-D tensor selects positions. 0
        keeps all. Other arguments as in :meth:`InternLM2Model.forward`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        keep = (logits_to_keep if isinstance(logits_to_keep, Tensor) or logits_to_keep
                else num_logits_to_keep)
        if labels is not None and (isinstance(keep, Tensor) or keep):
            raise ValueError('labels need the logits of every position: leave logits_to_keep at 0 '
                             'with labels')
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids,
                             inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions,
                             output_hidden_states=output_hidden_states, return_dict=True,
                             cache_position=cache_position,
                             cache=resolve_cache(cache, past_key_values))
        hidden = outputs.last_hidden_state  # (B, S, D)
        hidden = (hidden[:, keep] if isinstance(keep, Tensor) else hidden[:, -keep:] if keep
                  else hidden)
        logits = self.output(hidden).float()  # (B, S or k, V)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        output = CausalLMOutputWithPast(loss=loss, logits=logits,
                                        **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
                                        hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()
