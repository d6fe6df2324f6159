"""Per-kind referring figures (projects/tiny_omg_llava/referring_figures.py): sums, shares and clear
refusals. The pre-stage evaluation itself runs on the CI short run
(tests/e2e/test_tiny_synthetic_training.py)."""
from __future__ import annotations

import pytest

from conftest import load_project_module


@pytest.fixture(scope='module')
def figures_module():
    return load_project_module('referring_figures')


def test_kind_figures_sum_intersections_and_unions_per_kind(figures_module):
    records = [('the circle', 8, 10), ('the red circle', 0, 10),
               ('the star left of the red square', 3, 10), ('the largest shape', 6, 10)]
    figures = figures_module.kind_figures(records)
    # grammar order, absent kinds left out
    assert list(figures) == ['attribute', 'superlative', 'relation', 'all']
    assert figures['attribute'] == dict(cIoU=0.4, right_object=0.5, expressions=2)
    assert figures['relation'] == dict(cIoU=0.3, right_object=0.0, expressions=1)
    assert figures['superlative']['right_object'] == 1.0
    assert figures['all'] == dict(cIoU=17 / 40, right_object=0.5, expressions=4)


def test_repeated_expression_share_compares_the_answer_phrase(figures_module):
    rows = [dict(sentence='the circle', answer='<p> The circle </p> [SEG] .'),
            dict(sentence='the square', answer='<p> The star </p> [SEG] .'),  # a swapped kind word
            dict(sentence='the star', answer='Sure, [SEG] .')]  # no phrase at all
    assert figures_module.repeated_expression_share(rows) == pytest.approx(1 / 3)
    assert figures_module.repeated_expression_share([]) == 0


def test_a_pre_stage_without_referring_encoder_is_refused_by_name(figures_module, tmp_path):
    (tmp_path / 'omg_seg_tiny_synthetic.py').write_text('model = None\n')
    with pytest.raises(FileNotFoundError, match='referring_queries.pth'):
        figures_module.load_pre_stage(str(tmp_path))
