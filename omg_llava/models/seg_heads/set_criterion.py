"""Set-prediction losses of the OMG-Seg head's object queries (spec §6.2, "configuration
leftovers").

Used to pre-train a tiny OMG-Seg for instance segmentation (``omg_llava.models.omg_seg_trainer``).
Per image and per decoder step, the Q object queries are matched one-to-one to the ground-truth
instances with mmdet's :class:`~mmdet.models.task_modules.HungarianAssigner` (class cost +
sigmoid-CE mask cost + dice cost, mask costs on uniformly sampled points shared by predictions and
targets). Then:

* ``loss_cls``: cross-entropy over K+1 classes (index K = no-object), class weights 1 for real
  classes and ``no_object_weight`` for no-object, averaged by the summed target weights;
* ``loss_mask`` / ``loss_dice``: sigmoid BCE and dice of the matched masks on Mask2Former's
  uncertainty-sampled points, averaged over the matched masks of the batch.

Every term is summed over the decoder steps. The IoU channel of the class logits is not trained
here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.ops import point_sample
from mmdet.models.task_modules import (ClassificationCost, CrossEntropyLossCost, DiceCost,
                                       HungarianAssigner)
from mmdet.models.utils import get_uncertain_point_coords_with_randomness
from mmengine.structures import InstanceData
from torch import Tensor

from ..seg_losses import dice_loss
from .omg_seg_head import DecodeOutput


class SegmentationSetCriterion:
    """Hungarian-matched classification and mask losses of the object queries.

    Args:
        num_classes: K real classes; the class logits used are ``[..., :K+1]`` (no-object last).
        class_weight / mask_weight / dice_weight: loss weights (2 / 5 / 5), also the matching-cost
        weights.
        no_object_weight: CE weight of the no-object class (0.1).
        num_points: points sampled per mask, for matching and for the mask losses (12544 in the
            release).
        oversample_ratio / importance_sample_ratio: Mask2Former uncertainty sampling (3.0 / 0.75).
    """

    def __init__(self, num_classes: int, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75) -> None:
        self.num_classes = num_classes
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.assigner = HungarianAssigner(match_costs=[
            dict(type=ClassificationCost, weight=class_weight),
            dict(type=CrossEntropyLossCost, weight=mask_weight, use_sigmoid=True),
            dict(type=DiceCost, weight=dice_weight, pred_act=True, eps=1.0),
        ])

    def class_weights(self, device: torch.device) -> Tensor:
        """(K+1,) CE weights: 1 for each real class, ``no_object_weight`` for no-object."""
        weights = torch.ones(self.num_classes + 1, device=device)
        weights[-1] = self.no_object_weight
        return weights

    # ------------------------------------------------------------------ matching
    @torch.no_grad()
    def match(self, class_logits: Tensor, mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor
              ) -> tuple[Tensor, Tensor]:
        """Hungarian matching of one image's queries to its instances.

        Args:
            class_logits: (Q, K+1) logits (no-object last).
            mask_logits: (Q, h, w) mask logits.
            gt_labels: (n,) class indices in [0, K).
            gt_masks: (n, H, W) binary masks (any resolution; sampled at normalised coordinates).

        Returns:
            ``(query_idxs, gt_idxs)``, both (m,) long with m = min(Q, n), the matched pairs.
        """
        device = mask_logits.device
        if len(gt_labels) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty
        # the same points for predictions and targets
        coords = torch.rand(1, self.num_points, 2, device=device)
        pred_points = point_sample(mask_logits[:, None].float(),
                                   coords.expand(len(mask_logits), -1, -1),
                                   align_corners=False)[:, 0]  # (Q, P)
        gt_points = point_sample(gt_masks[:, None].float(), coords.expand(len(gt_masks), -1, -1),
                                 align_corners=False)[:, 0]  # (n, P)
        result = self.assigner.assign(InstanceData(scores=class_logits.float(), masks=pred_points),
                                      InstanceData(labels=gt_labels, masks=gt_points))
        query_idxs = torch.nonzero(result.gt_inds > 0, as_tuple=True)[0]
        return query_idxs, result.gt_inds[query_idxs] - 1

    # ------------------------------------------------------------------ losses
    def __call__(self, decode: DecodeOutput, gt_labels: list[Tensor],
                 gt_masks: list[Tensor]) -> dict[str, Tensor]:
        """Losses of every decoder step, summed over the steps (see :meth:`losses_and_matches`)."""
        return self.losses_and_matches(decode, gt_labels, gt_masks)[0]

    def losses_and_matches(self, decode: DecodeOutput, gt_labels: list[Tensor],
                           gt_masks: list[Tensor]
                           ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """Losses of every decoder step, summed over the steps, and the last step's matching.

        Args:
            decode: object-query decoding; ``class_logits[s]`` (B, Q, K+2) and ``mask_logits[s]``
                (B, Q, h, w).
            gt_labels: per image, (n_b,) long class indices in [0, K).
            gt_masks: per image, (n_b, H, W) binary masks at the network input size.

        Returns:
            ``({loss_cls, loss_mask, loss_dice}, matches)``: scalar losses, and per image the last
            step's ``(query_idxs, gt_idxs)`` pairs (see :meth:`match`).
        """
        if not decode.class_logits:
            raise ValueError('the decoding has no class logits: decode object queries with '
                             'with_classes=True')
        if len(gt_labels) != len(gt_masks) or len(gt_labels) != decode.mask_logits[0].shape[0]:
            raise ValueError(f'got {len(gt_labels)} label sets and {len(gt_masks)} mask sets for a '
                             f'batch of {decode.mask_logits[0].shape[0]} images')
        K = self.num_classes
        if decode.class_logits[0].shape[-1] < K + 2:
            raise ValueError(f'class logits have {decode.class_logits[0].shape[-1]} channels; need '
                             f'K+2 = {K + 2}')
        for labels in gt_labels:
            if len(labels) and (labels.min() < 0 or labels.max() >= K):
                raise ValueError(f'ground-truth labels must lie in [0, {K}), got {labels.tolist()}')
        losses = {'loss_cls': 0.0, 'loss_mask': 0.0, 'loss_dice': 0.0}
        matches = []
        for class_logits, mask_logits in zip(decode.class_logits, decode.mask_logits):
            step, matches = self.step_losses(class_logits[..., :K + 1], mask_logits, gt_labels,
                                             gt_masks)
            losses = {k: losses[k] + step[k] for k in losses}
        return losses, matches

    def step_losses(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        gt_labels: list[Tensor],
        gt_masks: list[Tensor],
    ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor]]]:
        """Losses of one decoder step (``class_logits`` (B, Q, K+1), ``mask_logits`` (B, Q, h, w))
        and its per-image matching ``(query_idxs, gt_idxs)``."""
        B, Q = class_logits.shape[:2]
        # no-object by default
        targets = class_logits.new_full((B, Q), self.num_classes, dtype=torch.long)
        matched_logits, matched_targets, matches = [], [], []
        for b in range(B):
            labels = gt_labels[b].to(class_logits.device).long()
            masks = gt_masks[b].to(mask_logits.device)
            query_idxs, gt_idxs = self.match(class_logits[b].detach(), mask_logits[b].detach(),
                                             labels, masks)
            matches.append((query_idxs, gt_idxs))
            targets[b, query_idxs] = labels[gt_idxs]
            matched_logits.append(mask_logits[b, query_idxs])
            matched_targets.append(masks[gt_idxs].float())
        loss_cls = F.cross_entropy(class_logits.flatten(0, 1).float(), targets.flatten(),
                                   weight=self.class_weights(class_logits.device))  # weighted mean
        pred = torch.cat(matched_logits)  # (M, h, w)
        if len(pred) == 0:  # no instance in the whole batch: keep the graph, no mask loss
            zero = mask_logits.sum() * 0
            return {'loss_cls': self.class_weight * loss_cls, 'loss_mask': zero,
                    'loss_dice': zero}, matches
        target = torch.cat(matched_targets)  # (M, H, W)
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                pred[:, None].float(), None, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio)  # (M, P, 2)
            # (M, P)
            point_targets = point_sample(target[:, None], coords, align_corners=False)[:, 0]
        # (M, P)
        point_logits = point_sample(pred[:, None].float(), coords, align_corners=False)[:, 0]
        num_masks = len(pred)
        loss_mask = F.binary_cross_entropy_with_logits(point_logits, point_targets,
                                                       reduction='sum') / (
            num_masks * self.num_points)
        loss_dice = dice_loss(point_logits, point_targets, eps=1.0) / num_masks
        return {'loss_cls': self.class_weight * loss_cls, 'loss_mask': self.mask_weight * loss_mask,
                'loss_dice': self.dice_weight * loss_dice}, matches
