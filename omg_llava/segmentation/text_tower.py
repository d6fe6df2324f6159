"""The CLIP text tower of the open_clip ``convnext_large_d_320`` file, on transformers' CLIP text
model.

open_clip's text tower (OMG-Seg spec §1.3) is the plain CLIP text transformer: token + learned
positional embedding, pre-LN blocks with a causal mask, exact (erf) GELU, LayerNorm eps 1e-5, a
final LayerNorm, the hidden state at the first end-of-text token, then ``@ text_projection``.
transformers' ``CLIPTextModelWithProjection`` computes exactly that (``hidden_act='gelu'``, pooling
at the first ``eos_token_id``), so the tower is that class, and this module only renames the 197
text tensors of the open_clip file (spec §2) to its names: the packed ``attn.in_proj_*`` rows are
split into q, k, v and the ``text_projection`` matrix (used as ``x @ W``) is transposed into a
``Linear`` weight. ``logit_scale`` and the 345 ``visual.*`` tensors are not used.

The tokenizer is transformers' ``CLIPTokenizer`` over the OpenAI CLIP byte-level BPE: either a
folder with ``vocab.json`` + ``merges.txt`` or open_clip's ``bpe_simple_vocab_16e6.txt.gz``,
converted by :func:`write_tokenizer_files` (same merges, same ids; open_clip names the specials
``<start_of_text>`` / ``<end_of_text>``, transformers ``<|startoftext|>`` / ``<|endoftext|>``, both
at ids 49406 / 49407).
"""
from __future__ import annotations

import gzip
import json
import os
import re
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from omg_llava.checkpoint import (CheckpointError, LoadReport, load_into, read_weights,
                                  unwrap_state_dict)

CONTEXT_LENGTH = 77
HEAD_WIDTH = 64  # open_clip's text head width: heads = width // 64 (12 for 768)
START_TOKEN, END_TOKEN = '<|startoftext|>', '<|endoftext|>'
_BLOCK = re.compile(r'^transformer\.resblocks\.(\d+)\.(.+)$')
# open_clip block sub-key -> transformers layer sub-key (in_proj_* is split separately)
_BLOCK_RENAMES = {'ln_1.weight': 'layer_norm1.weight', 'ln_1.bias': 'layer_norm1.bias',
                  'ln_2.weight': 'layer_norm2.weight', 'ln_2.bias': 'layer_norm2.bias',
                  'attn.out_proj.weight': 'self_attn.out_proj.weight',
                  'attn.out_proj.bias': 'self_attn.out_proj.bias',
                  'mlp.c_fc.weight': 'mlp.fc1.weight', 'mlp.c_fc.bias': 'mlp.fc1.bias',
                  'mlp.c_proj.weight': 'mlp.fc2.weight', 'mlp.c_proj.bias': 'mlp.fc2.bias'}
_TOP_RENAMES = {'token_embedding.weight': 'text_model.embeddings.token_embedding.weight',
                'positional_embedding': 'text_model.embeddings.position_embedding.weight',
                'ln_final.weight': 'text_model.final_layer_norm.weight',
                'ln_final.bias': 'text_model.final_layer_norm.bias'}
_UNUSED = ('logit_scale', 'attn_mask')


def is_text_key(key: str) -> bool:
    """True for the open_clip text-tower keys (everything but ``visual.*``)."""
    return not key.startswith('visual.')


def open_clip_text_to_transformers(
    state_dict: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename the text half of an open_clip CLIP state dict to ``CLIPTextModelWithProjection``
    names.

    Args:
        state_dict: open_clip keys (``visual.*`` and ``logit_scale`` are skipped).

    Returns:
        ``(renamed, unknown)``: the converted tensors, and the text keys no rule covers (a wrong
        file).
    """
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        if not is_text_key(key) or key in _UNUSED:
            continue
        if key in _TOP_RENAMES:
            renamed[_TOP_RENAMES[key]] = value
        elif key == 'text_projection':
            # x @ W  ==  Linear with weight W^T
            renamed['text_projection.weight'] = value.t().contiguous()
        elif (match := _BLOCK.match(key)) is not None:
            prefix = f'text_model.encoder.layers.{match.group(1)}.'
            sub = match.group(2)
            if sub in ('attn.in_proj_weight', 'attn.in_proj_bias'):
                kind = sub.rsplit('_', 1)[-1]  # weight / bias
                # rows q, k, v
                for name, part in zip(('q_proj', 'k_proj', 'v_proj'), value.chunk(3, dim=0)):
                    renamed[f'{prefix}self_attn.{name}.{kind}'] = part.contiguous()
            elif sub in _BLOCK_RENAMES:
                renamed[prefix + _BLOCK_RENAMES[sub]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    return renamed, unknown


def text_config_from_open_clip(state_dict: Mapping[str, Tensor], *, num_heads: int | None = None,
                               eos_token_id: int | None = None):
    """A ``CLIPTextConfig`` with the sizes of the open_clip text tensors in ``state_dict``.

    Width, vocabulary, context length, MLP width, depth and projection width are read from the
    shapes; heads default to ``width // 64`` (open_clip's head width; 12 for ConvNeXt-L), the
    end-of-text id to the last vocabulary entry (49407).
    """
    from transformers import CLIPTextConfig
    required = ('token_embedding.weight', 'positional_embedding', 'text_projection',
                'transformer.resblocks.0.mlp.c_fc.weight')
    absent = [k for k in required if k not in state_dict]
    if absent:
        raise CheckpointError(f'the weights hold no open_clip text tower (missing {absent}); pass '
                              'the open_clip CLIP file (open_clip_pytorch_model.bin / '
                              'open_clip_model.safetensors) of convnext_large_d_320')
    vocab, width = state_dict['token_embedding.weight'].shape
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := _BLOCK.match(k)) is not None)
    heads = num_heads or max(1, width // HEAD_WIDTH)
    if width % heads:
        raise ValueError(f'text width {width} is not divisible by {heads} heads; pass num_heads')
    return CLIPTextConfig(
        vocab_size=int(vocab), hidden_size=int(width),
        intermediate_size=int(state_dict['transformer.resblocks.0.mlp.c_fc.weight'].shape[0]),
        num_hidden_layers=depth, num_attention_heads=heads,
        max_position_embeddings=int(state_dict['positional_embedding'].shape[0]),
        projection_dim=int(state_dict['text_projection'].shape[1]), hidden_act='gelu',
        layer_norm_eps=1e-5,
        bos_token_id=int(vocab) - 2,
        eos_token_id=int(eos_token_id if eos_token_id is not None else vocab - 1),
        # plain softmax attention, the same on every torch build
        pad_token_id=0, attn_implementation='eager')


def load_text_tower(path: str | os.PathLike | Mapping[str, Tensor], *, num_heads: int | None = None,
                    weights_only: bool = True) -> tuple[nn.Module, LoadReport]:
    """Build ``CLIPTextModelWithProjection`` from the text half of an open_clip CLIP file, strictly.

    Args:
        path: the open_clip file (``.bin`` / ``.pth`` / ``.safetensors``) or its state dict.
        num_heads: attention heads (default ``width // 64``).
        weights_only: torch's restricted unpickler (default; a checkpoint is untrusted input).

    Returns:
        ``(model, report)``: the tower in eval mode, float32, on the CPU; the load report (every
        tensor of the model loaded, exact shapes; ``ignored`` lists the skipped
        visual/``logit_scale`` keys).
    """
    from transformers import CLIPTextModelWithProjection
    source = path if isinstance(path, Mapping) else None
    name = 'state dict' if source is not None else os.fspath(path)
    state_dict = (
        dict(source)
        if source is not None
        else unwrap_state_dict(read_weights(name, weights_only=weights_only), name)
    )
    config = text_config_from_open_clip(state_dict, num_heads=num_heads)
    renamed, unknown = open_clip_text_to_transformers(state_dict)
    if unknown:
        raise CheckpointError(f'{name}: text keys this loader does not know: {unknown[:10]}; is '
                              'this an open_clip CLIP file with the plain text transformer (not a '
                              'CustomTextCLIP / HF text tower)?')
    model = CLIPTextModelWithProjection(config)
    report = load_into(model, renamed, source=name)
    report.ignored = [k for k in state_dict if not is_text_key(k) or k in _UNUSED]
    return model.float().eval(), report


# ---------------------------------------------------------------------------------------- tokenizer
def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of the byte-level BPE in vocabulary order (GPT-2 / CLIP
    convention): first the printable Latin-1 bytes as themselves (``!`` .. ``~``, ``¡`` .. ``¬``,
    ``®`` .. ``ÿ``), then the other bytes, in byte order, as code points 256, 257, ... (so id 0 is
    ``!``)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                 *range(ord('®'), 256)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def read_open_clip_merges(path: str | os.PathLike, max_merges: int = 49152 - 256 - 2) -> list[str]:
    """Merges of open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (or a plain text file): the header
    line is skipped, then at most ``max_merges`` lines (48 894, as open_clip keeps), each ``'a
    b'``."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt', encoding='utf-8') as handle:
        lines = handle.read().split('\n')
    merges = [line for line in lines[1:1 + max_merges] if line.strip()]
    bad = [m for m in merges if len(m.split(' ')) != 2]
    if bad:
        raise ValueError(f'{path}: not a BPE merges file (lines like {bad[:2]!r}); pass '
                         'bpe_simple_vocab_16e6.txt.gz')
    return merges


def write_tokenizer_files(merges: Sequence[str], out_dir: str | os.PathLike) -> str:
    """Write ``vocab.json`` / ``merges.txt`` for ``CLIPTokenizer`` from CLIP BPE merges.

    The vocabulary is built as open_clip builds it (spec §1.3): the 256 byte symbols, the same with
    ``</w>``, one entry per merge (the two halves joined), then ``<|startoftext|>`` and
    ``<|endoftext|>``; with the 48 894 released merges that is 49 408 entries, specials at 49406 /
    49407.

    Returns:
        ``out_dir``.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    symbols = byte_symbols()
    entries = symbols + [s + '</w>' for s in symbols] + [''.join(m.split(' ')) for m in merges]
    entries += [START_TOKEN, END_TOKEN]
    vocab = {token: i for i, token in enumerate(entries)}
    if len(vocab) != len(entries):
        raise ValueError('the merges produce duplicate vocabulary entries; is this a CLIP BPE '
                         'merges file?')
    with open(os.path.join(out_dir, 'vocab.json'), 'w', encoding='utf-8') as handle:
        json.dump(vocab, handle, ensure_ascii=False)
    with open(os.path.join(out_dir, 'merges.txt'), 'w', encoding='utf-8') as handle:
        handle.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    return out_dir


def load_clip_tokenizer(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """``CLIPTokenizer`` from a folder with ``vocab.json`` + ``merges.txt``, or from open_clip's
    ``bpe_simple_vocab_16e6.txt.gz`` (converted once into ``cache_dir``, default next to nothing: a
    folder under ``~/.cache/omg_llava/clip_tokenizer``)."""
    from transformers import CLIPTokenizer
    path = os.fspath(path)
    if os.path.isdir(path):
        absent = [f for f in ('vocab.json', 'merges.txt')
                  if not os.path.isfile(os.path.join(path, f))]
        if absent:
            raise FileNotFoundError(f'tokenizer folder {path!r} lacks {absent}; give a CLIP '
                                    'tokenizer folder (vocab.json + merges.txt) or open_clip\'s '
                                    'bpe_simple_vocab_16e6.txt.gz')
        folder = path
    elif os.path.isfile(path):
        stat = os.stat(path)
        folder = os.path.join(os.fspath(cache_dir
                                        or os.path.expanduser('~/.cache/omg_llava/clip_tokenizer')),
                              f'{os.path.basename(path)}-{stat.st_size}-{int(stat.st_mtime)}')
        if not os.path.isfile(os.path.join(folder, 'merges.txt')):
            write_tokenizer_files(read_open_clip_merges(path), folder)
    else:
        raise FileNotFoundError(f'CLIP tokenizer not found: {path!r}; give a folder with '
                                'vocab.json + merges.txt (e.g. of openai/clip-vit-large-patch14) '
                                'or open_clip\'s bpe_simple_vocab_16e6.txt.gz')
    return CLIPTokenizer.from_pretrained(folder, model_max_length=CONTEXT_LENGTH)


class CLIPTextEncoder:
    """Tokenizer + text tower: strings → (N, D) text features (un-normalised, float32).

    Args:
        model: ``CLIPTextModelWithProjection`` (see :func:`load_text_tower`).
        tokenizer: a ``CLIPTokenizer`` whose end-of-text id is the model's ``eos_token_id``.
        context_length: tokens per string (77; longer strings are cut, the last id kept
            end-of-text).
    """

    def __init__(self, model: nn.Module, tokenizer, context_length: int = CONTEXT_LENGTH) -> None:
        if tokenizer.eos_token_id != model.config.eos_token_id:
            raise ValueError(f'tokenizer end-of-text id {tokenizer.eos_token_id} differs from the '
                             f'text tower\'s {model.config.eos_token_id}: the tokenizer does not '
                             'belong to these weights')
        self.model = model
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def embed_dim(self) -> int:
        return self.model.config.projection_dim

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """(N, context_length) int64 ids: start, BPE ids, end, right padding (never attended to)."""
        ids = self.tokenizer(list(texts), padding='max_length', truncation=True,
                             max_length=self.context_length, return_tensors='pt')['input_ids']
        return ids

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """(N, D) float32 projected text features at the first end-of-text token, on the CPU."""
        device = next(self.model.parameters()).device
        chunks = [
            self.model(input_ids=self.tokenize(texts[i : i + batch_size]).to(device))
            .text_embeds.float()
            .cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.embed_dim)
