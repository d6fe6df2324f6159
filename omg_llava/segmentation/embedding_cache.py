"""Class embeddings of a vocabulary computed once: in memory for the process and on disk across
runs.

The disk cache (default ``~/.cache/omg_llava/class_embeddings``) keys each file by the vocabulary
text, the text-tower weight file (path, size, modification time) and the tokenizer, and stores the
released format (a bare tensor), so a cached file can also be passed where ``--class-embed-pth`` is
expected.
"""
from __future__ import annotations

import hashlib
import os

import torch
from torch import Tensor

from .text_tower import CLIPTextEncoder, load_clip_tokenizer, load_text_tower
from .vocabulary import Vocabulary, embed_vocabulary, parse_vocabulary

DEFAULT_CACHE_DIR = os.path.expanduser('~/.cache/omg_llava/class_embeddings')
_MEMORY: dict[str, Tensor] = {}


def _file_id(path: str) -> str:
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        parts = [_file_id(os.path.join(path, f)) for f in ('vocab.json', 'merges.txt')
                 if os.path.isfile(os.path.join(path, f))]
        return path + '|' + '|'.join(parts)
    stat = os.stat(path)
    return f'{path}:{stat.st_size}:{int(stat.st_mtime)}'


def build_text_encoder(text_weights: str, tokenizer: str, *, num_heads: int | None = None,
                       device: str = 'cpu', weights_only: bool = True) -> CLIPTextEncoder:
    """Tokenizer + text tower from the open_clip CLIP file (its text half) and a CLIP tokenizer."""
    model, _ = load_text_tower(text_weights, num_heads=num_heads, weights_only=weights_only)
    return CLIPTextEncoder(model.to(device), load_clip_tokenizer(tokenizer))


def cached_class_embeddings(vocabulary: Vocabulary | str, text_weights: str, tokenizer: str, *,
                            cache_dir: str | None = DEFAULT_CACHE_DIR, num_heads: int | None = None,
                            device: str = 'cpu',
                            weights_only: bool = True) -> tuple[Tensor, str | None]:
    """(C, S, D) class embeddings of ``vocabulary``, computed at most once per vocabulary and text
    tower.

    Args:
        vocabulary: what :func:`~.vocabulary.parse_vocabulary` accepts.
        text_weights: the open_clip CLIP file whose text tower embeds the classes.
        tokenizer: CLIP tokenizer folder or ``bpe_simple_vocab_16e6.txt.gz``.
        cache_dir: folder of the disk cache; ``None`` keeps only the in-memory cache.

    Returns:
        ``(embeddings, path)``: the tensor and the cache file it is stored in (``None`` without a
        disk cache).
    """
    vocabulary = parse_vocabulary(vocabulary)
    key = hashlib.sha256('\n'.join([vocabulary.text(), _file_id(text_weights), _file_id(tokenizer),
                                    str(num_heads)]).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, f'{key}.pth') if cache_dir else None
    if key in _MEMORY:
        return _MEMORY[key], path
    if path and os.path.isfile(path):
        embeddings = torch.load(path, map_location='cpu', weights_only=True)
    else:
        encoder = build_text_encoder(text_weights, tokenizer, num_heads=num_heads, device=device,
                                     weights_only=weights_only)
        embeddings = embed_vocabulary(encoder, vocabulary)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            torch.save(embeddings, path + '.tmp')
            os.replace(path + '.tmp', path)
    _MEMORY[key] = embeddings
    return embeddings, path
