"""SegmentationSetCriterion: Hungarian matching and the weighted class / mask losses."""
import pytest
import torch
import torch.nn.functional as F

from omg_llava.models.seg_heads import DecodeOutput, SegmentationSetCriterion

K, Q, S = 3, 5, 32
LOGIT = 20.0


def _gt():
    masks = torch.zeros(2, S, S, dtype=torch.uint8)
    masks[0, 2:14, 3:12] = 1
    masks[1, 18:30, 15:29] = 1
    return torch.tensor([2, 0]), masks


def _decode(query_masks: dict[int, torch.Tensor], query_labels: dict[int, int],
            steps: int = 2) -> DecodeOutput:
    """Queries in ``query_masks`` predict those masks (others: empty), queries in ``query_labels``
    those classes (others: no-object); same predictions at every step."""
    cls = torch.full((1, Q, K + 2), -LOGIT)
    cls[0, :, K] = LOGIT  # no-object
    cls[..., -1] = 0.3  # IoU channel, ignored
    masks = torch.full((1, Q, S, S), -LOGIT)
    for q, m in query_masks.items():
        masks[0, q] = torch.where(m.bool(), LOGIT, -LOGIT)
    for q, label in query_labels.items():
        cls[0, q, K] = -LOGIT
        cls[0, q, label] = LOGIT
    return DecodeOutput(mask_logits=[masks.clone() for _ in range(steps)],
                        class_logits=[cls.clone() for _ in range(steps)])


@pytest.fixture
def criterion():
    torch.manual_seed(0)
    return SegmentationSetCriterion(K, num_points=256)


def test_perfect_prediction_matches_and_has_near_zero_loss(criterion):
    labels, masks = _gt()
    decode = _decode({3: masks[0], 1: masks[1]}, {3: 2, 1: 0})
    query_idxs, gt_idxs = criterion.match(decode.class_logits[0][0, :, :K + 1],
                                          decode.mask_logits[0][0], labels, masks)
    assert dict(zip(query_idxs.tolist(), gt_idxs.tolist())) == {1: 1, 3: 0}
    losses = criterion(decode, [labels], [masks])
    assert set(losses) == {'loss_cls', 'loss_mask', 'loss_dice'}
    _, matches = criterion.losses_and_matches(decode, [labels], [masks])
    # the last step's pairs
    assert [dict(zip(q.tolist(), g.tolist())) for q, g in matches] == [{1: 1, 3: 0}]
    # the class loss vanishes; the mask losses keep a floor from the sampled points on mask edges,
    # where the bilinearly read targets are fractional (uncertainty sampling puts 75 % of the points
    # there)
    assert losses['loss_cls'].item() < 1e-3
    total = sum(losses.values())
    assert total.item() < 5
    # the same masks shifted by 6 px
    shifted = sum(criterion(_decode({3: masks[0].roll(6, -1), 1: masks[1].roll(6, -2)},
                                    {3: 2, 1: 0}), [labels],
                            [masks]).values())
    assert shifted.item() > 4 * total.item()
    # swapped classes (masks kept): the matching follows the masks (cost 5 + 5 > 2), so the class
    # loss explodes
    shuffled = sum(criterion(_decode({3: masks[0], 1: masks[1]}, {3: 0, 1: 2}), [labels],
                             [masks]).values())
    assert shuffled.item() > 20
    # a missed object: everything predicts no-object
    missed = sum(criterion(_decode({}, {}), [labels], [masks]).values())
    assert missed.item() > 20


def test_no_object_weight_and_step_sum(criterion):
    labels, masks = _gt()
    torch.manual_seed(1)
    cls = torch.randn(1, Q, K + 2)
    decode = _decode({3: masks[0], 1: masks[1]}, {})
    decode.class_logits = [cls, cls]
    losses = criterion(decode, [labels], [masks])
    targets = torch.full((Q, ), K)
    targets[3], targets[1] = 2, 0
    ce = F.cross_entropy(cls[0, :, :K + 1], targets, reduction='none')
    w = torch.where(targets == K, 0.1, 1.0)
    expected = 2 * 2.0 * (w * ce).sum() / w.sum()  # 2 steps, class weight 2
    torch.testing.assert_close(losses['loss_cls'], expected)


def test_images_without_objects(criterion):
    labels, masks = _gt()
    decode = _decode({3: masks[0]}, {3: 2})
    for step in decode.mask_logits + decode.class_logits:
        step.requires_grad_(True)
    empty_labels, empty_masks = torch.zeros(0, dtype=torch.long), torch.zeros(0, S, S,
                                                                              dtype=torch.uint8)
    both = DecodeOutput(mask_logits=[torch.cat([m, m]) for m in decode.mask_logits],
                        class_logits=[torch.cat([c, c]) for c in decode.class_logits])
    losses = criterion(both, [labels, empty_labels], [masks, empty_masks])
    assert all(torch.isfinite(v) for v in losses.values())
    only_empty = criterion(decode, [empty_labels], [empty_masks])
    assert only_empty['loss_mask'].item() == 0 and only_empty['loss_dice'].item() == 0
    sum(only_empty.values()).backward()
    assert decode.class_logits[0].grad is not None


def test_rejects_labels_out_of_range(criterion):
    labels, masks = _gt()
    with pytest.raises(ValueError, match='labels'):
        criterion(_decode({}, {}), [labels + K], [masks])
