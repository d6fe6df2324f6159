"""Decoding for OMG-LLaVA: one prefill, then one token per step, collecting the ``[SEG]`` hidden
states on the way.

The answer's ``[SEG]`` masks need the LLM's final (post-norm) hidden state at each generated
``[SEG]`` fed back as an input token. :func:`decode` keeps that state for every generated token
while it is computed anyway (the step that feeds token t), so no second pass over prompt + answer is
needed; only when the very last generated token is a ``[SEG]`` (cut by ``max_new_tokens``) is it fed
once more. The LM head runs on the last position only.

A chat keeps a :class:`KVCache` between turns: the cache holds the keys/values of the ids the
conversation has fed so far, and a follow-up whose ids start with those ids prefills only the new
ones (:meth:`KVCache.reusable`).

Decoding options are those of transformers' ``generate`` that the chat uses: greedy or sampling
(``do_sample``, ``temperature``, ``top_k``, ``top_p``), ``repetition_penalty``, ``sequence_bias``,
``logits_processor``, ``streamer``, ``max_new_tokens``, ``eos_token_id``, ``pad_token_id``, applied
in ``generate``'s order (processors, then the sampling warpers) to the generated ids (an embeddings
prompt has no ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from transformers import LogitsProcessorList
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import (RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor,
                                     TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

SUPPORTED_OPTIONS = ('max_new_tokens', 'do_sample', 'temperature', 'top_k', 'top_p',
                     'repetition_penalty',
                     'sequence_bias', 'logits_processor', 'streamer', 'eos_token_id',
                     'pad_token_id')


@dataclass
class DecodingOptions:
    """What :func:`decode` does at each step (the ``generate`` arguments of the same names)."""

    max_new_tokens: int = 100
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    sequence_bias: dict | None = None
    logits_processor: Sequence | None = None
    streamer: Any = None
    eos_token_id: Sequence[int] = ()
    pad_token_id: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs) -> 'DecodingOptions':
        """Options from ``generate``-style keyword arguments (``None`` values are dropped).

        Raises:
            ValueError: an argument this decoder does not implement (e.g. ``num_beams``).
        """
        unknown = sorted(k for k, v in kwargs.items() if k not in SUPPORTED_OPTIONS
                         and v is not None)
        if unknown:
            raise ValueError(f'unsupported generation argument(s) {unknown}; OMG-LLaVA decodes '
                             f'with {", ".join(SUPPORTED_OPTIONS)}')
        options = cls(**{k: v for k, v in kwargs.items() if v is not None})
        eos = options.eos_token_id
        options.eos_token_id = [eos] if isinstance(eos, int) else list(eos)
        return options

    def processors(self) -> LogitsProcessorList:
        """The score processors, in ``generate``'s order: sequence bias, repetition penalty, the
        caller's processors, then (sampling only) temperature, top-k and top-p."""
        out = LogitsProcessorList()
        if self.sequence_bias:
            out.append(SequenceBiasLogitsProcessor(sequence_bias=self.sequence_bias))
        if self.repetition_penalty != 1.0:
            out.append(RepetitionPenaltyLogitsProcessor(penalty=self.repetition_penalty))
        out.extend(self.logits_processor or [])
        if self.do_sample:
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k:
                out.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return out


@dataclass
class KVCache:
    """A conversation's KV cache (batch 1) and the ids whose keys/values it holds.

    Attributes:
        cache: the transformers cache, or ``None`` before the first turn.
        ids: the token ids (with placeholders, as given to ``splice``) fed so far.
        length: the number of spliced positions in the cache (each ``<image>`` id stands for its
            visual sequence).
    """

    cache: Cache | None = None
    ids: list[int] = field(default_factory=list)
    length: int = 0

    def reusable(self, ids: Sequence[int]) -> int:
        """The number of cached positions a prompt of ``ids`` can start from: all of them when
        ``ids`` begins with the cached ids, else 0 (the cache is then dropped)."""
        if (self.cache is not None and len(ids) > len(self.ids)
                and list(ids[:len(self.ids)]) == self.ids):
            return self.length
        self.clear()
        return 0

    def clear(self) -> None:
        """Forget the cache (e.g. after a failed turn left it holding positions that ``ids`` does
        not list)."""
        self.cache, self.ids, self.length = None, [], 0


@dataclass
class Decoded:
    """The result of :func:`decode`.

    Attributes:
        token_ids: (B, N) generated ids; after a row's stop token, ``pad_token_id``.
        hidden_states: (B, N, D) final post-norm hidden state of each generated token fed as input;
            zeros for the last token unless it had to be fed (see ``needs_state``).
        fed: how many of the N generated tokens are in the cache (N − 1, or N when the last was fed
            too).
        cache: the cache after decoding.
    """

    token_ids: Tensor
    hidden_states: Tensor
    fed: int
    cache: Cache


def _causal_lm(llm: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (adapters stay active: peft swaps modules in
    place)."""
    return llm.get_base_model() if hasattr(llm, 'get_base_model') else llm


@torch.no_grad()
def forward_last(llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 cache: Cache) -> tuple[Tensor, Tensor]:
    """Run the decoder on new positions on top of ``cache`` and the LM head on the last one only.

    Args:
        embeds: (B, S, D) input embeddings of the new positions.
        attention_mask: (B, S_past + S) 1 for real tokens, 0 for padding.
        position_ids: (B, S) RoPE positions of the new tokens.
        cache: updated in place.

    Returns:
        (B, S, D) final post-norm hidden states and (B, V) fp32 logits of the last position.
    """
    causal_lm = _causal_lm(llm)
    past = cache.get_seq_length()
    out = causal_lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                  position_ids=position_ids,
                                  past_key_values=cache, use_cache=True, return_dict=True,
                                  cache_position=torch.arange(past, past + embeds.shape[1],
                                                              device=embeds.device))
    hidden = out.last_hidden_state
    return hidden, causal_lm.get_output_embeddings()(hidden[:, -1]).float()


@torch.no_grad()
def decode(llm: nn.Module, embeds: Tensor, attention_mask: Tensor, options: DecodingOptions,
           cache: Cache | None = None, past_mask: Tensor | None = None,
           needs_state: int | None = None) -> Decoded:
    """Generate up to ``options.max_new_tokens`` ids after a prompt, keeping each generated token's
    hidden state.

    Args:
        llm: the causal LM (plain or peft-wrapped).
        embeds: (B, S, D) left-padded prompt embeddings (the new positions when ``cache`` holds a
            prefix).
        attention_mask: (B, S) 1 for real tokens.
        options: decoding options.
        cache: a cache holding the keys/values of earlier positions (``None``: start one).
        past_mask: (B, S_past) the attention mask of the cached positions (default all ones).
        needs_state: a token id (``[SEG]``) whose state is needed even as the last generated token:
            then that token is fed once more so ``hidden_states`` covers it.

    Returns:
        :class:`Decoded`. Rows stop at their first id in ``options.eos_token_id``; decoding ends
        when every row has stopped or after ``max_new_tokens``.
    """
    batch = embeds.shape[0]
    cache = DynamicCache() if cache is None else cache
    past = cache.get_seq_length()
    if past_mask is None:
        past_mask = attention_mask.new_ones((batch, past))
    mask = torch.cat([past_mask, attention_mask], dim=1)  # (B, S_past + S)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    processors, streamer = options.processors(), options.streamer
    stop = torch.tensor(options.eos_token_id or [-1], device=embeds.device)
    generated = torch.zeros((batch, 0), dtype=torch.long, device=embeds.device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=embeds.device)
    states: list[Tensor] = []  # (B, D) state of generated token t, computed when t is fed
    if streamer is not None:
        # the (empty) prompt, as generate does for an embeddings prompt
        streamer.put(generated.cpu())
    hidden, logits = forward_last(llm, embeds, mask, positions[:, past:], cache)
    embedding = llm.get_input_embeddings()
    for step in range(options.max_new_tokens):
        scores = processors(generated, logits)
        if options.do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        token = torch.where(unfinished, token, torch.full_like(token, options.pad_token_id))
        generated = torch.cat([generated, token[:, None]], dim=1)
        if streamer is not None:
            streamer.put(token.cpu())
        unfinished &= ~torch.isin(token, stop)
        if not unfinished.any() or step == options.max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        position = positions[:, -1:] + 1
        positions = torch.cat([positions, position], dim=1)
        hidden, logits = forward_last(llm, embedding(token[:, None]), mask, position, cache)
        states.append(hidden[:, 0])
    fed = len(states)
    if needs_state is not None and generated.shape[1] and (generated[:, -1] == needs_state).any():
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        hidden, _ = forward_last(llm, embedding(generated[:, -1:]), mask, positions[:, -1:] + 1,
                                 cache)
        states.append(hidden[:, 0])
        fed += 1
    if streamer is not None:
        streamer.end()
    width = embeds.shape[-1]
    states += [embeds.new_zeros((batch, width))] * (generated.shape[1] - len(states))
    hidden_states = torch.stack(states, dim=1) if states else embeds.new_zeros((batch, 0, width))
    return Decoded(generated, hidden_states, fed, cache)
