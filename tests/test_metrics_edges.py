"""The metrics' edges: exact messages, limits of the accepted ranges, integer counts, empty inputs without
warnings. Expected values are written out by hand (pmp/metrics.py)."""

import math
import warnings

import numpy as np
import pytest

from pmp.metrics import ProposalRecall, SemSegMetric
from tests.messages import raises_exactly


def test_ground_truth_messages() -> None:
    metric = SemSegMetric(3)
    with raises_exactly("ground truth must be an (H, W) integer map, got int64 (1, 2, 2)"):
        metric.update(np.zeros((1, 2, 2), dtype=np.int64), np.zeros((1, 2, 2), dtype=np.int64))
    with raises_exactly("ground truth must be an (H, W) integer map, got float64 (2, 2)"):
        metric.update(np.zeros((2, 2), dtype=np.int64), np.zeros((2, 2)))
    gt = np.arange(3, 15).reshape(3, 4)  # twelve ids outside 0..2: the message lists the first ten
    with raises_exactly(f"ground truth holds ids {list(range(3, 13))} outside 0..2 (ignore_label = -1)"):
        metric.update(np.zeros((3, 4), dtype=np.int64), gt)


def test_prediction_and_construction_messages() -> None:
    with raises_exactly("prediction ids must be in -1..2 (-1 = nothing), got range 0..5"):
        SemSegMetric(3).update(np.array([[0, 5]]), np.array([[0, 1]]))
    with raises_exactly("num_classes must be >= 1, got 0"):
        SemSegMetric(0)
    with raises_exactly("ignore_label 0 collides with class ids 0..2"):
        SemSegMetric(3, ignore_label=0)
    with raises_exactly("seen_mask must have shape (3,), got (2,)"):
        SemSegMetric(3, seen_mask=np.array([True, False]))
    with raises_exactly("cannot merge metrics with different numbers of classes"):
        SemSegMetric(3).merge(SemSegMetric(2))
    with raises_exactly("state must have shape (4, 3), got (3, 3)"):
        SemSegMetric(3).load_state(np.zeros((3, 3), dtype=np.int64))


def test_one_class_and_an_ignore_label_just_past_the_ids_are_accepted() -> None:
    metric = SemSegMetric(1)
    metric.update(np.array([[0, -1]]), np.array([[0, 0]]))
    assert metric.compute().iou.tolist() == [0.5]
    metric = SemSegMetric(3, ignore_label=3)  # the first id that is not a class
    metric.update(np.array([[0, 1]]), np.array([[0, 3]]))
    assert metric.confusion.sum() == 1


def test_seen_mask_given_as_zeros_and_ones_is_a_boolean_mask() -> None:
    gt, pred = np.array([[0, 1, 2, 2]]), np.array([[0, 2, 2, 0]])
    metric = SemSegMetric(3, seen_mask=np.array([1, 0, 1]))
    metric.update(pred, gt)
    scores = metric.compute()
    # class 0: tp 1, gt 1, pred 2 -> 1/2; class 1: 0; class 2: tp 1, gt 2, pred 2 -> 1/3
    assert scores.miou_seen == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert scores.miou_unseen == 0.0


def test_counts_are_integers_before_and_after_a_restore() -> None:
    metric = SemSegMetric(2)
    metric.update(np.array([[0, 1]]), np.array([[0, 0]]))
    assert metric.confusion.dtype == np.int64
    assert metric.compute().gt_pixels.dtype == np.int64
    recall = ProposalRecall(2)
    assert (recall.segments.dtype, recall.hits.dtype) == (np.int64, np.int64)
    recall.load_state(np.array([0.5, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert (recall.segments.dtype, recall.hits.dtype) == (np.int64, np.int64)


def test_a_restored_confusion_is_a_copy_of_the_callers_array() -> None:
    state = np.zeros((3, 2), dtype=np.int64)
    metric = SemSegMetric(2)
    metric.load_state(state.astype(np.float64))
    assert metric.confusion.dtype == np.int64  # counts, whatever the all-reduced buffer's type
    metric.load_state(state)
    metric.update(np.array([[0]]), np.array([[0]]))
    assert state.sum() == 0 and metric.confusion.sum() == 1


def test_empty_metrics_are_nan_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 in numpy warns: the metrics must not divide by zero
        scores = SemSegMetric(2, seen_mask=np.array([True, False])).compute()
        recall = ProposalRecall(2, seen_mask=np.array([True, False])).compute()
        plain = ProposalRecall(2).compute()
    assert math.isnan(scores.pixel_accuracy) and math.isnan(scores.miou) and math.isnan(scores.miou_seen)
    assert math.isnan(recall.mean_best_iou) and math.isnan(recall.mean_best_iou_unseen)
    assert all(math.isnan(value) for value in recall.recall.values()) and recall.num_segments == 0
    assert math.isnan(plain.mean_best_iou_seen) and math.isnan(plain.mean_best_iou_unseen)


def test_a_class_without_segments_is_left_out_without_a_warning() -> None:
    recall = ProposalRecall(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recall.update(np.ones((1, 1, 2), dtype=np.float32), np.array([[0, 0]]))
        scores = recall.compute()
    assert scores.mean_best_iou == 1.0 and math.isnan(scores.per_class_best_iou[1])


@pytest.mark.parametrize("thresholds", [(), (0.0,), (0.5, 1.5)])
def test_recall_thresholds_must_be_ious_in_0_1(thresholds: tuple[float, ...]) -> None:
    with raises_exactly(f"thresholds must be IoUs in (0, 1], got {thresholds}"):
        ProposalRecall(2, thresholds=thresholds)


def test_recall_at_an_iou_exactly_on_a_threshold_counts() -> None:
    recall = ProposalRecall(1, thresholds=(0.5, 1.0))
    proposal = np.array([[[1.0, 1.0, 0.0, 0.0]]])  # 2 of the segment's 4 pixels: IoU exactly 1/2
    recall.update(proposal, np.zeros((1, 4), dtype=np.int64))
    recall.update(np.ones((1, 1, 4)), np.zeros((1, 4), dtype=np.int64))  # IoU exactly 1
    assert recall.compute().recall == {0.5: 1.0, 1.0: 0.5}


def test_recall_messages() -> None:
    with raises_exactly("num_classes must be >= 1, got 0"):
        ProposalRecall(0)
    with raises_exactly("instances shape (1, 3) does not match ground truth (1, 2)"):
        ProposalRecall(2).update(np.ones((1, 1, 2)), np.array([[0, 1]]), instances=np.zeros((1, 3)))
    with raises_exactly("cannot merge recalls with different classes or thresholds"):
        ProposalRecall(2).merge(ProposalRecall(2, thresholds=(0.5,)))
    with raises_exactly("state must have shape (12,), got (3,)"):  # K (2 + T) = 3 (2 + 2)
        ProposalRecall(3).load_state(np.zeros(3))


def test_a_recall_state_of_integers_still_accumulates_fractional_ious() -> None:
    recall = ProposalRecall(1, thresholds=(0.5,))
    recall.load_state([0, 0, 0])  # K (2 + T) = 3 integers, as a zero-filled buffer may come
    recall.update(np.array([[[1.0, 1.0, 0.0, 0.0]]]), np.zeros((1, 4), dtype=np.int64))  # IoU 1/2
    assert recall.compute().mean_best_iou == 0.5


def test_one_pixel_has_a_pixel_accuracy() -> None:
    metric = SemSegMetric(2)
    metric.update(np.array([[1]]), np.array([[1]]))
    assert metric.compute().pixel_accuracy == 1.0
