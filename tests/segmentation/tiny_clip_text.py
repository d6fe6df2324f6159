"""Test helpers: a CLIP BPE trained here in milliseconds, a tiny random open_clip text tower, and
open_clip's text forward written from the spec (OMG-Seg spec §1.3) as the reference the transformers
tower must equal."""
from __future__ import annotations

import collections
import gzip
from pathlib import Path

import torch
import torch.nn.functional as F

from omg_llava.segmentation.text_tower import byte_symbols
from omg_llava.segmentation.vocabulary import TEMPLATES

WORDS_SOURCE = ' '.join(TEMPLATES).replace('{}', 'cat dog traffic light person sky clouds')


def train_merges(text: str, num_merges: int) -> list[str]:
    """Greedy byte-level BPE over the lowercased words of ``text`` (most frequent pair first, ties
    by name)."""
    to_symbol = dict(enumerate(byte_symbols()))
    printable = sorted(set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256)))
    others = [b for b in range(256) if b not in printable]
    order = printable + others
    symbol_of = {b: to_symbol[order.index(b)] for b in range(256)}
    words = collections.Counter()
    for word in text.lower().replace('.', ' . ').split():
        symbols = [symbol_of[b] for b in word.encode()]
        words[tuple(symbols[:-1] + [symbols[-1] + '</w>'])] += 1
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f'{best[0]} {best[1]}')
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write_bpe_gz(path: Path, num_merges: int = 40) -> tuple[Path, list[str]]:
    """An open_clip-style ``bpe_simple_vocab`` file: a header line, then one merge per line."""
    merges = train_merges(WORDS_SOURCE, num_merges)
    with gzip.open(path, 'wt', encoding='utf-8') as handle:
        handle.write('"bpe_simple_vocab_16e6.txt#version: 0.2\n' + '\n'.join(merges) + '\n')
    return path, merges


def tiny_open_clip_state_dict(vocab_size: int, width: int = 64, layers: int = 2,
                              embed_dim: int = 32,
                              context: int = 77, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under open_clip's names, plus a visual key and ``logit_scale`` the loader must
    skip."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {'positional_embedding': rand(context, width), 'text_projection': rand(width, embed_dim),
          'logit_scale': torch.tensor(4.6052), 'visual.trunk.stem.0.weight': rand(8, 3, 4, 4)}
    for i in range(layers):
        p = f'transformer.resblocks.{i}.'
        sd.update({p + 'ln_1.weight': 1 + rand(width), p + 'ln_1.bias': rand(width),
                   p + 'attn.in_proj_weight': rand(3 * width, width),
                   p + 'attn.in_proj_bias': rand(3 * width),
                   p + 'attn.out_proj.weight': rand(width, width),
                   p + 'attn.out_proj.bias': rand(width),
                   p + 'ln_2.weight': 1 + rand(width), p + 'ln_2.bias': rand(width),
                   p + 'mlp.c_fc.weight': rand(4 * width, width),
                   p + 'mlp.c_fc.bias': rand(4 * width),
                   p + 'mlp.c_proj.weight': rand(width, 4 * width),
                   p + 'mlp.c_proj.bias': rand(width)})
    sd.update({'token_embedding.weight': rand(vocab_size, width),
               'ln_final.weight': 1 + rand(width), 'ln_final.bias': rand(width)})
    return sd


@torch.no_grad()
def open_clip_text_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor,
                           heads: int) -> torch.Tensor:
    """open_clip ``encode_text`` as the spec states it: sequence-first ``nn.MultiheadAttention``
    with the packed in-projection and an additive causal mask, pre-LN blocks, exact GELU,
    ``ln_final``, the state at ``argmax(ids)``, ``@ text_projection``."""
    width = sd['token_embedding.weight'].shape[1]
    n_ctx = ids.shape[1]
    x = sd['token_embedding.weight'][ids] + sd['positional_embedding'][:n_ctx]  # (N, L, W)
    mask = torch.full((n_ctx, n_ctx), float('-inf')).triu(1)
    x = x.transpose(0, 1)  # (L, N, W)
    layers = len({k.split('.')[2] for k in sd if k.startswith('transformer.resblocks.')})
    for i in range(layers):
        p = f'transformer.resblocks.{i}.'
        attn = torch.nn.MultiheadAttention(width, heads)
        attn.in_proj_weight.copy_(sd[p + 'attn.in_proj_weight'])
        attn.in_proj_bias.copy_(sd[p + 'attn.in_proj_bias'])
        attn.out_proj.weight.copy_(sd[p + 'attn.out_proj.weight'])
        attn.out_proj.bias.copy_(sd[p + 'attn.out_proj.bias'])
        y = F.layer_norm(x, (width, ), sd[p + 'ln_1.weight'], sd[p + 'ln_1.bias'])
        x = x + attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        y = F.layer_norm(x, (width, ), sd[p + 'ln_2.weight'], sd[p + 'ln_2.bias'])
        y = F.gelu(F.linear(y, sd[p + 'mlp.c_fc.weight'], sd[p + 'mlp.c_fc.bias']))
        x = x + F.linear(y, sd[p + 'mlp.c_proj.weight'], sd[p + 'mlp.c_proj.bias'])
    x = F.layer_norm(x.transpose(0, 1), (width, ), sd['ln_final.weight'], sd['ln_final.bias'])
    return x[torch.arange(len(ids)), ids.argmax(-1)] @ sd['text_projection']


def write_tiny_text_tower(tmp_path: Path,
                          embed_dim: int = 32) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(open_clip-format weight file, tokenizer gz, its state dict) for a 2-layer width-64 tower."""
    gz, merges = write_bpe_gz(tmp_path / 'bpe_tiny.txt.gz')
    sd = tiny_open_clip_state_dict(512 + len(merges) + 2, embed_dim=embed_dim)
    weights = tmp_path / 'tiny_open_clip.bin'
    torch.save(sd, weights)
    return weights, gz, sd
