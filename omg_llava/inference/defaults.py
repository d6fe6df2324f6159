"""The built-in defaults of the user-facing tools (``tools/chat.py``, ``tools/app.py``,
``tools/test.py``, ``tools/segment_image.py``, ``make demo``): the tiny OMG-LLaVA trained on the
synthetic shapes (``projects/tiny_omg_llava/train_tiny.py``), whose weights ship in
``omg_llava/assets/tiny_synthetic/``. It knows coloured shapes only; its demo image is a held-out
synthetic one. Config names are found from any working directory
(:func:`omg_llava.config_paths.find_config`). Only the standard library is imported here."""
from __future__ import annotations

from omg_llava.assets import TINY_SYNTHETIC_DEMO_IMAGE, TINY_SYNTHETIC_ENCODER, TINY_SYNTHETIC_PTH
from omg_llava.config_paths import find_config, same_config

DEFAULT_CONFIG = 'configs/tiny/omg_llava_tiny_synthetic_finetune.py'
DEFAULT_IMAGE = TINY_SYNTHETIC_DEMO_IMAGE
DEFAULT_PROMPT = 'Please segment the largest shape in this image.'

#: ``tools/segment_image.py``'s default: the same config, whose visual encoder is the trained tiny
#: OMG-Seg (``omg_llava/assets/tiny_synthetic/omg_seg.pth`` ...), on :data:`DEFAULT_IMAGE`
SEGMENT_CONFIG = DEFAULT_CONFIG
#: the classes that encoder was trained on, in its label order
#: (``configs/tiny/omg_seg_tiny_synthetic.py``'s ``class_names``: colour x kind); the first 24 rows
#: of its class-embedding file are theirs (word bags)
SYNTHETIC_CLASS_NAMES = tuple(f'{colour} {kind}'
                              for kind in ('circle', 'square', 'triangle', 'star')
                              for colour in ('red', 'yellow', 'green', 'cyan', 'blue', 'purple'))
#: its class-embedding file
SYNTHETIC_CLASS_EMBED = TINY_SYNTHETIC_ENCODER['class_embed']


def is_builtin_config(config: str, name: str) -> bool:
    """Whether ``config`` (a path or a built-in name) is the built-in config ``name`` (not a file of
    the same name in the working directory), from any working directory."""
    try:
        builtin = find_config(name, search_cwd=False)
    except FileNotFoundError:
        return False
    return same_config(config, builtin)


def is_default_config(config: str) -> bool:
    """Whether ``config`` is the built-in :data:`DEFAULT_CONFIG` (:func:`is_builtin_config`)."""
    return is_builtin_config(config, DEFAULT_CONFIG)


def checkpoint_for(config: str, pth: str | None) -> str | None:
    """``pth`` if given; the committed tiny checkpoint for the default config; else ``None`` (random
    weights)."""
    if pth or not is_default_config(config):
        return pth
    return TINY_SYNTHETIC_PTH


def synthetic_vocabulary():
    """The tiny encoder's own classes and their embeddings, for
    :meth:`UniversalSegmenter.set_vocabulary`.

    Returns:
        ``(vocabulary, embeddings)``: a :class:`~omg_llava.segmentation.vocabulary.Vocabulary` of
        the 24 :data:`SYNTHETIC_CLASS_NAMES` (all things) and their (24, synonyms, D) unit class
        embeddings.
    """
    from omg_llava.models.weights import read_class_embeddings
    from omg_llava.segmentation.vocabulary import Vocabulary
    embeddings = read_class_embeddings(SYNTHETIC_CLASS_EMBED)[:len(SYNTHETIC_CLASS_NAMES)]
    return Vocabulary(SYNTHETIC_CLASS_NAMES, len(SYNTHETIC_CLASS_NAMES)), embeddings

#: DEFAULT_IMAGE is val image k of ``synthetic_shapes.py`` (seed 0): ``sample_scene(default_rng([0,
#: 1, k]))``.
DEMO_VAL_INDEX = 40
