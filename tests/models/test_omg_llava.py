"""The OMG-LLaVA model on the tiny config: loss / predict / tensor modes, trainable parts, save
filter and the count-mismatch rules of spec §6, on real photos (skimage) with a real (committed)
sentencepiece tokenizer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.config import Config
from skimage import data

from omg_llava.inference.image_io import preprocess_image
from omg_llava.models.multimodal_inputs import (PromptCountError, image_start_positions,
                                                object_token_positions)
from omg_llava.models.omg_llava import GenerationOutput, OMGLLaVA, PromptTooLongError
from omg_llava.registry import build_component
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from omg_llava.utils.conversation import Turn, encode_conversation

from conftest import TINY_CONFIG

IMAGE_SIZE = 256


def build_tiny(**overrides) -> OMGLLaVA:
    cfg = Config.fromfile(str(TINY_CONFIG))
    model_cfg = {k: v for k, v in cfg.model.items()}
    model_cfg.update(overrides)
    torch.manual_seed(0)
    model = build_component(model_cfg)
    dim, k1, syn = model.visual_encoder.panoptic_head.cls_embed.shape
    emb = torch.nn.functional.normalize(torch.randn(k1 - 1, syn, dim), dim=-1)
    model.visual_encoder.panoptic_head.set_class_embeddings(emb)
    return model


@pytest.fixture(scope='module')
def model() -> OMGLLaVA:
    return build_tiny()


def photos():
    from PIL import Image
    return [Image.fromarray(data.chelsea()), Image.fromarray(data.astronaut())]


def batch(model: OMGLLaVA, conversations, masks_per_sample, regions=None, points=None):
    """Collate like the reference: right padding with 0, labels −100 on padding."""
    tok = model.tokenizer
    encoded = [encode_conversation(tok, turns) for turns in conversations]
    L = max(len(e.input_ids) for e in encoded)
    ids = torch.zeros((len(encoded), L), dtype=torch.long)
    labels = torch.full((len(encoded), L), IGNORE_INDEX)
    mask = torch.zeros((len(encoded), L), dtype=torch.bool)
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        mask[b, :n] = True
    pixels = torch.stack([preprocess_image(p, IMAGE_SIZE)[0] for p in photos()[:len(encoded)]])
    return dict(pixel_values=pixels, input_ids=ids, labels=labels, attention_mask=mask,
                masks=masks_per_sample, regions=regions, points=points)


def box_mask(y0, y1, x0, x1):
    m = torch.zeros(IMAGE_SIZE, IMAGE_SIZE)
    m[y0:y1, x0:x1] = 1
    return m


def seg_batch(model):
    conversations = [
        [Turn('Please segment the cat in this image.', 'It is <p> cat </p> [SEG].')],
        [Turn('There are some regions: region1 <region>. What is at <mark>?',
              '<p> A person </p> [SEG] next to <p> a rocket </p> [SEG].')],
    ]
    masks = [box_mask(40, 200, 30, 220)[None],
             torch.stack([box_mask(20, 250, 60, 190), box_mask(0, 120, 0, 60)])]
    return batch(model, conversations, masks, regions=box_mask(50, 150, 50, 150)[None],
                 points=torch.tensor([[128.0, 64.0]]))


def test_loss_mode_trains_exactly_the_saved_parts(model):
    data_batch = seg_batch(model)
    model.train()
    losses = model(data_batch, mode='loss')
    assert set(losses) == {'loss_lm', 'loss_dice', 'loss_mask'}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None
                 and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # what trains is what a checkpoint holds (spec §5.3)
    assert trainable == set(model.state_dict())
    assert with_grad <= trainable
    # the [SEG] path is trained
    assert any(n.startswith('projector_text2vision.') for n in with_grad)
    assert any('lora_B' in n for n in with_grad) and any(n.startswith('projector.')
                                                         for n in with_grad)
    assert not any(n.startswith('visual_encoder.') for n in trainable)
    model.eval()


def test_pretrain_stage_adds_the_alignment_loss_and_trains_only_projectors():
    model = build_tiny(stage='pretrain', llm_lora=None)
    data_batch = batch(model, [[Turn('Describe the image.', 'A cat sitting.')]], [None])
    losses = model(data_batch, mode='loss')
    assert set(losses) == {'loss_lm', 'loss_proj'} and losses['loss_proj'] > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('projector.', 'projector_text2vision.'))
                             for n in trainable)
    assert sorted(model.state_dict()) == sorted(trainable | {'llm.model.tok_embeddings.weight',
                                                             'llm.output.weight'})


def test_object_token_positions_point_at_the_projected_queries_in_the_spliced_sequence(model):
    data_batch = seg_batch(model)
    ids, mask = data_batch['input_ids'], data_batch['attention_mask']
    with torch.no_grad():
        images = model.encode_images(data_batch['pixel_values'])
        regions, marks, _ = model._batch_prompts(data_batch, strict=True)
        spliced = model.splice(ids, mask, None, images, regions, marks)
    enc = images.encoder_output
    starts = image_start_positions(ids, mask)
    valid = (~enc.query_blocked).any(-1)  # (B, Q)
    for b in range(len(ids)):
        queries = valid[b].nonzero()[:, 0]
        n = len(queries)
        cols = object_token_positions(starts[b].expand(n), enc.pixel_tokens.shape[1],
                                      valid[b].expand(n, -1), queries)
        with torch.no_grad():
            expected = model.projector.project_queries(enc.query_tokens[b, queries])
        torch.testing.assert_close(spliced.inputs_embeds[b, cols], expected)
        assert torch.equal(spliced.inputs_embeds[b, starts[b]], images.visual_sequences[b][0])


def test_seg_count_mismatch_drops_only_the_mask_losses(model):
    data_batch = seg_batch(model)
    # sample 0 has a [SEG] but no mask (e.g. truncation)
    data_batch['masks'] = [None, data_batch['masks'][1]]
    losses = model(data_batch, mode='loss')
    assert losses['loss_lm'] > 0
    data_batch['masks'] = [None, None]
    before = model.loss_info.seg_mismatch_samples
    losses = model(data_batch, mode='loss')
    assert losses['loss_dice'] == 0 and losses['loss_mask'] == 0 and losses['loss_lm'] > 0
    assert model.loss_info.seg_mismatch_samples == before + 2


def test_prompt_count_mismatch_zeroes_the_lm_loss(model):
    data_batch = seg_batch(model)
    data_batch['points'] = None  # the text holds a <mark> but no point was given
    before = model.loss_info.prompt_mismatch_batches
    losses = model(data_batch, mode='loss')
    assert losses['loss_lm'] == 0 and model.loss_info.prompt_mismatch_batches == before + 1
    with pytest.raises(PromptCountError, match='<mark>'):
        model(data_batch, mode='predict')  # inference refuses instead


def test_tensor_and_predict_modes(model):
    data_batch = seg_batch(model)
    out = model(data_batch, mode='tensor')
    assert out.logits.shape[-1] == model.token_ids.num_embeddings
    assert out.hidden_states[-1].shape[-1] == model.llm.config.hidden_size
    prompt = batch(model, [[Turn('Please segment the cat in this image.')]], [None])
    results = model(prompt, mode='predict', max_new_tokens=4)
    assert len(results) == 1 and isinstance(results[0], GenerationOutput)
    assert 0 < len(results[0].token_ids) <= 4


def test_batched_generation_equals_one_by_one(model):
    questions = [[Turn('Please segment the cat in this image.')],
                 [Turn('Describe the picture in detail, please.')]]
    # left-padded inside
    both = model(batch(model, questions, [None, None]), mode='predict', max_new_tokens=6)
    alone = [model.generate(*_single_with_photo(model, q, i), max_new_tokens=6)[0]
             for i, q in enumerate(questions)]
    assert torch.equal(both[0].token_ids, alone[0].token_ids)
    assert torch.equal(both[1].token_ids, alone[1].token_ids)


def _single_with_photo(model, turns, photo_index):
    tok = model.tokenizer
    ids = torch.tensor([encode_conversation(tok, turns).input_ids])
    pixels = preprocess_image(photos()[photo_index], IMAGE_SIZE)[0][None]
    return ids, None, model.encode_images(pixels)


def test_generated_seg_tokens_each_get_a_mask(model):
    ids, _, images = _single_with_photo(model, [Turn('Please segment the cat in this image.')], 0)
    out = model.generate(ids, images=images, max_new_tokens=3,
                         sequence_bias={(model.token_ids.seg, ): 100.0})[0]
    assert out.token_ids.tolist() == [model.token_ids.seg] * 3
    assert out.seg_positions.tolist() == [0, 1, 2]
    assert out.mask_logits.shape == (3, IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    # each [SEG] state differs (causal context grows), so the masks differ too
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[1])


def test_image_placeholder_without_an_image_is_refused(model):
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6]])
    with pytest.raises(PromptCountError, match='no image was given'):
        model.generate(ids, images=None, max_new_tokens=2)


def test_text_only_question_needs_no_image(model):
    ids = torch.tensor([encode_conversation(model.tokenizer, [Turn('Hello there!')],
                                            with_image=False).input_ids])
    assert IMAGE_TOKEN_INDEX not in ids
    out = model.generate(ids, images=None, max_new_tokens=3)[0]
    assert len(out.token_ids) > 0 and out.mask_logits.numel() == 0


def test_prompt_longer_than_max_length_is_refused():
    model = build_tiny(max_length=300)  # 256² input → 16 + 1 + n visual tokens
    ids, _, images = _single_with_photo(model, [Turn('word ' * 400)], 0)
    with pytest.raises(PromptTooLongError, match='over the model limit of 300'):
        model.generate(ids, images=images, max_new_tokens=2)


def test_state_dict_is_the_reference_filter(model):
    keys = list(model.state_dict())
    assert 'llm.base_model.model.model.tok_embeddings.weight' in keys
    assert 'llm.base_model.model.output.base_layer.weight' in keys
    assert not any(k.startswith('visual_encoder.') or 'base_layer' in k and 'output' not in k
                   for k in keys)
    # 2 layers × 5 linears + LM head, A and B
    assert sum('lora_' in k for k in keys) == 2 * (2 * 5 + 1)
    assert sum(k.startswith('projector') for k in keys) == 15
    # the full module still has everything (load_into and exports read it)
    assert len(torch.nn.Module.state_dict(model)) > len(keys)


def test_special_tokens_follow_the_tokenizer_vocabulary(model):
    ids = model.token_ids
    base = model.tokenizer.vocab_size
    assert (ids.seg, ids.phrase_start, ids.phrase_end, ids.region, ids.mark) == tuple(
        range(base, base + 5)
    )
    # <mark> has no row (spec §5.2)
    assert model.llm.get_input_embeddings().num_embeddings == base + 4
    assert (
        model.tokenizer.encode('<p> cat </p> [SEG]', add_special_tokens=False)[0]
        == ids.phrase_start
    )
    np.testing.assert_array_equal(
        model.stop_token_ids,
        [model.tokenizer.eos_token_id, model.tokenizer.convert_tokens_to_ids('<|im_end|>')],
    )


def test_xtuner_builder_builds_the_model():
    """xtuner configs hand the model dict (with object types) to xtuner's BUILDER."""
    from xtuner.registry import BUILDER
    cfg = Config.fromfile(str(TINY_CONFIG))
    model = BUILDER.build(cfg.model)
    assert isinstance(model, OMGLLaVA) and model.has_lora


def test_mmengine_train_step_overfits_one_batch():
    """The mmengine training API (data preprocessor → loss → optimizer) drives the model: loss
    falls."""
    from mmengine.optim import OptimWrapper
    model = build_tiny()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = OptimWrapper(torch.optim.AdamW(params, lr=1e-2))
    data_batch = {'data': seg_batch(model), 'data_samples': None}  # the xtuner collate layout
    model.train()
    # sum of loss_*
    history = [float(model.train_step(data_batch, optim)['loss'].detach()) for _ in range(12)]
    assert history[-1] < 0.6 * history[0], history
    model.eval()
    assert len(model.val_step(data_batch)) == 2  # predict mode through the mmengine API
