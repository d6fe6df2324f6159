"""Auxiliary losses (omg_llava/models/auxiliary_losses/): the object-token hint and the text-only LM
pass alone and inside the tiny model, how a config composes them, and the tiny synthetic recipe's
losses against values recorded before they left ``OMGLLaVA`` (issue 27)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omg_llava.models.auxiliary_losses import AuxiliaryLoss, ObjectTokenHintLoss, TextOnlyLMLoss
from omg_llava.models.auxiliary_losses.object_token_hint import (matching_object_tokens,
                                                                 object_token_hint_loss)
from omg_llava.registry import MODELS
from omg_llava.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from omg_llava.utils.conversation import Turn

from conftest import DATA_DIR
from test_omg_llava import IMAGE_SIZE, batch, box_mask, build_tiny, seg_batch

RECORDED_LOSSES = DATA_DIR / 'tiny_recipe_losses.json'
RECORDED_BATCH = DATA_DIR / 'tiny_recipe_batch.npz'


def test_matching_object_tokens_picks_the_best_valid_query():
    gt = torch.zeros(2, 32, 32)
    gt[0, :16, :16] = 1  # top-left quarter
    gt[1, 16:, 16:] = 1  # bottom-right quarter
    logits = torch.full((2, 3, 8, 8), -5.0)  # two images with the same query masks
    logits[:, 0, :4, :4] = 5.0  # query 0: top-left
    logits[:, 1, :4, :] = 5.0  # query 1: top half (IoU 0.5 with top-left)
    logits[:, 2, 4:, 4:] = 5.0  # query 2: bottom-right
    valid = torch.tensor([[True, True, True], [True, True, False]])
    image_idxs = torch.tensor([0, 1])
    idxs, found = matching_object_tokens(gt, logits, valid, image_idxs)
    assert idxs[0] == 0 and found[0]
    assert not found[1]  # its only match (query 2) is not a visual token of that image
    valid[0, 0] = False
    idxs, found = matching_object_tokens(gt, logits, valid, image_idxs)
    assert idxs[0] == 1 and found[0]  # the next best, IoU exactly 0.5
    idxs, found = matching_object_tokens(gt, logits, valid, image_idxs, min_iou=0.6)
    assert not found[0]
    idxs, found = matching_object_tokens(gt, logits, valid, torch.tensor([1, 1]))  # both on image 1
    assert idxs[0] == 0 and found.tolist() == [True, False]  # image 1 has no bottom-right token


def test_matching_object_tokens_equals_the_iou_of_each_mask_with_its_images_queries():
    """Several masks per image, in any order: the same choice as upsampling and comparing each mask
    on its own."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 8, 8, generator=generator) * 4
    valid = torch.rand(3, 5, generator=generator) > 0.3
    image_idxs = torch.tensor([2, 0, 2, 2, 1, 0])
    gt = torch.rand(6, 32, 32, generator=generator) > 0.6
    idxs, found = matching_object_tokens(gt, logits, valid, image_idxs, min_iou=0.2)
    for n, b in enumerate(image_idxs.tolist()):
        pred = F.interpolate(logits[b:b + 1], size=(32, 32), mode='bilinear',
                             align_corners=False)[0] > 0
        iou = (pred & gt[n]).flatten(1).sum(-1) / (pred | gt[n]).flatten(1).sum(-1).clamp(min=1)
        iou[~valid[b]] = -1
        assert idxs[n] == iou.argmax() and found[n] == (iou.max() >= 0.2)


def test_object_token_hint_loss_pulls_the_seg_query_to_its_object():
    torch.manual_seed(0)
    tokens = torch.randn(1, 4, 16).expand(2, -1, -1).clone()  # two [SEG], one image, 4 queries
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    targets, found = torch.tensor([2, 0]), torch.tensor([True, False])
    on_target = object_token_hint_loss(tokens[:, 2].clone(), tokens, valid, targets, found)
    off_target = object_token_hint_loss(tokens[:, 1].clone(), tokens, valid, targets, found)
    assert on_target < 0.1 and off_target > 1.0
    none_found = torch.tensor([False, False])
    assert object_token_hint_loss(tokens[:, 1], tokens, valid, targets, none_found) == 0
    query = (0.1 * torch.randn(2, 16)).requires_grad_()
    optimizer = torch.optim.SGD([query], lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        object_token_hint_loss(query, tokens, valid, targets, found).backward()
        optimizer.step()
    assert ((query[0] - tokens[0]) ** 2).sum(-1).argmin() == 2
    assert query.grad[1].abs().sum() == 0  # a [SEG] without a matching token gets no hint


def losses_with_own_object_masks(model, counts=(1, 2)):
    """``seg_batch`` whose ground truth = the own masks of visual-token queries (so every [SEG] has
    a matching object token), and its losses."""
    data_batch = seg_batch(model)
    with torch.no_grad():
        enc = model.encode_images(data_batch['pixel_values']).encoder_output
    own = F.interpolate(enc.mask_logits, size=(IMAGE_SIZE, IMAGE_SIZE), mode='bilinear') > 0
    valid = (~enc.query_blocked).any(-1)
    picks = [valid[b].nonzero()[:, 0] for b in range(len(counts))]
    data_batch['masks'] = [own[b, picks[b][:n]].float() for b, n in enumerate(counts)]
    assert all(len(m) == n and (m.flatten(1).sum(-1) > 0).all()
               for m, n in zip(data_batch['masks'], counts))
    return data_batch, model(data_batch, mode='loss')


def test_object_token_hint_targets_the_query_that_segments_the_ground_truth():
    model = build_tiny(auxiliary_losses=[dict(type=ObjectTokenHintLoss, weight=2.0)])
    data_batch, losses = losses_with_own_object_masks(model)
    assert set(losses) == {'loss_lm', 'loss_dice', 'loss_mask', 'loss_hint'}
    assert losses['loss_hint'] > 0
    model.zero_grad()
    losses['loss_hint'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.projector_text2vision.parameters())
    # the weight times the hint of the decoded [SEG] queries against their object queries
    with torch.no_grad():
        images = model.encode_images(data_batch['pixel_values'])
        regions, marks, _ = model._batch_prompts(data_batch, strict=True)
        spliced = model.splice(data_batch['input_ids'], data_batch['attention_mask'],
                               data_batch['labels'], images, regions, marks)
        seg = spliced.labels == model.token_ids.seg  # (B, T) [SEG] input positions
        queries = model.projector_text2vision(model.run_llm(spliced).hidden_states[-1][seg])
    enc, rows = images.encoder_output, seg.nonzero()[:, 0]
    valid = (~enc.query_blocked).any(-1)
    gt = torch.cat(data_batch['masks'])
    idxs, found = matching_object_tokens(gt, enc.mask_logits, valid, rows)
    assert found.all()  # the ground truths are the queries' own masks
    expected = object_token_hint_loss(queries, enc.query_tokens[rows], valid[rows], idxs, found)
    torch.testing.assert_close(losses['loss_hint'].detach(), 2.0 * expected)
    data_batch['masks'] = [None, None]  # no [SEG] with a mask: the term stays in the graph at zero
    none = model(data_batch, mode='loss')['loss_hint']
    assert none == 0 and none.requires_grad


def test_text_only_lm_loss_is_the_lm_loss_of_the_conversation_without_its_image():
    model = build_tiny(auxiliary_losses=[dict(type='TextOnlyLMLoss', weight=0.5)], freeze_llm=False,
                       llm_lora=None)  # a string type: through the MODELS registry
    turns = [Turn('Please segment the cat in this image.', 'It is <p> cat </p> [SEG].')]
    data_batch = batch(model, [turns], [box_mask(40, 200, 30, 220)[None]])
    losses = model(data_batch, mode='loss')
    assert set(losses) == {'loss_lm', 'loss_lm_text', 'loss_dice', 'loss_mask'}
    keep = data_batch['input_ids'][0] != IMAGE_TOKEN_INDEX
    ids, labels = data_batch['input_ids'][0][keep][None], data_batch['labels'][0][keep][None]
    assert len(ids[0]) == len(data_batch['input_ids'][0]) - 1
    with torch.no_grad():
        logits = model.llm(input_ids=ids).logits
    expected = F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(losses['loss_lm_text'].detach(), 0.5 * expected)
    assert not torch.isclose(losses['loss_lm_text'], 0.5 * losses['loss_lm'])  # the image counts
    model.zero_grad()
    losses['loss_lm_text'].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.projector.parameters())
    assert model.llm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_text_only_rows_limits_the_pass_to_the_first_allowed_rows():
    model = build_tiny(auxiliary_losses=[TextOnlyLMLoss(weight=1.0, rows=1)], freeze_llm=False,
                       llm_lora=None)
    term = model.auxiliary_losses[0]
    data_batch = seg_batch(model)  # two rows: a referring answer, a region / point conversation
    with torch.no_grad():
        first_row_only = model(data_batch, mode='loss')['loss_lm_text']
        term.rows = None
        every_row = model(data_batch, mode='loss')['loss_lm_text']
        keep = data_batch['attention_mask'][0] & (data_batch['input_ids'][0] != IMAGE_TOKEN_INDEX)
        logits = model.llm(input_ids=data_batch['input_ids'][0][keep][None]).logits
    labels = data_batch['labels'][0][keep]
    expected = F.cross_entropy(logits[0, :-1], labels[1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(first_row_only, expected)
    assert not torch.isclose(every_row, first_row_only)
    # rows the data flags out (CombinedDataset(text_only_lm=...)) do not count: the second row alone
    # is the first allowed one, and with none allowed the term is zero but stays in the graph
    term.rows = 1
    with torch.no_grad():
        second_row_only = model(dict(data_batch, text_only_lm=torch.tensor([False, True])),
                                mode='loss')['loss_lm_text']
        term.rows = None
        both = model(dict(data_batch, text_only_lm=torch.tensor([True, True])),
                     mode='loss')['loss_lm_text']
    assert torch.isclose(both, every_row)
    assert not torch.isclose(second_row_only, first_row_only)
    assert not torch.isclose(second_row_only, every_row)
    none_allowed = model(dict(data_batch, text_only_lm=torch.tensor([False, False])),
                         mode='loss')['loss_lm_text']
    assert none_allowed.item() == 0 and none_allowed.requires_grad


class SeenSegQueries(AuxiliaryLoss):
    """A third-party term: the mean square of the decoded [SEG] queries it is handed."""

    name = 'loss_seen'

    def compute(self, model, data, llm_output, seg, prompts):
        self.seen, self.prompts = seg, prompts
        return llm_output.logits.sum() * 0.0 if seg is None else seg.queries.pow(2).mean()


def test_a_term_gets_the_batch_the_llm_output_and_the_supervised_seg_queries():
    model = build_tiny(auxiliary_losses=[SeenSegQueries(weight=3.0),
                                         dict(type=ObjectTokenHintLoss)])
    data_batch, losses = losses_with_own_object_masks(model, counts=(1, 2))
    assert list(losses)[-2:] == ['loss_seen', 'loss_hint']  # in config order, after the model's own
    seen = model.auxiliary_losses[0].seen
    assert seen.queries.shape[0] == 3 and seen.batch_idxs.tolist() == [0, 1, 1]
    assert torch.equal(seen.gt_masks, torch.cat(data_batch['masks']))
    prompts = model.auxiliary_losses[0].prompts  # one row per <region> / <mark> of the batch
    ids = data_batch['input_ids']
    for rows, token_id in ((prompts.region, model.token_ids.region),
                           (prompts.mark, model.token_ids.mark)):
        count = int((ids == token_id).sum())
        assert (rows is None) if count == 0 else rows.shape == (count, model.llm.config.hidden_size)
    assert prompts.matched
    torch.testing.assert_close(losses['loss_seen'], 3.0 * seen.queries.pow(2).mean())
    pretrain = build_tiny(stage='pretrain', llm_lora=None, auxiliary_losses=[SeenSegQueries()])
    caption = batch(pretrain, [[Turn('Describe the image.', 'A cat sitting.')]], [None])
    losses = pretrain(caption, mode='loss')
    assert pretrain.auxiliary_losses[0].seen is None
    assert set(losses) == {'loss_lm', 'loss_proj', 'loss_seen'}


def test_bad_auxiliary_losses_are_refused_with_the_fix():
    with pytest.raises(ValueError, match='leave the term out of auxiliary_losses'):
        ObjectTokenHintLoss(weight=0.0)
    with pytest.raises(ValueError, match='rows must be >= 1'):
        TextOnlyLMLoss(rows=0)
    with pytest.raises(TypeError, match='not an AuxiliaryLoss'):
        build_tiny(auxiliary_losses=[lambda *args: 0.0])
    with pytest.raises(ValueError, match="'loss_hint' is taken"):
        build_tiny(auxiliary_losses=[ObjectTokenHintLoss(), ObjectTokenHintLoss(weight=2.0)])

    class Shadow(SeenSegQueries):
        name = 'loss_dice'

    with pytest.raises(ValueError, match="'loss_dice' is taken"):
        build_tiny(auxiliary_losses=[Shadow()])
    assert MODELS.get('ObjectTokenHintLoss') is ObjectTokenHintLoss
    assert MODELS.get('TextOnlyLMLoss') is TextOnlyLMLoss


RECORDED_CONFIGS = {'finetune': 'configs/tiny/omg_llava_tiny_synthetic_finetune.py',
                    'pretrain': 'configs/tiny/omg_llava_tiny_synthetic_pretrain.py'}


def recorded_batch(stage: str) -> dict:
    """The batch of ``tests/data/tiny_recipe_batch.npz``: the first 8 training rows of a stage's
    config (4 synthetic training images, seed 0), collated and preprocessed; images in 8 bits."""
    arrays = dict(np.load(RECORDED_BATCH))
    mean = torch.tensor(arrays['pixel_mean'], dtype=torch.float32)[:, None, None]
    std = torch.tensor(arrays['pixel_std'], dtype=torch.float32)[:, None, None]
    pixels = torch.from_numpy(arrays['images'][arrays[f'{stage}/image_index']]).float() / 255
    data = {'pixel_values': (pixels - mean) / std}  # (8, 3, 128, 128)
    for key in ('input_ids', 'labels', 'attention_mask', 'text_only_lm', 'regions', 'points'):
        if f'{stage}/{key}' in arrays:
            data[key] = torch.from_numpy(arrays[f'{stage}/{key}'])
    if stage == 'finetune':
        data['masks'] = [torch.from_numpy(arrays[f'finetune/masks/{b}']).float()
                         if f'finetune/masks/{b}' in arrays else None
                         for b in range(len(data['input_ids']))]
    return data


@pytest.mark.parametrize('stage', ['finetune', 'pretrain'])
def test_tiny_recipe_losses_equal_those_recorded_before_the_refactor(stage):
    """A recorded-value regression test, first guarding a refactor (issue 27).

    ``tests/data/tiny_recipe_losses.json`` holds the losses and the gradient norm of the tiny
    synthetic recipe's configs for the committed tiny synthetic model on the batch of
    ``tiny_recipe_batch.npz`` (dumped by the data pipeline of commit f2d9930) with torch seed 0.
    The refactor of issue 27 kept them equal; they were re-recorded when the built-in model was
    retrained with ``PromptOnlyLMLoss`` in its finetune config (issue 26). A deliberate change to
    the recipe's losses, the committed weights or the model's arithmetic re-records the JSON.
    """
    from omg_llava.assets import TINY_SYNTHETIC_PTH
    from omg_llava.inference.model_builder import build_model
    model, _, _ = build_model(RECORDED_CONFIGS[stage], pth=TINY_SYNTHETIC_PTH)
    model.train()
    torch.manual_seed(0)
    losses = model(recorded_batch(stage), mode='loss')
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad_norm = sum(float(g.pow(2).sum()) for g in grads) ** 0.5
    got = dict({k: float(v.detach()) for k, v in losses.items()}, grad_norm=grad_norm)
    recorded = json.loads(RECORDED_LOSSES.read_text())[stage]
    assert set(got) == set(recorded)
    assert got == pytest.approx(recorded, rel=1e-5), (got, recorded)
    if stage == 'finetune':  # the three terms were active on that batch
        assert got['loss_hint'] > 0 and got['loss_lm_text'] > 0 and got['loss_lm_prompt'] > 0


def test_prompt_only_lm_loss_reads_the_prompts_of_the_prompt_rows_without_their_image():
    from omg_llava.models.auxiliary_losses import PromptOnlyLMLoss
    from omg_llava.models.multimodal_inputs import splice_multimodal_inputs
    model = build_tiny(auxiliary_losses=[dict(type='PromptOnlyLMLoss', weight=0.5)],
                       freeze_llm=False, llm_lora=None)
    assert isinstance(model.auxiliary_losses[0], PromptOnlyLMLoss)
    data_batch = seg_batch(model)  # row 0: a referring answer, row 1: a region + mark conversation
    decoded = []  # the prompts are decoded once, by the main pass; the term reuses its embeddings
    prompt_embeddings = model.prompt_embeddings
    model.prompt_embeddings = lambda prompts, images: decoded.append(len(prompts)) or (
        prompt_embeddings(prompts, images))
    losses = model(data_batch, mode='loss')
    del model.prompt_embeddings
    assert decoded == [1, 1]  # one region, one mark
    assert 'loss_lm_prompt' in losses
    # expected: row 1 alone, <image> dropped, its prompt embeddings spliced as the model does
    ids, labels = data_batch['input_ids'][1:], data_batch['labels'][1:]
    keep = data_batch['attention_mask'][1] & (ids[0] != IMAGE_TOKEN_INDEX)
    ids, labels = ids[0][keep][None], labels[0][keep][None]
    with torch.no_grad():
        images = model.encode_images(data_batch['pixel_values'])
        regions, marks, _ = model._batch_prompts(data_batch, strict=False)
        spliced = splice_multimodal_inputs(
            ids, model.llm.get_input_embeddings(), model.token_ids, labels=labels,
            region_embeds=model.prompt_embeddings(regions, images),
            mark_embeds=model.prompt_embeddings(marks, images))
        logits = model.llm(inputs_embeds=spliced.inputs_embeds,
                           position_ids=spliced.position_ids).logits
    expected = F.cross_entropy(logits[0, :-1], spliced.labels[0, 1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(losses['loss_lm_prompt'].detach(), 0.5 * expected)
    # the prompt embeddings are what it trains: the projector gets a gradient through them
    model.zero_grad()
    losses['loss_lm_prompt'].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.projector.parameters())
    # a batch without prompts gives zero, in the graph
    turns = [Turn('Please segment the cat in this image.', 'It is <p> cat </p> [SEG].')]
    plain = batch(model, [turns], [box_mask(40, 200, 30, 220)[None]])
    none = model(plain, mode='loss')['loss_lm_prompt']
    assert none.item() == 0 and none.requires_grad
