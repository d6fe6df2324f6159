"""prompt_qa.py's questions about point / box / mask prompts and its scoring (no model: the
committed model's figures are checked in tests/tools/test_default_model.py)."""
from __future__ import annotations

import re

import pytest

from conftest import load_project_module


@pytest.fixture(scope='module')
def qa():
    return load_project_module('prompt_qa')


def test_cases_name_their_prompts_and_cover_every_kind_attribute_and_wording(qa):
    cases = qa.make_cases(3)
    assert len(cases) == 36
    assert {(c['kind'], c['attribute']) for c in cases} == {
        (k, a) for k in qa.PROMPT_KINDS for a in qa.ATTRIBUTES}
    assert {c['wording'] for c in cases} == set(qa.WORDINGS)
    for case in cases:
        scene, _ = qa.val_scene(case['image'])
        text, placeholder = case['question'], qa.PLACEHOLDER[case['kind']]
        assert text.count(placeholder) == len(case['prompts']) == len(case['listed'])
        field = qa.ATTRIBUTES[case['attribute']]
        assert case['truth'] == getattr(scene.objects[case['object']], field)
        if case['wording'] == 'inline':
            assert text == qa.QUESTION[case['attribute']].format(p=placeholder)
        else:  # the asked name is the asked object's place in the template's list
            asked = int(re.search(r'(?:region|Mark )(\d)\?$', text).group(1))
            assert case['listed'][asked - 1] == case['object']
            assert text.startswith('There are some ')
        for index, prompt in zip(case['listed'], case['prompts']):
            obj = scene.objects[index]
            if case['kind'] == 'point':
                assert obj.mask[prompt[1], prompt[0]]
            elif case['kind'] == 'box':
                x, y, w, h = obj.bbox
                assert prompt == (x, y, x + w, y + h)
            else:
                assert (prompt == obj.mask).all()


def test_summary_scores_per_kind_and_counts_distinct_answers(qa):
    cases = []
    for slot, (truth, said) in enumerate((('red', 'red'), ('blue', 'red'))):
        for kind in qa.PROMPT_KINDS:
            cases.append(dict(image=0, kind=kind, attribute='colour', wording='inline', slot=slot,
                              truth=truth, said=said, correct=truth == said))
    metrics = qa.summary(cases)
    assert metrics['by_kind']['box'] == {'colour': 0.5, 'shape': None}
    assert metrics['distinct'] == 0.0 and metrics['num_distinct_cases'] == 3
    cases[-1].update(said='blue', correct=True)
    metrics = qa.summary(cases)
    assert metrics['by_kind']['mask']['colour'] == 1.0 and round(metrics['distinct'], 3) == 0.333
    assert '  box            0.500      -' in qa.format_table(metrics)


def test_one_prompt_tables_leave_out_the_two_prompt_questions(qa):
    """``by_kind_one_prompt`` and ``distinct_one_prompt`` count the inline and one-prompt template
    questions only; ``by_kind`` and ``distinct`` count every wording."""
    cases = []
    for wording, said in (('inline', ('red', 'blue')), ('template', ('red', 'blue')),
                          ('template_two', ('blue', 'blue'))):
        for slot, truth in enumerate(('red', 'blue')):
            cases.append(dict(image=0, kind='point', attribute='colour', wording=wording,
                              slot=slot, truth=truth, said=said[slot],
                              correct=truth == said[slot]))
    metrics = qa.summary(cases)
    assert metrics['by_kind']['point']['colour'] == round(5 / 6, 4)
    assert metrics['by_kind_one_prompt']['point'] == {'colour': 1.0, 'shape': None}
    assert metrics['by_kind_one_prompt']['box'] == {'colour': None, 'shape': None}
    assert (metrics['distinct'], metrics['num_distinct_cases']) == (round(2 / 3, 4), 3)
    assert (metrics['distinct_one_prompt'], metrics['num_distinct_cases_one_prompt']) == (1.0, 2)
    table = qa.format_table(metrics)
    assert '(one prompt per question)\n  point          1.000      -' in table
    assert 'one prompt per question: 1.000 (2 pairs)' in table


def test_the_table_prints_a_dash_without_differing_pairs(qa):
    case = dict(image=0, kind='box', attribute='shape', wording='inline', slot=0, truth='star',
                said='star', correct=True)
    metrics = qa.summary([case])
    assert metrics['distinct'] is None and metrics['distinct_one_prompt'] is None
    assert 'different answers: - (0 pairs); one prompt per question: - (0 pairs)' in \
        qa.format_table(metrics)


def test_the_table_reads_metrics_written_before_the_one_prompt_figures(qa):
    """A run's metrics.json from before ``by_kind_one_prompt`` (benchmark.py prints it)."""
    case = dict(image=0, kind='mask', attribute='colour', wording='inline', slot=0, truth='red',
                said='red', correct=True)
    metrics = qa.summary([case])
    for key in ('by_kind_one_prompt', 'distinct_one_prompt', 'num_distinct_cases_one_prompt'):
        del metrics[key]
    table = qa.format_table(metrics)
    assert 'one prompt per question' not in table
    assert '  mask           1.000      -' in table
