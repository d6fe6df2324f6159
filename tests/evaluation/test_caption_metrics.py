"""Caption metrics through pycocoevalcap, with and without Java."""
from __future__ import annotations

import pytest

from omg_llava.evaluation.captions import caption_metrics, find_java, ptb_tokenize, simple_tokenize

REFERENCES = {1: ['A man rides a brown horse on the beach.', 'a person riding a horse'],
              2: ['Two dogs play with a red ball in the park.'],
              3: ['A plate of pasta next to a glass of wine.']}
IDENTICAL = {1: 'A man rides a brown horse on the beach.',
             2: 'Two dogs play with a red ball in the park.',
             3: 'A plate of pasta next to a glass of wine.'}
OTHER = {1: 'a cat sleeping', 2: 'a car', 3: ''}

needs_java = pytest.mark.skipif(find_java() is None, reason='java not on PATH')


def test_simple_tokenizer():
    assert simple_tokenize(["The dog's ball -- red!", '  A, b.  ']) == ["the dog's ball red", 'a b']


@needs_java
def test_ptb_tokenizer_keeps_one_line_per_sentence():
    assert ptb_tokenize(['The dog\'s ball -- red!', '', 'Two\nlines.'], find_java()) == \
        ["the dog 's ball red", '', 'two lines']


def test_bleu_cider_rouge_without_java():
    same = caption_metrics(REFERENCES, IDENTICAL, java=None)
    assert same['BLEU-1'] == pytest.approx(1.0) and same['BLEU-4'] == pytest.approx(1.0)
    assert same['ROUGE-L'] == pytest.approx(1.0) and same['CIDEr'] > 1
    assert same['METEOR'] is None and same['SPICE'] is None and same['tokenizer'] == 'python'
    assert any('java not found' in n for n in same['notes'])
    other = caption_metrics(REFERENCES, OTHER, java=None)
    assert other['BLEU-1'] < 0.1 and other['CIDEr'] < 0.1 and other['ROUGE-L'] < 0.3
    assert other['num_captions'] == 3


def test_java_absent_from_path_is_a_documented_fallback(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))
    assert find_java() is None
    metrics = caption_metrics(REFERENCES, IDENTICAL)
    assert (metrics['METEOR'] is None and metrics['tokenizer'] == 'python'
            and metrics['BLEU-1'] == pytest.approx(1))


def test_predictions_need_references():
    with pytest.raises(KeyError, match='no reference'):
        caption_metrics(REFERENCES, {4: 'a caption'}, java=None)
    assert caption_metrics(REFERENCES, {}, java=None)['BLEU-1'] is None


@needs_java
def test_meteor_with_java():
    # the one METEOR run of the suite (~15 s on 2 cores)
    metrics = caption_metrics(REFERENCES, IDENTICAL)
    assert metrics['tokenizer'] == 'ptb' and metrics['BLEU-1'] == pytest.approx(1.0)
    assert 0.95 < metrics['METEOR'] <= 1.0
