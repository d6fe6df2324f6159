"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr (spec §9.3, GCG and region
captions).

Captions are tokenised like the COCO caption evaluation: Stanford PTBTokenizer (the
``stanford-corenlp-3.4.1.jar`` shipped inside pycocoevalcap), lower-cased, punctuation tokens
removed. Java is needed for that tokenizer and for METEOR (``meteor-1.5.jar``, also shipped with its
paraphrase table). Without ``java`` on ``PATH``:

* tokenisation falls back to :func:`simple_tokenize` (lower-cased words; punctuation dropped;
  clitics such as ``'s`` are not split off as PTB does, so BLEU/CIDEr can differ slightly from the
  Java numbers);
* METEOR is reported as ``None`` with a note, never guessed.

SPICE is not computed: it needs the Stanford CoreNLP 3.6 models, which pycocoevalcap downloads on
first use.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Hashable, Mapping, Sequence

PTB_JAR = 'stanford-corenlp-3.4.1.jar'
#: Tokens the COCO caption evaluation drops after PTB tokenisation.
PUNCTUATION_TOKENS = frozenset(["''", "'", '``', '`', '-LRB-', '-RRB-', '-LCB-', '-RCB-', '.', '?',
                                '!', ',', ':', '-', '--', '...', ';'])
METRIC_NAMES = ('BLEU-1', 'BLEU-2', 'BLEU-3', 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr')
SPICE_NOTE = ('SPICE skipped: it needs the Stanford CoreNLP models, which pycocoevalcap downloads '
              'on first use')
_SIMPLE_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def find_java() -> str | None:
    """Path of ``java`` on ``PATH`` (``None`` when absent)."""
    return shutil.which('java')


def _package_dir(*parts: str) -> str:
    import pycocoevalcap
    return os.path.join(list(pycocoevalcap.__path__)[0], *parts)


def simple_tokenize(sentences: Sequence[str]) -> list[str]:
    """Java-free tokenisation: lower-case, keep runs of letters/digits (with inner apostrophes),
    drop the rest."""
    return [' '.join(_SIMPLE_TOKEN.findall(s.lower())) for s in sentences]


def ptb_tokenize(sentences: Sequence[str], java: str) -> list[str]:
    """Stanford PTB tokenisation (one output line per sentence), lower-cased, punctuation tokens
    dropped.

    Raises:
        RuntimeError: the tokenizer failed or returned a different number of lines.
    """
    if not sentences:
        return []
    lines = [' '.join(s.split()) for s in sentences]  # one sentence per line, whatever it holds
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'sentences.txt')
        with open(path, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines))
        cmd = [java, '-cp', _package_dir('tokenizer', PTB_JAR),
               'edu.stanford.nlp.process.PTBTokenizer', '-preserveLines', '-lowerCase', path]
        done = subprocess.run(cmd, capture_output=True, check=False)
    out = done.stdout.decode('utf-8').split('\n')
    if out and out[-1] == '' and len(out) == len(lines) + 1:
        out = out[:-1]
    if done.returncode or len(out) != len(lines):
        raise RuntimeError(f'PTBTokenizer failed (exit {done.returncode}, {len(out)} lines for '
                           f'{len(lines)} sentences): '
                           f'{done.stderr.decode("utf-8", "replace")[-500:]}')
    return [' '.join(t for t in line.split() if t not in PUNCTUATION_TOKENS) for line in out]


def caption_metrics(references: Mapping[Hashable, Sequence[str]],
                    predictions: Mapping[Hashable, str], *,
                    java: str | None | bool = True, meteor: bool = True) -> dict:
    """Score one predicted caption per key against its reference captions.

    Args:
        references: key → reference captions (at least one each).
        predictions: key → predicted caption; every key must have references.
        java: ``True`` finds ``java`` on ``PATH``; a path uses that binary; ``None``/``False`` runs
            without Java (Python tokenisation, METEOR ``None``).
        meteor: compute METEOR (slow to start: the jar loads its paraphrase table).

    Returns:
        ``{'BLEU-1'.. 'BLEU-4', 'METEOR', 'ROUGE-L', 'CIDEr', 'SPICE': None, 'num_captions',
        'tokenizer', 'notes'}``; scores are fractions (CIDEr can exceed 1), ``None`` when not
        computable.

    Raises:
        KeyError: a prediction has no reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise KeyError(f'{len(missing)} predictions have no reference caption, e.g. {missing[:3]}')
    notes = [SPICE_NOTE]
    java_path = find_java() if java is True else (java or None)
    result: dict = {name: None for name in METRIC_NAMES}
    result.update(SPICE=None, num_captions=len(predictions), notes=notes)
    if not predictions:
        result['tokenizer'] = None
        notes.append('no prediction to score')
        return result

    keys = list(predictions)
    flat_refs = [r for k in keys for r in references[k]]
    sentences = [predictions[k] for k in keys] + list(flat_refs)
    tokenizer = 'ptb'
    if java_path:
        try:
            tokens = ptb_tokenize(sentences, java_path)
        except (OSError, RuntimeError) as exc:
            tokens, tokenizer = simple_tokenize(sentences), 'python'
            notes.append(f'PTB tokenizer failed ({exc}); used the Python tokenizer')
    else:
        tokens, tokenizer = simple_tokenize(sentences), 'python'
        notes.append('java not found on PATH: Python tokenizer instead of PTB, METEOR not computed')
    result['tokenizer'] = tokenizer
    res = {k: [tokens[i]] for i, k in enumerate(keys)}
    gts, cursor = {}, len(keys)
    for k in keys:
        n = len(references[k])
        gts[k] = tokens[cursor:cursor + n]
        cursor += n

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result.update({f'BLEU-{n + 1}': float(b) for n, b in enumerate(bleu)})
    result['ROUGE-L'] = float(Rouge().compute_score(gts, res)[0])
    result['CIDEr'] = float(Cider().compute_score(gts, res)[0])
    if meteor and java_path and find_java():
        result['METEOR'] = _meteor(gts, res, notes)
    elif meteor and java_path:
        notes.append('METEOR not computed: its wrapper runs the `java` on PATH and there is none '
                     f'(given {java_path})')
    elif not meteor:
        notes.append('METEOR not requested')
    return result


def _meteor(gts: dict, res: dict, notes: list[str]) -> float | None:
    """METEOR 1.5 through pycocoevalcap's wrapper (it starts the ``java`` on ``PATH``)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = None
    try:
        scorer = Meteor()
        return float(scorer.compute_score(gts, res)[0])
    except (OSError, ValueError) as exc:
        notes.append(f'METEOR failed ({type(exc).__name__}: {exc}); reported as null')
        return None
    finally:
        del scorer  # its finaliser stops the java process


__all__ = ['caption_metrics', 'find_java', 'ptb_tokenize', 'simple_tokenize', 'METRIC_NAMES']
