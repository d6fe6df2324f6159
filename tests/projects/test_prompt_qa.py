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
