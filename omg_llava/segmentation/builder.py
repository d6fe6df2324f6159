"""Build a :class:`~.segmenter.UniversalSegmenter` from a config, weight files and a vocabulary."""
from __future__ import annotations

from omg_llava.config_paths import find_config
from omg_llava.inference.encoder_builder import build_visual_encoder, visual_encoder_config
from omg_llava.models.weights import read_class_embeddings
from omg_llava.utils.allocator import return_large_blocks_promptly

from .embedding_cache import DEFAULT_CACHE_DIR, cached_class_embeddings
from .segmenter import UniversalSegmenter
from .vocabulary import Vocabulary, parse_vocabulary


def build_segmenter(
    config: str,
    *,
    omg_seg: str | None = None,
    clip: str | None = None,
    class_embed: str | None = None,
    classes: str | Vocabulary | None = None,
    tokenizer: str | None = None,
    text_weights: str | None = None,
    input_side: int | None = None,
    device: str = 'cpu',
    seed: int = 0,
    weights_only: bool = True,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
) -> tuple[UniversalSegmenter, list[str]]:
    """The config's encoder with its weights and a vocabulary.

    Vocabulary, by what is given:

    * ``classes`` and ``class_embed``: the file holds the embeddings of those classes (made by
      tools/make_class_embeddings.py);
    * ``classes`` only: embedded once with the text half of ``text_weights`` (default: the ``clip``
      file) and ``tokenizer``, then cached (memory and ``cache_dir``);
    * neither: the config's class embeddings (COCO panoptic for the released model; random for tiny
      configs).

    Returns:
        ``(segmenter, notes)``: notes say what was loaded, randomised or embedded.
    """
    config = find_config(config)  # a path or a built-in config's name, from any working directory
    return_large_blocks_promptly()  # host memory follows the live tensors (utils.allocator)
    vocabulary = parse_vocabulary(classes) if classes is not None else None
    encoder, notes = build_visual_encoder(config, omg_seg=omg_seg, clip=clip,
                                          class_embed=None if vocabulary else class_embed,
                                          device=device, seed=seed, weights_only=weights_only)
    part_cfg, cfg = visual_encoder_config(config)
    side = input_side or cfg.get('image_size', 1024)
    if vocabulary is None:
        return UniversalSegmenter(encoder, input_side=side), notes
    if class_embed:
        embeddings = read_class_embeddings(class_embed)
        notes.append(f'class embeddings of {len(vocabulary)} classes: {class_embed}')
    else:
        source = text_weights or clip or (part_cfg.get('weights') or {}).get('clip')
        if not source or not tokenizer:
            raise ValueError('--classes needs the CLIP text tower to embed them: pass the '
                             'open_clip file (--clip-pth or --text-weights) and --tokenizer '
                             '(bpe_simple_vocab_16e6.txt.gz or a folder with vocab.json + '
                             'merges.txt), or a ready --class-embed-pth made by '
                             'make_class_embeddings.py')
        embeddings, path = cached_class_embeddings(vocabulary, source, tokenizer,
                                                   cache_dir=cache_dir, device=device,
                                                   weights_only=weights_only)
        notes.append(f'class embeddings of {len(vocabulary)} classes from the text tower of '
                     f'{source}'
                     + (f' (cached in {path})' if path else ''))
    return UniversalSegmenter(encoder, vocabulary, embeddings.to(device), input_side=side), notes
