"""Build the tiny InternLM2-format tokenizer committed under ``omg_llava/assets/tiny_tokenizer``.

The tiny models (tests, CPU demo, the trained tiny default) need a real sentencepiece tokenizer with
the InternLM2 conventions (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<|im_start|>`` / ``<|im_end|>`` as
pieces, byte fallback so any text encodes) but a small vocabulary. It is trained on English text
that ships with Python (standard-library docstrings) plus the phrases OMG-LLaVA's data uses (COCO
class names, chat and grounding templates), so it is reproducible offline:

    python projects/tiny_omg_llava/build_tokenizer.py [--out omg_llava/assets/tiny_tokenizer] \\
        [--vocab-size 1000]
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile

STDLIB_MODULES = ('builtins', 'os', 'os.path', 'collections', 'json', 're', 'string', 'textwrap',
                  'argparse', 'functools', 'itertools', 'pathlib', 'random', 'statistics',
                  'datetime', 'calendar', 'csv', 'logging', 'unittest', 'typing', 'dataclasses',
                  'shutil', 'tarfile', 'zipfile', 'email', 'http.client', 'urllib.request', 'html',
                  'colorsys', 'fractions', 'decimal', 'heapq')
OMG_PHRASES = (
    'Please segment the {x} in this image.',
    'What is {x} in this image? Please respond with segmentation mask.',
    'Can you provide a brief description of the this image? Please output with interleaved '
    'segmentation masks for the corresponding phrases.', '<p> {x} </p> [SEG].',
    'It is <p> {x} </p> [SEG].',
    'There are some regions: region1 <region>, region2 <region>.',
    'There are some marks: Mark 1 <mark>.',
    'Can you provide me with a detailed description of the region in the picture marked by region1 '
    '<mark>?',
    'the small blue triangle left of the red circle', 'a large green square above the yellow star')


def corpus_lines() -> list[str]:
    """Deterministic training text: docstrings of standard-library modules and OMG-LLaVA phrases."""
    import pydoc
    lines = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        for obj in [module] + [getattr(module, a) for a in sorted(dir(module))
                               if not a.startswith('_')]:
            doc = pydoc.getdoc(obj)
            lines += [ln.strip() for ln in doc.splitlines() if len(ln.split()) > 2]
    from mmdet.datasets import CocoPanopticDataset
    classes = [c.replace('-merged', '').replace('-other', '').replace('-', ' ')
               for c in CocoPanopticDataset.METAINFO['classes']]
    for c in classes:
        lines += [p.format(x=c) for p in OMG_PHRASES]
    lines += ['<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n'.replace('{q}', p)
              for p in OMG_PHRASES]
    return lines


def build(out_dir: str, vocab_size: int) -> None:
    import sentencepiece as spm
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', '..'))
    from omg_llava.models.llm import InternLM2Tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, 'tokenizer')
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines()), model_prefix=prefix,
                                       vocab_size=vocab_size, model_type='bpe',
                                       character_coverage=1.0, byte_fallback=True, unk_id=0,
                                       bos_id=1, eos_id=2, pad_id=-1,
                                       user_defined_symbols=['<|im_start|>', '<|im_end|>'],
                                       normalization_rule_name='identity', split_digits=True,
                                       num_threads=1, minloglevel=2)
        tokenizer = InternLM2Tokenizer(vocab_file=prefix + '.model')
        tokenizer.save_pretrained(out_dir)
    print(f'wrote {out_dir} ({tokenizer.vocab_size} pieces)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.path.join(os.path.dirname(__file__), '..', '..', 'omg_llava', 'assets',
                               'tiny_tokenizer')
    parser.add_argument('--out', default=os.path.normpath(default_out))
    parser.add_argument('--vocab-size', type=int, default=1000)
    args = parser.parse_args(argv)
    build(args.out, args.vocab_size)
    return 0


if __name__ == '__main__':
    sys.exit(main())
