"""Mask and alignment losses against hand-computed values (spec §6.2, §6.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from omg_llava.models.seg_losses import (MaskLossConfig, dice_loss, pretrain_alignment_loss, seg_class_loss,
                                         seg_mask_losses)


def test_dice_by_hand():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])  # p = [.5, .5] and ≈ [1, 0]
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    first = 1 - (2 * 0.5 + 1) / (1.0 + 1.0 + 1)
    p = torch.sigmoid(torch.tensor(10.0)).item()
    q = torch.sigmoid(torch.tensor(-10.0)).item()
    second = 1 - (2 * p + 1) / (p + q + 1 + 1)
    assert torch.allclose(dice_loss(logits, targets), torch.tensor(first + second), atol=1e-6)


def test_mask_losses_follow_the_weights_and_sum_over_steps():
    torch.manual_seed(0)
    gt = torch.zeros(2, 64, 64)
    gt[0, 8:40, 8:40] = 1
    gt[1, 30:60, 10:50] = 1
    cfg = MaskLossConfig(num_points=256)
    perfect = (gt[:, None, ::4, ::4] * 2 - 1) * 50  # (2, 1, 16, 16) confident and right, except at edges
    wrong = -perfect
    good = seg_mask_losses([perfect], gt, cfg)
    bad = seg_mask_losses([wrong], gt, cfg)
    assert good['loss_mask'] < 0.1 * bad['loss_mask'] and good['loss_dice'] < 0.2 * bad['loss_dice']
    # a uniform 0-logit prediction: BCE = ln 2 at every point, so loss_mask = 0.4 · 5 · ln 2 per step
    flat = torch.zeros(2, 1, 16, 16)
    two_steps = seg_mask_losses([flat, flat], gt, cfg)
    expected = 2 * 0.4 * 5.0 * torch.log(torch.tensor(2.0)) * (2 * 256) / (2 * 256 + 1e-4)
    assert torch.allclose(two_steps['loss_mask'], expected, atol=1e-5)


def test_alignment_loss_uses_queries_with_any_blocked_cell():
    torch.manual_seed(0)
    queries = torch.randn(1, 3, 8)
    blocked = torch.tensor([[[True, False], [False, False], [True, True]]])  # query 1 never blocked
    project, back = torch.nn.Linear(8, 4), torch.nn.Linear(4, 8)
    loss = pretrain_alignment_loss(queries, blocked, project, back)
    selected = queries[0, [0, 2]]
    assert torch.allclose(loss, 10 * F.mse_loss(back(project(selected)), selected))


def test_matching_object_tokens_picks_the_best_valid_query():
    from omg_llava.models.seg_losses import matching_object_tokens
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
    """Several masks per image, in any order: the same choice as upsampling and comparing each mask on its own."""
    from omg_llava.models.seg_losses import matching_object_tokens
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 8, 8, generator=generator) * 4
    valid = torch.rand(3, 5, generator=generator) > 0.3
    image_idxs = torch.tensor([2, 0, 2, 2, 1, 0])
    gt = torch.rand(6, 32, 32, generator=generator) > 0.6
    idxs, found = matching_object_tokens(gt, logits, valid, image_idxs, min_iou=0.2)
    for n, b in enumerate(image_idxs.tolist()):
        pred = F.interpolate(logits[b:b + 1], size=(32, 32), mode='bilinear', align_corners=False)[0] > 0
        iou = (pred & gt[n]).flatten(1).sum(-1) / (pred | gt[n]).flatten(1).sum(-1).clamp(min=1)
        iou[~valid[b]] = -1
        assert idxs[n] == iou.argmax() and found[n] == (iou.max() >= 0.2)


def test_object_token_hint_loss_pulls_the_seg_query_to_its_object():
    from omg_llava.models.seg_losses import object_token_hint_loss
    torch.manual_seed(0)
    tokens = torch.randn(1, 4, 16).expand(2, -1, -1).clone()  # two [SEG] on the same image, 4 object queries
    valid = torch.tensor([[True, True, True, False], [True, True, True, False]])
    targets, found = torch.tensor([2, 0]), torch.tensor([True, False])
    on_target = object_token_hint_loss(tokens[:, 2].clone(), tokens, valid, targets, found)
    off_target = object_token_hint_loss(tokens[:, 1].clone(), tokens, valid, targets, found)
    assert on_target < 0.1 and off_target > 1.0
    assert object_token_hint_loss(tokens[:, 1], tokens, valid, targets, torch.tensor([False, False])) == 0
    query = (0.1 * torch.randn(2, 16)).requires_grad_()
    optimizer = torch.optim.SGD([query], lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        object_token_hint_loss(query, tokens, valid, targets, found).backward()
        optimizer.step()
    assert ((query[0] - tokens[0]) ** 2).sum(-1).argmin() == 2
    assert query.grad[1].abs().sum() == 0  # a [SEG] without a matching token gets no hint


def test_seg_attention_hint_loss_reads_the_seg_to_object_probability_of_one_head():
    from omg_llava.models.seg_losses import seg_attention_hint_loss
    probs = torch.full((2, 3, 6, 6), 0.01)
    probs[0, 1, 4, 2] = 0.5  # sample 0, head 1: [SEG] at 4 looks at its object token at 2
    probs[1, 1, 5, 3] = 0.25
    rows, seg_cols, targets = torch.tensor([0, 1]), torch.tensor([4, 5]), torch.tensor([2, 3])
    found = torch.tensor([True, True])
    loss = seg_attention_hint_loss(probs, rows, seg_cols, targets, found, head=1)
    assert torch.isclose(loss, -(torch.tensor([0.5, 0.25]) + 1e-6).log().mean())
    assert torch.isclose(seg_attention_hint_loss(probs, rows, seg_cols, targets, found, head=0),
                         -torch.tensor(0.01 + 1e-6).log())
    one = seg_attention_hint_loss(probs, rows, seg_cols, targets, torch.tensor([True, False]), head=1)
    assert torch.isclose(one, -torch.tensor(0.5 + 1e-6).log())  # a [SEG] without an object token is left out
    assert seg_attention_hint_loss(probs, rows, seg_cols, targets, torch.tensor([False, False])) == 0
    mean_of_heads = torch.tensor([0.5 + 0.02, 0.25 + 0.02]) / 3
    assert torch.isclose(seg_attention_hint_loss(probs, rows, seg_cols, targets, found, head=None),
                         -(mean_of_heads + 1e-6).log().mean())


def test_seg_class_loss_targets_the_matched_tokens_class():
    token_logits = torch.tensor([[0.1, 3.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])  # classes 1, 0, 2
    found = torch.tensor([True, True, False])
    right = torch.tensor([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0]])  # row 2 (not found) is ignored
    wrong = torch.tensor([[9.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    assert seg_class_loss(right, token_logits, found) < 1e-3
    expected = torch.nn.functional.cross_entropy(wrong[:2], torch.tensor([1, 0]))
    torch.testing.assert_close(seg_class_loss(wrong, token_logits, found), expected)
    logits = wrong.clone().requires_grad_(True)
    seg_class_loss(logits, token_logits, torch.zeros(3, dtype=torch.bool)).backward()  # none found: 0 in the graph
    assert logits.grad is not None and logits.grad.abs().sum() == 0
