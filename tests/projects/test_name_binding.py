"""Names bound to values: the text-only binding rows (binding_texts.py) and the binding part of the
language stage with its check (name_binding.py)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import load_project_module
from omg_llava.datasets.llava import LLaVADataset

LIST = re.compile(r'^There are some (regions|marks): (.*)\.\n')


@pytest.fixture(scope='module')
def texts():
    load_project_module('synthetic_shapes')  # puts the project folder on sys.path
    import binding_texts
    return binding_texts


def parse(row: dict) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A row's ``{name: value}`` list and its ``(asked name, answer)`` turns."""
    messages = row['conversations']
    match = LIST.match(messages[0]['value'])
    entries = dict(re.fullmatch(r'(region\d|Mark \d) (\w+)', e).groups()
                   for e in match.group(2).split(', '))
    asked = []
    for question, answer in zip(messages[0::2], messages[1::2]):
        assert (question['from'], answer['from']) == ('human', 'gpt')
        name = re.search(r'(region\d|Mark \d)', LIST.sub('', question['value'])).group(1)
        asked.append((name, answer['value']))
    return entries, asked


def test_each_answer_gives_the_value_listed_after_the_asked_name(texts):
    rows = texts.binding_rows(7, 300, 0.3, False, 2)
    names = {2: 0, 3: 0}
    for row in rows:
        entries, asked = parse(row)
        names[len(entries)] += 1
        assert len(set(entries.values())) == len(entries)  # the answer names one entry
        assert list(entries) in (['region1', 'region2', 'region3'][:len(entries)],
                                 ['Mark 1', 'Mark 2', 'Mark 3'][:len(entries)])
        assert len({name for name, _ in asked}) == len(asked) <= 2
        for name, answer in asked:
            value = entries[name]
            assert answer == (f'It is {value}.' if value in texts.VALUES['colour'][0]
                              else f'It is a {value}.')
    assert 60 < names[3] < 130  # 30% of 300


def test_the_binding_parts_rows_ask_two_names_in_the_first_wording(texts):
    for row in texts.binding_rows(0, 100, 0.0, True, 1):
        entries, asked = parse(row)
        question = LIST.sub('', row['conversations'][0]['value'])
        assert len(entries) == 2 and len(asked) == 1
        assert question in {f'What colour is {asked[0][0]}?', f'What shape is {asked[0][0]}?'}


def test_the_generator_writes_the_binding_files_that_llava_dataset_reads(tmp_path):
    gen = load_project_module('synthetic_shapes')
    counts = gen.write_dataset(str(tmp_path), 2, 1, num_test=1)
    tokenizer = _tokenizer()
    for name, spec in load_project_module('binding_texts').BINDING_FILES.items():
        path = tmp_path / 'text_binding' / f'{name}.json'
        rows = spec.get('rows') or round(2 * spec['rows_per_image'])
        assert counts[f'binding_{name}'] == rows == len(json.loads(path.read_text()))
        dataset = LLaVADataset(str(path), image_folder='', tokenizer=tokenizer, image_size=128,
                               max_length=512)
        item = dataset[0]
        assert item['pixel_values'] is None and (item['labels'] != -100).sum() > 3


def _tokenizer():
    from omg_llava.assets import TINY_TOKENIZER_DIR
    from omg_llava.models.llm import InternLM2Tokenizer
    from omg_llava.models.special_tokens import add_special_tokens
    tokenizer = InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    add_special_tokens(tokenizer)
    return tokenizer


def test_the_check_scales_only_the_listed_values():
    name_binding = load_project_module('name_binding')
    tokenizer = _tokenizer()
    ids = tokenizer.encode('There are some regions: region1 blue, region2 red.\nWhat colour is',
                           add_special_tokens=False)
    values = [tokenizer.encode(w, add_special_tokens=False) for w in ('blue', 'red')]
    found = name_binding._value_positions(ids, len(ids), values)
    assert sorted(tokenizer.decode([ids[p]]).strip() for p in found) == ['blue', 'red']
    assert len(found) == sum(len(v) for v in values)


def test_an_untrained_llm_binds_at_chance():
    name_binding = load_project_module('name_binding')
    model, _ = name_binding.build_language_model(name_binding.LANGUAGE_CONFIG, seed=0)
    checks = {names: name_binding.binding_accuracy(model.llm.eval(), model.tokenizer, names,
                                                   questions=60)
              for names in (2, 3)}
    assert 0.25 < checks[2] < 0.75 and 0.1 < checks[3] < 0.6
    scaled = name_binding.binding_accuracy(model.llm, model.tokenizer, 2, 300.0,
                                           form='region_colour', questions=60)
    assert 0.25 < scaled < 0.75


def test_the_binding_part_lowers_its_loss_and_writes_a_loadable_folder(tmp_path):
    gen = load_project_module('synthetic_shapes')
    gen.write_dataset(str(tmp_path / 'data'), 1, 1, num_test=1)
    name_binding = load_project_module('name_binding')
    result = name_binding.main(['--data-root', str(tmp_path / 'data'), '--out',
                                str(tmp_path / 'out'), '--iters', '100', '50', '--tries', '1',
                                '--parallel', '1'])
    assert [(t['part'], t['seed']) for t in result['tries']] == [(1, 0), (2, 0)]
    losses = result['tries'][0]['losses_every_50']
    assert len(losses) == 2 and losses[1] < losses[0]
    assert len(result['tries'][1]['losses_every_50']) == 1
    from omg_llava.models.llm import InternLM2ForCausalLM
    llm = InternLM2ForCausalLM.from_pretrained(result['llm'])
    from omg_llava.models.special_tokens import add_special_tokens
    from omg_llava.assets import TINY_TOKENIZER_DIR
    from omg_llava.models.llm import InternLM2Tokenizer
    sized = add_special_tokens(InternLM2Tokenizer.from_pretrained(TINY_TOKENIZER_DIR))
    assert llm.get_input_embeddings().num_embeddings == sized.num_embeddings  # no resize later
    recorded = json.loads((tmp_path / 'out' / 'binding_checks.json').read_text())
    assert recorded['chosen_seeds'] == [0, 0]
    assert np.isfinite(result['tries'][0]['plain'])
