"""Evaluation metrics: semantic-segmentation mIoU (detectron2's definition) and first-stage proposal recall.

Both metrics only accumulate integer counts (and sums of per-segment IoUs), so they can be filled per
image, per rank, and combined by adding their ``state`` arrays: ``merge`` for two objects in one
process, an ``all_reduce(SUM)`` of ``state`` across ranks (see :mod:`train.evaluate`). Everything is
reported as fractions in [0, 1]; NaN means "undefined" (a class with no ground-truth pixels).

Label conventions: ground truth is an integer (H, W) map of class ids ``0..K-1`` with ``ignore_label``
(``-1`` for every dataset in :mod:`train.datasets`) on pixels that are not scored. Predictions are an
integer (H, W) map of class ids with ``-1`` meaning "nothing assigned" (``SegmentationResult.semantic``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MISSING_PREDICTION = -1  # prediction value for "no class assigned to this pixel"


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _check_seen_mask(seen_mask: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    if seen_mask is None:
        return None
    seen = np.asarray(seen_mask, dtype=bool)
    if seen.shape != (num_classes,):
        raise ValueError(f"seen_mask must have shape ({num_classes},), got {seen.shape}")
    return seen


def _check_ground_truth(gt: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    gt = np.asarray(gt)
    if gt.ndim != 2 or not np.issubdtype(gt.dtype, np.integer):
        raise ValueError(f"ground truth must be an (H, W) integer map, got {gt.dtype} {gt.shape}")
    bad = ((gt < 0) | (gt >= num_classes)) & (gt != ignore_label)
    if bad.any():
        raise ValueError(
            f"ground truth holds ids {np.unique(gt[bad])[:10].tolist()} outside 0..{num_classes - 1} "
            f"(ignore_label = {ignore_label})"
        )
    return gt.astype(np.int64, copy=False)


@dataclass
class SemSegScores:
    """What :meth:`SemSegMetric.compute` returns (fractions in [0, 1])."""

    iou: np.ndarray  # (K,) per-class IoU, NaN for classes with no ground-truth pixel
    accuracy: np.ndarray  # (K,) per-class pixel accuracy (recall), NaN likewise
    gt_pixels: np.ndarray  # (K,) int64 ground-truth pixels per class
    miou: float
    miou_seen: float  # NaN without a seen_mask or when no seen class has ground truth
    miou_unseen: float
    pixel_accuracy: float  # correctly labelled / all non-ignored pixels
    mean_accuracy: float


class SemSegMetric:
    """Confusion-matrix mIoU, following detectron2's ``SemSegEvaluator``.

    ``confusion[p, g]`` counts non-ignored pixels with prediction ``p`` and ground truth ``g``; it is
    (K + 1, K): row K holds pixels where nothing was predicted (-1). Then, as in detectron2's
    ``sem_seg_evaluation.py``:

    - ``tp[c] = confusion[c, c]``; ``pos_gt[c]`` = ground-truth pixels of c (column sum, *including*
      the nothing row: a pixel left unassigned is a miss of its class, never a hit);
      ``pos_pred[c]`` = pixels predicted c on non-ignored ground truth (row sum);
      ``union = pos_gt + pos_pred - tp``.
    - A class is *valid* iff ``pos_gt[c] > 0`` (detectron2: ``acc_valid = pos_gt > 0``,
      ``iou_valid = acc_valid & (union > 0)``, the second part being implied by the first). Its IoU is
      ``tp / union``; every other class has IoU NaN and is left out of every mean, even when it was
      predicted: its false-positive pixels still lower the IoU of the classes they were taken from.
    - mIoU = mean IoU over valid classes; seen / unseen mIoU = the same mean restricted to valid classes
      with ``seen_mask`` True / False. Pixel accuracy = ``sum(tp) / sum(pos_gt)``.

    Ignored ground-truth pixels are dropped before counting, whatever was predicted there. The one
    departure from detectron2 is the nothing row, which its argmax predictions never need.
    """

    def __init__(self, num_classes: int, ignore_label: int = -1, seen_mask: np.ndarray | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_label < num_classes:
            raise ValueError(f"ignore_label {ignore_label} collides with class ids 0..{num_classes - 1}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.seen_mask = _check_seen_mask(seen_mask, self.num_classes)
        self.confusion = np.zeros((self.num_classes + 1, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one image: ``pred`` (H, W) ints in ``-1..K-1``, ``gt`` (H, W) ints in ``0..K-1`` or ignore."""
        gt = _check_ground_truth(gt, self.num_classes, self.ignore_label)
        pred = np.asarray(pred)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match ground truth {gt.shape}")
        if not np.issubdtype(pred.dtype, np.integer):
            raise ValueError(f"prediction must be an integer map of class ids, got {pred.dtype}")
        if pred.size and (pred.min() < MISSING_PREDICTION or pred.max() >= self.num_classes):
            raise ValueError(
                f"prediction ids must be in -1..{self.num_classes - 1} (-1 = nothing), "
                f"got range {pred.min()}..{pred.max()}"
            )
        valid = gt != self.ignore_label
        g = gt[valid]
        p = pred[valid].astype(np.int64)
        p[p == MISSING_PREDICTION] = self.num_classes  # the "nothing" row
        k = self.num_classes
        self.confusion += np.bincount(p * k + g, minlength=(k + 1) * k).reshape(k + 1, k)

    @property
    def state(self) -> np.ndarray:
        """The (K + 1, K) int64 confusion matrix: everything the metric knows, summable across ranks."""
        return self.confusion

    def load_state(self, state: np.ndarray) -> None:
        state = np.asarray(state)
        if state.shape != self.confusion.shape:
            raise ValueError(f"state must have shape {self.confusion.shape}, got {state.shape}")
        self.confusion = state.astype(np.int64, copy=True)

    def merge(self, other: "SemSegMetric") -> None:
        if other.confusion.shape != self.confusion.shape:
            raise ValueError("cannot merge metrics with different numbers of classes")
        self.confusion += other.confusion

    def compute(self) -> SemSegScores:
        k = self.num_classes
        tp = np.diagonal(self.confusion[:k]).astype(np.float64)
        pos_gt = self.confusion.sum(axis=0).astype(np.float64)
        pos_pred = self.confusion[:k].sum(axis=1).astype(np.float64)
        union = pos_gt + pos_pred - tp
        valid = pos_gt > 0
        iou = np.full(k, np.nan)
        accuracy = np.full(k, np.nan)
        iou[valid] = tp[valid] / union[valid]
        accuracy[valid] = tp[valid] / pos_gt[valid]
        total = pos_gt.sum()
        if self.seen_mask is None:
            miou_seen = miou_unseen = float("nan")
        else:
            miou_seen = _nanmean(iou[self.seen_mask])
            miou_unseen = _nanmean(iou[~self.seen_mask])
        return SemSegScores(
            iou=iou,
            accuracy=accuracy,
            gt_pixels=pos_gt.astype(np.int64),
            miou=_nanmean(iou),
            miou_seen=miou_seen,
            miou_unseen=miou_unseen,
            pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
            mean_accuracy=_nanmean(accuracy),
        )


@dataclass
class RecallScores:
    """What :meth:`ProposalRecall.compute` returns (fractions in [0, 1])."""

    mean_best_iou: float  # class-balanced: per-class mean of best IoUs, then mean over classes
    mean_best_iou_seen: float
    mean_best_iou_unseen: float
    recall: dict[float, float]  # threshold -> fraction of all segments whose best IoU >= threshold
    per_class_best_iou: np.ndarray  # (K,) NaN for classes without segments
    num_segments: int


class ProposalRecall:
    """Proposal recall, the paper's Table 4: how well the first-stage proposals cover the ground-truth
    segments, whatever their classes.

    Per image, every ground-truth segment (each class present in the label map, or with an instance
    map each distinct (class, instance) pair) gets its *best IoU* against all proposals binarised at
    ``proposals >= mask_threshold``. IoUs are measured on non-ignored pixels only: ignored pixels
    belong to no segment and a proposal's pixels there count neither as hit nor as false positive.
    An image with no proposals gives every segment a best IoU of 0.

    Reported: ``mean_best_iou`` averages best IoUs within each class, then over the classes that had
    at least one segment (so frequent classes do not dominate); ``recall[t]`` is the fraction of all
    segments whose best IoU is >= t. Intersections for all (proposal, segment) pairs come from one
    float32 matrix product of flattened 0/1 masks (exact: partial sums stay below 2**24 pixels).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int = -1,
        thresholds: tuple[float, ...] = (0.5, 0.75),
        mask_threshold: float = 0.5,
        seen_mask: np.ndarray | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not thresholds or any(not 0 < t <= 1 for t in thresholds):
            raise ValueError(f"thresholds must be IoUs in (0, 1], got {thresholds}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.mask_threshold = float(mask_threshold)
        self.seen_mask = _check_seen_mask(seen_mask, self.num_classes)
        self.best_iou_sum = np.zeros(self.num_classes, dtype=np.float64)
        self.segments = np.zeros(self.num_classes, dtype=np.int64)
        self.hits = np.zeros((self.num_classes, len(self.thresholds)), dtype=np.int64)

    def update(self, proposals: np.ndarray, gt: np.ndarray, instances: np.ndarray | None = None) -> None:
        """Add one image: ``proposals`` (N, H, W) in [0, 1], ``gt`` (H, W), optional ``instances`` (H, W) ids."""
        gt = _check_ground_truth(gt, self.num_classes, self.ignore_label)
        proposals = np.asarray(proposals)
        if proposals.ndim != 3 or proposals.shape[1:] != gt.shape:
            raise ValueError(f"proposals must be (N, H, W) with (H, W) = {gt.shape}, got {proposals.shape}")
        valid = gt != self.ignore_label
        if not valid.any():
            return
        classes = gt[valid]  # (V,)
        if instances is None:
            segment_classes, segment_of_pixel = np.unique(classes, return_inverse=True)
        else:
            instances = np.asarray(instances)
            if instances.shape != gt.shape:
                raise ValueError(f"instances shape {instances.shape} does not match ground truth {gt.shape}")
            pairs = np.stack([classes, instances[valid].astype(np.int64)], axis=1)  # (V, 2)
            unique_pairs, segment_of_pixel = np.unique(pairs, axis=0, return_inverse=True)
            segment_classes = unique_pairs[:, 0]
        segment_of_pixel = segment_of_pixel.reshape(-1)
        num_segments = len(segment_classes)
        segment_area = np.bincount(segment_of_pixel, minlength=num_segments).astype(np.float64)  # (S,)

        if len(proposals):
            masks = (proposals[:, valid] >= self.mask_threshold).astype(np.float32)  # (N, V)
            one_hot = np.zeros((num_segments, masks.shape[1]), dtype=np.float32)  # (S, V)
            one_hot[segment_of_pixel, np.arange(masks.shape[1])] = 1.0
            intersection = (masks @ one_hot.T).astype(np.float64)  # (N, S)
            union = masks.sum(axis=1, dtype=np.float64)[:, None] + segment_area[None, :] - intersection
            best = (intersection / union).max(axis=0)  # union >= segment area > 0
        else:
            best = np.zeros(num_segments)

        np.add.at(self.best_iou_sum, segment_classes, best)
        np.add.at(self.segments, segment_classes, 1)
        for j, threshold in enumerate(self.thresholds):
            np.add.at(self.hits[:, j], segment_classes, (best >= threshold).astype(np.int64))

    @property
    def state(self) -> np.ndarray:
        """1-D float64 [best-IoU sums (K), segment counts (K), hits (K x T)]: summable across ranks.

        Counts are exact in float64 up to 2**53, far beyond any benchmark.
        """
        return np.concatenate(
            [self.best_iou_sum, self.segments.astype(np.float64), self.hits.astype(np.float64).ravel()]
        )

    def load_state(self, state: np.ndarray) -> None:
        k, t = self.num_classes, len(self.thresholds)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (k * (2 + t),):
            raise ValueError(f"state must have shape ({k * (2 + t)},), got {state.shape}")
        self.best_iou_sum = state[:k].copy()
        self.segments = np.rint(state[k : 2 * k]).astype(np.int64)
        self.hits = np.rint(state[2 * k :]).astype(np.int64).reshape(k, t)

    def merge(self, other: "ProposalRecall") -> None:
        if (other.num_classes, other.thresholds) != (self.num_classes, self.thresholds):
            raise ValueError("cannot merge recalls with different classes or thresholds")
        self.best_iou_sum += other.best_iou_sum
        self.segments += other.segments
        self.hits += other.hits

    def compute(self) -> RecallScores:
        per_class = np.full(self.num_classes, np.nan)
        present = self.segments > 0
        per_class[present] = self.best_iou_sum[present] / self.segments[present]
        total = int(self.segments.sum())
        recall = {
            t: (float(self.hits[:, j].sum() / total) if total else float("nan")) for j, t in enumerate(self.thresholds)
        }
        if self.seen_mask is None:
            seen = unseen = float("nan")
        else:
            seen, unseen = _nanmean(per_class[self.seen_mask]), _nanmean(per_class[~self.seen_mask])
        return RecallScores(
            mean_best_iou=_nanmean(per_class),
            mean_best_iou_seen=seen,
            mean_best_iou_unseen=unseen,
            recall=recall,
            per_class_best_iou=per_class,
            num_segments=total,
        )
