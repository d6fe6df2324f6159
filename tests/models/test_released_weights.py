"""Loading released-format OMG-LLaVA checkpoints (spec §5.3, §7): flat ``torch.save`` dicts of what
the save filter keeps, written here from tiny fixture-sized models with random values so that copies
can be checked."""
from __future__ import annotations

import pytest
import torch

from omg_llava.checkpoint import CheckpointError, CheckpointMismatchError
from omg_llava.models import OMGLLaVA
from omg_llava.models import released_weights
from omg_llava.models.released_weights import PRETRAIN_VOCAB_KEYS, load_released_checkpoint
from omg_llava.verification.reference_fixture import (build_llm, build_model, build_visual_encoder,
                                                      load_fixture)

PROJECTOR_KEYS = 11 + 4  # projector.model.* and projector_text2vision.model.* at depth 2
LORA_TENSORS = 2 * (5 * 2 + 1)  # A and B of wqkv, wo, w1, w2, w3 in 2 layers, and of the LM head


@pytest.fixture(scope='module')
def config(reference_fixture_path):
    return load_fixture(reference_fixture_path)[1]['config']


def special_ids(config) -> dict[str, int]:
    ids = config['special_tokens']
    return dict(seg=ids['[SEG]'], phrase_start=ids['<p>'], phrase_end=ids['</p>'],
                region=ids['<region>'], mark=ids['<mark>'])


def pretrain_model(config) -> OMGLLaVA:
    return OMGLLaVA(llm=build_llm(config), visual_encoder=build_visual_encoder(config),
                    stage='pretrain',
                    llm_lora=None, projector_depth=config['projector']['depth'],
                    use_activation_checkpointing=False, special_token_ids=special_ids(config))


def full_llm_model(config, stage: str = 'finetune') -> OMGLLaVA:
    """A model that trains (and saves) its whole LLM, as the tiny synthetic recipe's pretrain and
    finetune."""
    return OMGLLaVA(llm=build_llm(config), visual_encoder=build_visual_encoder(config), stage=stage,
                    llm_lora=None, freeze_llm=False, projector_depth=config['projector']['depth'],
                    use_activation_checkpointing=False, special_token_ids=special_ids(config))


def lora_model_with_decoder_copy(config) -> OMGLLaVA:
    model = build_model(config)
    model.visual_encoder = build_visual_encoder(config, with_llm_decoder_copy=True)
    return model


def random_checkpoint(model: OMGLLaVA, path, seed: int = 0,
                      extra: dict | None = None) -> dict[str, torch.Tensor]:
    """Write ``model.state_dict()`` (the save filter) with random values, as the released files are
    written."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    state.update(extra or {})
    torch.save(state, path)
    return state


def assert_loaded(model: OMGLLaVA, state: dict[str, torch.Tensor]) -> None:
    own = torch.nn.Module.state_dict(model)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_pretrain_file_into_pretrain_model(config, tmp_path):
    state = random_checkpoint(pretrain_model(config), tmp_path / 'pretrain.pth')
    assert len(state) == 2 + PROJECTOR_KEYS  # the 17 tensors of omg_llava_7b_pretrain_8gpus.pth
    model = pretrain_model(config)
    report = load_released_checkpoint(model, tmp_path / 'pretrain.pth')
    assert sorted(report.loaded) == sorted(state) and len(report.loaded) == 17
    assert report.ok and not report.ignored
    assert_loaded(model, state)


def test_finetune_file_into_lora_model(config, tmp_path):
    state = random_checkpoint(build_model(config), tmp_path / 'finetune.pth')
    assert len(state) == 2 + LORA_TENSORS + PROJECTOR_KEYS == 39
    model = build_model(config)
    report = load_released_checkpoint(model, tmp_path / 'finetune.pth')
    assert sorted(report.loaded) == sorted(state) and report.ok
    assert_loaded(model, state)


def test_finetune_file_with_unknown_keys_warns_and_lists_them(config, tmp_path, monkeypatch):
    extra = {'llm.base_model.model.some_unknown.weight': torch.zeros(3, 2),
             'projector.model.extra_head.bias': torch.zeros(5)}
    state = random_checkpoint(build_model(config), tmp_path / 'finetune_449.pth', extra=extra)
    logged = []
    monkeypatch.setattr(released_weights, 'print_log',
                        lambda msg, **kw: logged.append((msg, kw.get('level'))))
    model = build_model(config)
    report = load_released_checkpoint(model, tmp_path / 'finetune_449.pth')
    assert report.unexpected == sorted(extra)
    assert sorted(report.loaded) == sorted(set(state) - set(extra))
    assert_loaded(model, {k: v for k, v in state.items() if k not in extra})
    warnings = [msg for msg, level in logged if level == 30 and 'skipped' in msg]
    assert len(warnings) == 1 and all(name in warnings[0] for name in extra)


def test_pretrain_file_into_lora_model_ignores_the_vocabulary(config, tmp_path):
    state = random_checkpoint(pretrain_model(config), tmp_path / 'pretrain.pth')
    model = build_model(config)
    embed_before = model.llm.get_input_embeddings().weight.detach().clone()
    report = load_released_checkpoint(model, tmp_path / 'pretrain.pth')
    assert report.ignored == list(PRETRAIN_VOCAB_KEYS)
    assert sorted(report.loaded) == sorted(k for k in state if k.startswith('projector'))
    assert len(report.loaded) == PROJECTOR_KEYS
    assert_loaded(model, {k: v for k, v in state.items() if k.startswith('projector')})
    assert torch.equal(model.llm.get_input_embeddings().weight, embed_before)


def test_finetune_file_missing_a_lora_tensor(config, tmp_path):
    state = random_checkpoint(build_model(config), tmp_path / 'full.pth')
    key = 'llm.base_model.model.model.layers.1.feed_forward.w2.lora_B.default.weight'
    torch.save({k: v for k, v in state.items() if k != key}, tmp_path / 'missing.pth')
    with pytest.raises(CheckpointMismatchError, match=r'missing from the file \(1\)') as err:
        load_released_checkpoint(build_model(config), tmp_path / 'missing.pth')
    assert key in str(err.value)


def test_misshaped_tensor_names_both_shapes(config, tmp_path):
    key = 'llm.base_model.model.model.layers.0.attention.wqkv.lora_A.default.weight'
    random_checkpoint(build_model(config), tmp_path / 'bad.pth', extra={key: torch.zeros(8, 64)})
    model = build_model(config)
    before = torch.nn.Module.state_dict(model)['projector.model.seperate_embed.weight'].clone()
    with pytest.raises(CheckpointMismatchError, match=rf'{key}: \[8, 64\] vs \[16, 64\]'):
        load_released_checkpoint(model, tmp_path / 'bad.pth')
    assert torch.equal(torch.nn.Module.state_dict(model)['projector.model.seperate_embed.weight'],
                       before)


def test_truncated_file(config, tmp_path):
    random_checkpoint(build_model(config), tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_released_checkpoint(build_model(config), tmp_path / 'cut.pth')


def test_omg_seg_file_given_as_model_checkpoint_is_named(config, tmp_path):
    head = build_visual_encoder(config).panoptic_head
    torch.save({'state_dict': {f'panoptic_head.{k}': v for k, v in head.state_dict().items()}},
               tmp_path / 'omg_seg_convl.pth')
    with pytest.raises(CheckpointMismatchError, match=r'OMG-Seg checkpoint \(omg_seg_convl\.pth\)'):
        load_released_checkpoint(build_model(config), tmp_path / 'omg_seg_convl.pth')


def test_task_finetune_file_needs_the_decoder_copies(config, tmp_path):
    state = random_checkpoint(lora_model_with_decoder_copy(config),
                              tmp_path / 'finetuned_refseg.pth')
    copies = [k for k in state
              if k.startswith('visual_encoder.panoptic_head.transformer_decoder_llm.')]
    assert copies and any(k.startswith('visual_encoder.panoptic_head.mask_embed_llm.')
                          for k in state)
    with pytest.raises(CheckpointMismatchError, match='task config'):
        load_released_checkpoint(build_model(config), tmp_path / 'finetuned_refseg.pth')
    model = lora_model_with_decoder_copy(config)
    report = load_released_checkpoint(model, tmp_path / 'finetuned_refseg.pth')
    assert report.ok and sorted(report.loaded) == sorted(state)
    assert_loaded(model, state)


def test_general_finetune_file_starts_a_task_finetune(config, tmp_path):
    """The task configs' pretrained_pth is the general finetune file: the decoder copies keep their
    init."""
    state = random_checkpoint(build_model(config), tmp_path / 'finetune.pth')
    model = lora_model_with_decoder_copy(config)
    head = model.visual_encoder.panoptic_head
    head.copy_decoder_for_llm()
    before = {k: v.clone() for k, v in head.mask_embed_llm.state_dict().items()}
    report = load_released_checkpoint(model, tmp_path / 'finetune.pth')
    assert report.ok and sorted(report.loaded) == sorted(state)
    assert all(torch.equal(v, head.mask_embed_llm.state_dict()[k]) for k, v in before.items())
    assert_loaded(model, state)


class _Opaque:
    """Any non-tensor Python object: the restricted unpickler refuses it."""


def test_python_objects_are_refused_unless_trusted(config, tmp_path):
    state = random_checkpoint(pretrain_model(config), tmp_path / 'plain.pth')
    torch.save(dict(state, meta=_Opaque()), tmp_path / 'pickled.pth')
    with pytest.raises(CheckpointError, match='--trust-checkpoint'):
        load_released_checkpoint(pretrain_model(config), tmp_path / 'pickled.pth')
    # trusted, but still not a flat state dict
    with pytest.raises(CheckpointError, match='not tensors'):
        load_released_checkpoint(pretrain_model(config), tmp_path / 'pickled.pth',
                                 weights_only=False)


def test_model_with_a_trained_llm_saves_and_loads_all_of_it(config, tmp_path):
    model = full_llm_model(config)
    llm_keys = [k for k in torch.nn.Module.state_dict(model) if k.startswith('llm.')]
    state = random_checkpoint(model, tmp_path / 'full.pth')
    assert len(llm_keys) > 2 and set(state) == set(llm_keys) | {k for k in state
                                                                if k.startswith('projector')}
    assert len(state) == len(llm_keys) + PROJECTOR_KEYS
    fresh = full_llm_model(config)
    assert load_released_checkpoint(fresh, tmp_path / 'full.pth').ok
    assert_loaded(fresh, state)
    layer_key = next(k for k in llm_keys if '.layers.1.' in k)
    del state[layer_key]
    torch.save(state, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError, match=layer_key.replace('.', r'\.')):
        load_released_checkpoint(full_llm_model(config), tmp_path / 'partial.pth')


def test_pretrain_file_into_a_model_with_a_trained_llm_keeps_its_built_llm(config, tmp_path):
    """A pretrain stage that froze the LLM (the 7B recipe; the file holds projectors and vocabulary
    only) before a finetune that trains the whole LLM: the finetune starts from the LLM it was built
    with."""
    state = random_checkpoint(pretrain_model(config), tmp_path / 'pretrain.pth')
    model = full_llm_model(config)
    layer_key = next(k for k in torch.nn.Module.state_dict(model) if '.layers.0.' in k)
    built = torch.nn.Module.state_dict(model)[layer_key].clone()
    assert load_released_checkpoint(model, tmp_path / 'pretrain.pth').ok
    assert_loaded(model, state)  # projectors and the two vocabulary tensors from the file
    assert torch.equal(torch.nn.Module.state_dict(model)[layer_key], built)


def test_pretrain_stage_with_a_trained_llm_hands_its_llm_to_the_finetune(config, tmp_path):
    """The tiny synthetic recipe: its pretrain stage trains the LLM too (it learns to read the image
    there), so the pretrain file holds the whole LLM and the finetune starts from that LLM, not from
    the one it was built with."""
    pretrain = full_llm_model(config, stage='pretrain')
    state = random_checkpoint(pretrain, tmp_path / 'pretrain.pth')
    llm_keys = [k for k in torch.nn.Module.state_dict(pretrain) if k.startswith('llm.')]
    assert set(llm_keys) <= set(state) and any('.layers.1.' in k for k in state)
    finetune = full_llm_model(config)
    assert load_released_checkpoint(finetune, tmp_path / 'pretrain.pth').ok
    assert_loaded(finetune, state)  # every LLM layer comes from the file
