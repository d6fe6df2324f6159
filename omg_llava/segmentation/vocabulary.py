"""Class vocabularies and their CLIP class embeddings (OMG-Seg spec §1: ``tools/gen_cls.py``).

A vocabulary is an ordered list of classes, things first, each a string of comma-separated synonyms
(the first is the display name). Its class-embedding tensor has the released file's format: a bare
float32 tensor (classes, max synonyms, D) of unit vectors, built as OMG-Seg builds
``convnext_large_d_320_CocoPanopticOVDataset.pth``:

1. split each class into synonyms (:func:`split_synonyms`);
2. fill each of the 14 :data:`TEMPLATES` with each synonym (order class → synonym → template);
3. encode every string with the CLIP text tower;
4. L2-normalise each template feature, average the 14, L2-normalise again;
5. pad each class to the largest synonym count by repeating its *first* synonym (not zeros: the head
   takes a max of cosines over the synonym slots and asserts unit norms).

Vocabulary files (``--classes FILE``): one class per line, synonyms separated by commas, ``stuff:``
in front of a stuff class, ``#`` comment lines. Inline (``--classes "cat,dog,traffic light"``):
classes separated by commas, synonyms inside a class by ``/`` (``"sky/clouds"``), ``stuff:`` in
front of a stuff class.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

VOCABULARY_DIR = os.path.join(os.path.dirname(__file__), 'vocabularies')
#: the 133 COCO-panoptic classes with OMG-Seg's open-vocabulary synonyms (spec §1.6)
COCO_PANOPTIC_VOCABULARY = os.path.join(VOCABULARY_DIR, 'coco_panoptic.txt')
STUFF_PREFIX = 'stuff:'

#: the 14 prompt templates (ViLD / FC-CLIP), verbatim and in order (spec §1.4)
TEMPLATES: tuple[str, ...] = (
    'a photo of a {}.',
    'This is a photo of a {}',
    'There is a {} in the scene',
    'There is the {} in the scene',
    'a photo of a {} in the scene',
    'a photo of a small {}.',
    'a photo of a medium {}.',
    'a photo of a large {}.',
    'This is a photo of a small {}.',
    'This is a photo of a medium {}.',
    'This is a photo of a large {}.',
    'There is a small {} in the scene.',
    'There is a medium {} in the scene.',
    'There is a large {} in the scene.',
)


def split_synonyms(name: str) -> list[str]:
    """Synonyms of one class string, as ``gen_cls.split_label``: ``_or_`` and ``/`` become commas,
    ``_`` a space, lowercase, split on commas, strip each piece (empty pieces are kept)."""
    name = name.replace('_or_', ',').replace('/', ',').replace('_', ' ').lower()
    return [piece.strip() for piece in name.split(',')]


@dataclass(frozen=True)
class Vocabulary:
    """Classes in label order, things first.

    Attributes:
        classes: one string per class, synonyms separated by commas (``"tree,trees,palm
            tree,bushes"``).
        num_things: how many leading classes are things (instances); the rest are stuff.
    """

    classes: tuple[str, ...]
    num_things: int

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError('the vocabulary is empty: give at least one class, e.g. --classes '
                             '"cat,dog"')
        if not 0 <= self.num_things <= len(self.classes):
            raise ValueError(f'num_things={self.num_things} outside [0, {len(self.classes)}]')
        empty = [c for c in self.classes if not split_synonyms(c)[0]]
        if empty:
            raise ValueError(f'classes {empty!r} have an empty first name; write e.g. "traffic '
                             'light,stoplight"')

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_stuff(self) -> int:
        return len(self.classes) - self.num_things

    @property
    def names(self) -> tuple[str, ...]:
        """Display names: the first synonym of each class."""
        return tuple(split_synonyms(c)[0] for c in self.classes)

    @property
    def synonyms(self) -> list[list[str]]:
        return [split_synonyms(c) for c in self.classes]

    def is_thing(self, label: int) -> bool:
        return label < self.num_things

    def text(self) -> str:
        """The vocabulary in the file format (round-trips through :func:`parse_vocabulary`)."""
        return ''.join(f'{STUFF_PREFIX} {c}\n' if i >= self.num_things else f'{c}\n'
                       for i, c in enumerate(self.classes))

    def fingerprint(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:16]


def _ordered(entries: Sequence[tuple[str, bool]], source: str) -> Vocabulary:
    """Things must come before stuff: the head's label order (things 0..T-1, stuff T..K-1)."""
    stuff_flags = [is_stuff for _, is_stuff in entries]
    num_things = stuff_flags.index(True) if True in stuff_flags else len(entries)
    if any(not f for f in stuff_flags[num_things:]):
        first = entries[num_things][0]
        raise ValueError(f'{source}: a thing class follows the stuff class {first!r}; list every '
                         f'thing class first, then the "{STUFF_PREFIX}" classes (the head numbers '
                         'things before stuff)')
    return Vocabulary(tuple(name for name, _ in entries), num_things)


def _entry(text: str) -> tuple[str, bool]:
    text = text.strip()
    if text.lower().startswith(STUFF_PREFIX):
        return text[len(STUFF_PREFIX):].strip(), True
    return text, False


def parse_vocabulary(spec: str | os.PathLike | Vocabulary) -> Vocabulary:
    """A :class:`Vocabulary` from a file path, an inline string, or a vocabulary (returned as is).

    A path to an existing file is read in the file format (one class per line, comma synonyms); any
    other string is inline (comma-separated classes, ``/`` synonyms). See the module docstring.
    """
    if isinstance(spec, Vocabulary):
        return spec
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        with open(spec, encoding='utf-8') as handle:
            lines = [line.strip() for line in handle]
        entries = [_entry(line) for line in lines if line and not line.startswith('#')]
        if not entries:
            raise ValueError(f'{spec}: no class found (one class per line, synonyms separated by '
                             'commas)')
        return _ordered(entries, spec)
    if spec.endswith('.txt'):
        raise FileNotFoundError(f'vocabulary file not found: {spec!r}')
    entries = [_entry(piece) for piece in spec.split(',') if piece.strip()]
    entries = [(name.replace('/', ','), is_stuff) for name, is_stuff in entries]
    return _ordered(entries, 'inline vocabulary')


def coco_panoptic_vocabulary() -> Vocabulary:
    """The 133 COCO-panoptic classes (80 things, 53 stuff) of the released class-embedding file."""
    return parse_vocabulary(COCO_PANOPTIC_VOCABULARY)


@torch.no_grad()
def embed_vocabulary(text_encoder, vocabulary: Vocabulary | str,
                     templates: Sequence[str] = TEMPLATES) -> Tensor:
    """Class embeddings of a vocabulary in the released format.

    Args:
        text_encoder: anything with ``encode(list[str]) -> (N, D)``
            (:class:`~.text_tower.CLIPTextEncoder`).
        vocabulary: a :class:`Vocabulary` or what :func:`parse_vocabulary` accepts.
        templates: prompt templates with one ``{}`` (default the 14 of OMG-Seg).

    Returns:
        (C, S, D) float32 unit vectors, S = the largest synonym count; class c's slots past its own
        synonyms repeat its first synonym's vector exactly.
    """
    vocabulary = parse_vocabulary(vocabulary)
    synonyms = vocabulary.synonyms
    texts = [template.format(s) for names in synonyms for s in names for template in templates]
    features = text_encoder.encode(texts).float()  # (n_synonyms * T, D)
    features = features.view(-1, len(templates), features.shape[-1])
    per_synonym = F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)  # (n_synonyms, D)
    slots = max(len(names) for names in synonyms)
    rows, start = [], 0
    for names in synonyms:
        own = per_synonym[start:start + len(names)]
        start += len(names)
        rows.append(torch.cat([own, own[:1].expand(slots - len(names), -1)]))
    return torch.stack(rows).contiguous()


def compare_class_embeddings(ours: Tensor, released: Tensor) -> Tensor:
    """Per-class agreement of two class-embedding tensors: (C,) minimum cosine over the synonym
    slots.

    Raises:
        ValueError: the shapes differ (another vocabulary or synonym count).
    """
    if ours.shape != released.shape:
        raise ValueError(f'shapes differ: generated {list(ours.shape)} vs given '
                         f'{list(released.shape)}; the '
                         'class list must be the one the given file was made from, in the same '
                         'order')
    return F.cosine_similarity(ours.float(), released.float(), dim=-1).min(dim=-1).values
