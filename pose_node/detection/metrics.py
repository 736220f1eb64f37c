"""Detection metrics over BOP images: recall, precision and COCO-style mask AP.

Protocol (written once, here):

- Ground truth: per image, the instances of the evaluated objects with their visible masks
  (BOP ``mask_visib``) and ``visib_fract``. Instances with ``visib_fract >= visib_fract_min``
  (0.3) are *targets*; the others are *ignore regions*.
- Matching at an IoU threshold ``t``, per image and object, greedy by descending score (COCO):
  each detection takes the unmatched target of its object with the highest mask IoU ``>= t``
  (a true positive); failing that, if its IoU with an ignore region of its object is ``>= t`` it
  is *ignored* (counts neither as true nor as false positive; an ignore region may absorb
  several detections, like a COCO crowd region); otherwise it is a false positive (this
  includes a second detection of an already matched target). Detections of objects that have
  no target or ignore region in the image are false positives.
- ``recall`` = true positives / targets and ``precision`` = true positives / (true + false
  positives), at ``t = match_iou`` (0.5), over every detection returned (the detector's own
  threshold is the operating point).
- ``mask_ap``: for every ``t`` in 0.50:0.05:0.95 and every object with at least one target,
  the detections of that object over all images are sorted by score (ignored ones dropped),
  the precision envelope is sampled at 101 recall points (0, 0.01, .., 1; 0 beyond the highest
  recall reached) and averaged: the AP; ``mask_ap`` is the mean over objects and thresholds.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pose_node.core.errors import InvalidInputError

AP_IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)

TP, FP, IGNORED = 1, 0, -1


@dataclass(frozen=True)
class DetectionMetricsConfig:
    """Attributes:
        visib_fract_min: GT instances at least this visible are targets; the rest are ignored.
        match_iou: mask IoU of a true positive for recall and precision.
        ap_iou_thresholds: IoU thresholds the mask AP averages over.
    """

    visib_fract_min: float = 0.3
    match_iou: float = 0.5
    ap_iou_thresholds: tuple[float, ...] = AP_IOU_THRESHOLDS

    def __post_init__(self) -> None:
        if not 0.0 <= self.visib_fract_min <= 1.0:
            raise InvalidInputError(f"DetectionMetricsConfig.visib_fract_min: expected [0, 1], got {self.visib_fract_min}")
        if not 0.0 < self.match_iou <= 1.0 or not self.ap_iou_thresholds or any(not 0.0 < t <= 1.0 for t in self.ap_iou_thresholds):
            raise InvalidInputError("DetectionMetricsConfig.match_iou / ap_iou_thresholds: IoU thresholds must lie in (0, 1]")


def _boxes_of(masks: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 4) x_min y_min x_max y_max (exclusive) of masks; empty masks get an empty box."""
    out = np.zeros((len(masks), 4), dtype=np.int64)
    for i, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            out[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return out


def pairwise_mask_iou(masks_a: Sequence[np.ndarray], masks_b: Sequence[np.ndarray]) -> np.ndarray:
    """Mask IoU (A, B) float64 between two lists of (H, W) bool masks; pairs whose boxes do not
    overlap are 0 without touching their pixels; two empty masks have IoU 0."""
    A, B = len(masks_a), len(masks_b)
    out = np.zeros((A, B))
    if A == 0 or B == 0:
        return out
    shape = masks_a[0].shape
    if any(m.shape != shape for m in (*masks_a, *masks_b)):
        raise InvalidInputError(f"pairwise_mask_iou: every mask must have shape {shape}")
    box_a, box_b = _boxes_of(masks_a), _boxes_of(masks_b)
    area_a = np.array([np.count_nonzero(m) for m in masks_a], dtype=np.float64)
    area_b = np.array([np.count_nonzero(m) for m in masks_b], dtype=np.float64)
    x0 = np.maximum(box_a[:, None, 0], box_b[None, :, 0])
    y0 = np.maximum(box_a[:, None, 1], box_b[None, :, 1])
    x1 = np.minimum(box_a[:, None, 2], box_b[None, :, 2])
    y1 = np.minimum(box_a[:, None, 3], box_b[None, :, 3])
    for i, j in zip(*np.nonzero((x1 > x0) & (y1 > y0))):
        ys, xs = slice(y0[i, j], y1[i, j]), slice(x0[i, j], x1[i, j])
        inter = float(np.count_nonzero(masks_a[i][ys, xs] & masks_b[j][ys, xs]))
        union = area_a[i] + area_b[j] - inter
        out[i, j] = inter / union if union > 0 else 0.0
    return out


def match_detections(scores: np.ndarray, ious: np.ndarray, gt_ignore: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy matching of one image's detections of one object (module docstring).

    Args:
        scores: (D,) detection scores.
        ious: (D, G) mask IoU with the GT instances of the same object.
        gt_ignore: (G,) bool, True for ignore regions.
        iou_threshold: minimum IoU of a match.
    Returns:
        (D,) int8: :data:`TP` (1), :data:`FP` (0) or :data:`IGNORED` (-1), in the input order.
    """
    D, G = ious.shape
    out = np.full(D, FP, dtype=np.int8)
    taken = np.zeros(G, bool)
    targets, ignore = ~gt_ignore, gt_ignore
    for d in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        free = targets & ~taken & (ious[d] >= iou_threshold)
        if free.any():
            g = int(np.argmax(np.where(free, ious[d], -1.0)))
            taken[g] = True
            out[d] = TP
        elif (ignore & (ious[d] >= iou_threshold)).any():
            out[d] = IGNORED
    return out


def average_precision(scores: np.ndarray, outcomes: np.ndarray, num_targets: int) -> float:
    """101-point interpolated AP (COCO) of one object at one IoU threshold.

    Args:
        scores: (D,) detection scores over all images.
        outcomes: (D,) :data:`TP` / :data:`FP` / :data:`IGNORED`.
        num_targets: targets of this object over all images (> 0).
    """
    keep = outcomes != IGNORED
    scores, tp = np.asarray(scores, dtype=np.float64)[keep], (outcomes[keep] == TP)
    if num_targets <= 0:
        raise InvalidInputError("average_precision: needs at least one target")
    if tp.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    tp = tp[order]
    tp_cum = np.cumsum(tp)
    fp_cum = np.cumsum(~tp)
    recall = tp_cum / num_targets
    precision = tp_cum / (tp_cum + fp_cum)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
    return float(sampled.mean())


@dataclass
class _ImageObject:
    scores: np.ndarray  # (D,)
    ious: np.ndarray  # (D, G)
    gt_ignore: np.ndarray  # (G,)


@dataclass(frozen=True)
class DetectionSummary:
    """Attributes:
        recall, precision: at ``match_iou`` (None when there are no targets / no detections).
        mask_ap: mean AP over objects with targets and IoU thresholds (None without targets).
        ap_per_iou: IoU threshold -> AP averaged over objects.
        per_object: object id -> {n_targets, n_detections, recall, precision, mask_ap}.
        n_targets, n_ignored_gt, n_detections, n_true_positives, n_false_positives, n_images.
    """

    recall: float | None
    precision: float | None
    mask_ap: float | None
    ap_per_iou: dict[float, float]
    per_object: dict[int, dict]
    n_targets: int
    n_ignored_gt: int
    n_detections: int
    n_true_positives: int
    n_false_positives: int
    n_images: int


@dataclass
class DetectionScorer:
    """Accumulates images (:meth:`add_image`) and computes the metrics (:meth:`summary`)."""

    config: DetectionMetricsConfig = field(default_factory=DetectionMetricsConfig)
    _entries: list[tuple[int, _ImageObject]] = field(default_factory=list)
    _n_images: int = 0

    def add_image(
        self, gt_object_ids: Sequence[int], gt_masks: Sequence[np.ndarray], gt_visib_fract: Sequence[float],
        det_object_ids: Sequence[int], det_scores: Sequence[float], det_masks: Sequence[np.ndarray],
    ) -> dict[str, int]:
        """Score one image.

        Args:
            gt_object_ids, gt_masks, gt_visib_fract: G ground-truth instances: object ids, (H, W)
                bool visible masks, visible fractions.
            det_object_ids, det_scores, det_masks: D detections: object ids, scores, (H, W) bool.
        Returns:
            counts at ``match_iou``: ``{"targets", "true_positives", "false_positives", "ignored"}``.
        Raises:
            InvalidInputError: inconsistent lengths or mask shapes.
        """
        G, D = len(gt_object_ids), len(det_object_ids)
        if len(gt_masks) != G or len(gt_visib_fract) != G or len(det_scores) != D or len(det_masks) != D:
            raise InvalidInputError(f"DetectionScorer.add_image: {G} GT ids / {len(gt_masks)} masks / {len(gt_visib_fract)} "
                                    f"visib; {D} detection ids / {len(det_scores)} scores / {len(det_masks)} masks")
        gt_ids, det_ids = np.asarray(gt_object_ids, dtype=np.int64), np.asarray(det_object_ids, dtype=np.int64)
        ignore = np.asarray(gt_visib_fract, dtype=np.float64) < self.config.visib_fract_min
        scores = np.asarray(det_scores, dtype=np.float64)
        counts = {"targets": int((~ignore).sum()), "true_positives": 0, "false_positives": 0, "ignored": 0}
        self._n_images += 1
        for obj in np.union1d(gt_ids, det_ids):
            g, d = np.flatnonzero(gt_ids == obj), np.flatnonzero(det_ids == obj)
            ious = pairwise_mask_iou([np.asarray(det_masks[i], bool) for i in d], [np.asarray(gt_masks[i], bool) for i in g])
            entry = _ImageObject(scores[d], ious.reshape(len(d), len(g)), ignore[g])
            self._entries.append((int(obj), entry))
            outcome = match_detections(entry.scores, entry.ious, entry.gt_ignore, self.config.match_iou)
            counts["true_positives"] += int((outcome == TP).sum())
            counts["false_positives"] += int((outcome == FP).sum())
            counts["ignored"] += int((outcome == IGNORED).sum())
        return counts

    def summary(self) -> DetectionSummary:
        cfg = self.config
        objects = sorted({o for o, _ in self._entries})
        per_object: dict[int, dict] = {}
        ap_table: dict[float, list[float]] = {t: [] for t in cfg.ap_iou_thresholds}
        totals = {"targets": 0, "ignored_gt": 0, "detections": 0, "tp": 0, "fp": 0}
        for obj in objects:
            entries = [e for o, e in self._entries if o == obj]
            n_targets = int(sum((~e.gt_ignore).sum() for e in entries))
            scores = np.concatenate([e.scores for e in entries])
            outcome = np.concatenate([match_detections(e.scores, e.ious, e.gt_ignore, cfg.match_iou) for e in entries])
            tp, fp = int((outcome == TP).sum()), int((outcome == FP).sum())
            totals["targets"] += n_targets
            totals["ignored_gt"] += int(sum(e.gt_ignore.sum() for e in entries))
            totals["detections"] += len(scores)
            totals["tp"] += tp
            totals["fp"] += fp
            aps = None
            if n_targets > 0:
                aps = []
                for t in cfg.ap_iou_thresholds:
                    o = np.concatenate([match_detections(e.scores, e.ious, e.gt_ignore, t) for e in entries])
                    aps.append(average_precision(scores, o, n_targets))
                    ap_table[t].append(aps[-1])
            per_object[obj] = {
                "n_targets": n_targets, "n_detections": len(scores),
                "recall": tp / n_targets if n_targets else None, "precision": tp / (tp + fp) if tp + fp else None,
                "mask_ap": float(np.mean(aps)) if aps else None,
            }
        ap_per_iou = {t: float(np.mean(v)) for t, v in ap_table.items() if v}
        return DetectionSummary(
            recall=totals["tp"] / totals["targets"] if totals["targets"] else None,
            precision=totals["tp"] / (totals["tp"] + totals["fp"]) if totals["tp"] + totals["fp"] else None,
            mask_ap=float(np.mean(list(ap_per_iou.values()))) if ap_per_iou else None,
            ap_per_iou=ap_per_iou, per_object=per_object, n_targets=totals["targets"], n_ignored_gt=totals["ignored_gt"],
            n_detections=totals["detections"], n_true_positives=totals["tp"], n_false_positives=totals["fp"],
            n_images=self._n_images,
        )
