"""Mask and alignment losses against hand-computed values (spec §6.2, §6.3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from omg_llava.models.seg_losses import (MaskLossConfig, dice_loss, pretrain_alignment_loss,
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
    # (2, 1, 16, 16) confident and right, except at edges
    perfect = (gt[:, None, ::4, ::4] * 2 - 1) * 50
    wrong = -perfect
    good = seg_mask_losses([perfect], gt, cfg)
    bad = seg_mask_losses([wrong], gt, cfg)
    assert good['loss_mask'] < 0.1 * bad['loss_mask'] and good['loss_dice'] < 0.2 * bad['loss_dice']
    # a uniform 0-logit prediction: BCE = ln 2 at every point, so loss_mask = 0.4 · 5 · ln 2 per
    # step
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
