"""Hand-computed checks of the mIoU and proposal-recall metrics (train/metrics.py)."""

import math

import numpy as np
import pytest

from pmp.metrics import ProposalRecall, SemSegMetric

# 3 classes; -1 = ignore in gt, -1 = nothing in the prediction.
GT = np.array([[0, 0, 1], [1, 2, -1]])
PRED = np.array([[0, 1, 1], [-1, 2, 0]])
# valid pixels: (g0,p0) hit, (g0,p1), (g1,p1) hit, (g1,nothing) miss, (g2,p2) hit; the ignored pixel's
# prediction 0 counts nowhere. Class 0: tp 1, gt 2, pred 1 -> 1/2. Class 1: tp 1, gt 2, pred 2 -> 1/3.
# Class 2: 1/1.


def test_miou_ignore_and_missing_predictions_by_hand() -> None:
    metric = SemSegMetric(3, ignore_label=-1)
    metric.update(PRED, GT)
    scores = metric.compute()
    np.testing.assert_allclose(scores.iou, [1 / 2, 1 / 3, 1.0])
    assert scores.miou == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert scores.pixel_accuracy == pytest.approx(3 / 5)
    np.testing.assert_allclose(scores.accuracy, [1 / 2, 1 / 2, 1.0])
    assert scores.mean_accuracy == pytest.approx(2 / 3)
    np.testing.assert_array_equal(scores.gt_pixels, [2, 2, 1])
    assert math.isnan(scores.miou_seen) and math.isnan(scores.miou_unseen)  # no seen_mask given


def test_seen_unseen_split() -> None:
    metric = SemSegMetric(3, ignore_label=-1, seen_mask=np.array([True, False, True]))
    metric.update(PRED, GT)
    scores = metric.compute()
    assert scores.miou_seen == pytest.approx((1 / 2 + 1) / 2)
    assert scores.miou_unseen == pytest.approx(1 / 3)


def test_class_without_ground_truth_is_nan_and_left_out_even_when_predicted() -> None:
    metric = SemSegMetric(3, ignore_label=255)
    metric.update(np.array([[0, 2], [0, 0]]), np.array([[0, 0], [0, 0]]))
    scores = metric.compute()
    assert scores.iou[0] == pytest.approx(3 / 4)  # the false positive of class 2 still costs class 0
    assert math.isnan(scores.iou[1]) and math.isnan(scores.iou[2])
    assert scores.miou == pytest.approx(3 / 4)


def test_nothing_predicted_is_a_miss_not_an_absence() -> None:
    metric = SemSegMetric(2, ignore_label=-1)
    metric.update(np.full((2, 2), -1), np.ones((2, 2), dtype=np.int64))
    scores = metric.compute()
    assert scores.iou[1] == 0.0 and math.isnan(scores.iou[0])
    assert scores.miou == 0.0 and scores.pixel_accuracy == 0.0


def test_merge_and_state_equal_a_single_pass() -> None:
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(-1, 4, (5, 6)), rng.integers(-1, 4, (5, 6))) for _ in range(4)]
    whole, first, second = SemSegMetric(4), SemSegMetric(4), SemSegMetric(4)
    for i, (pred, gt) in enumerate(pairs):
        whole.update(pred, gt)
        (first if i % 2 else second).update(pred, gt)
    first.merge(second)
    np.testing.assert_array_equal(first.state, whole.state)
    restored = SemSegMetric(4)
    restored.load_state(whole.state)
    np.testing.assert_array_equal(restored.compute().iou, whole.compute().iou)
    assert whole.state.sum() == sum(int((gt != -1).sum()) for _, gt in pairs)


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (np.zeros((2, 2), dtype=int), np.full((2, 2), 3), "outside 0..2"),
        (np.full((2, 2), 3), np.zeros((2, 2), dtype=int), "prediction ids"),
        (np.full((2, 2), -2), np.zeros((2, 2), dtype=int), "prediction ids"),
        (np.zeros((2, 3), dtype=int), np.zeros((2, 2), dtype=int), "does not match"),
        (np.zeros((2, 2)), np.zeros((2, 2), dtype=int), "integer"),
    ],
)
def test_bad_inputs_raise(pred: np.ndarray, gt: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SemSegMetric(3, ignore_label=-1).update(pred, gt)


def test_ignore_label_must_not_be_a_class_id() -> None:
    with pytest.raises(ValueError, match="collides"):
        SemSegMetric(300, ignore_label=255)


def _recall_image() -> tuple[np.ndarray, np.ndarray]:
    gt = np.array([[-1, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]])
    proposals = np.zeros((2, 4, 4), dtype=np.float32)
    proposals[0, :, :2] = 0.9  # exactly class 0 (its ignored corner pixel does not count)
    proposals[1, :, 2] = 0.5  # at the threshold: counts
    proposals[1, 0, 1] = 0.6  # one pixel of class 0
    proposals[1, :, 3] = 0.4  # below the threshold: ignored
    return proposals, gt


def test_proposal_recall_by_hand() -> None:
    proposals, gt = _recall_image()
    recall = ProposalRecall(2, ignore_label=-1, seen_mask=np.array([True, False]))
    recall.update(proposals, gt)
    scores = recall.compute()
    # class 0: proposal 0 covers its 7 valid pixels exactly -> 1. class 1 (8 px): proposal 1 has 5 valid
    # pixels, 4 inside -> 4 / (5 + 8 - 4) = 4/9.
    np.testing.assert_allclose(scores.per_class_best_iou, [1.0, 4 / 9])
    assert scores.mean_best_iou == pytest.approx((1 + 4 / 9) / 2)
    assert scores.recall == {0.5: 0.5, 0.75: 0.5}
    assert scores.mean_best_iou_seen == 1.0 and scores.mean_best_iou_unseen == pytest.approx(4 / 9)
    assert scores.num_segments == 2

    recall.update(np.zeros((0, 4, 4), dtype=np.float32), np.ones((4, 4), dtype=np.int64))  # no proposals
    scores = recall.compute()
    np.testing.assert_allclose(scores.per_class_best_iou, [1.0, (4 / 9 + 0) / 2])
    assert scores.mean_best_iou == pytest.approx((1 + 2 / 9) / 2)  # per class first, then over classes
    assert scores.recall[0.5] == pytest.approx(1 / 3)  # over all segments


def test_proposal_recall_with_instances_and_ignored_images() -> None:
    gt = np.zeros((2, 4), dtype=np.int64)
    instances = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    proposals = np.zeros((1, 2, 4), dtype=np.float32)
    proposals[0, :, :2] = 1.0
    recall = ProposalRecall(1, ignore_label=-1)
    recall.update(proposals, gt, instances)
    recall.update(proposals, np.full((2, 4), -1))  # all ignored: adds nothing
    scores = recall.compute()
    assert scores.num_segments == 2
    assert scores.per_class_best_iou[0] == pytest.approx(0.5)  # instance 1: IoU 1, instance 2: IoU 0
    assert scores.recall[0.5] == pytest.approx(0.5)


def test_proposal_recall_merge_and_state() -> None:
    proposals, gt = _recall_image()
    whole, first, second = (ProposalRecall(2) for _ in range(3))
    for metric in (whole, first):
        metric.update(proposals, gt)
    for metric in (whole, second):
        metric.update(proposals[::-1, ::-1], gt[::-1])
    first.merge(second)
    np.testing.assert_allclose(first.state, whole.state)
    restored = ProposalRecall(2)
    restored.load_state(whole.state)
    assert restored.compute().mean_best_iou == pytest.approx(whole.compute().mean_best_iou)
    with pytest.raises(ValueError, match="proposals must be"):
        whole.update(proposals[:, :3], gt)
