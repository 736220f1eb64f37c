"""BOP19 scoring: per-image error computation, greedy matching, recalls and Average Recall.

Follows bop_toolkit (``eval_calc_errors.py`` with ``n_top = -1``, ``eval_calc_scores.py`` with
``visib_gt_min = -1``, ``pose_matching.match_poses``, ``score.calc_localization_scores``):

1. Per image and target object, only the ``inst_count`` estimates with the highest score are
   evaluated; each is compared with every GT instance of the same object in the image.
2. Valid GT: per target object, the ``inst_count`` GT instances with the largest ``visib_fract``.
3. For every error type and threshold separately, estimates (by decreasing score) are greedily
   matched to the valid, not yet matched GT with the lowest error below the threshold.
4. Recall = matched valid GT / all valid GT (unmatched GT are misses). AR_VSD is the mean recall
   over 10 taus x 10 thresholds, AR_MSSD / AR_MSPD over 10 thresholds; AR is their mean.

Errors are thresholded in the normalized form BOP uses: VSD as is, MSSD / diameter, MSPD * 640 /
image width, ADD(-S) / diameter. Skip rules as bop_toolkit: MSSD and ADD(-S) are inf when the
translations differ by a diameter or more; VSD is 1 when the bounding-sphere projections do not
overlap.
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pose_node.core.errors import StageUnavailableError
from pose_node.core.types import ObjectModel
from pose_node.evaluation import metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringConfig:
    """Thresholds of the BOP19 protocol (defaults) and the ADD(-S) recall threshold."""

    vsd_taus: tuple[float, ...] = metrics.VSD_TAUS  # fraction of diameter
    vsd_thresholds: tuple[float, ...] = metrics.VSD_THRESHOLDS
    vsd_delta_m: float = metrics.VSD_DELTA_M
    mssd_thresholds: tuple[float, ...] = metrics.MSSD_THRESHOLDS  # fraction of diameter
    mspd_thresholds_px: tuple[float, ...] = metrics.MSPD_THRESHOLDS_PX  # at 640 px width
    add_threshold: float = 0.1  # fraction of diameter, for ADD-S / ADD(-S) recall


@dataclass(frozen=True)
class ObjectEvalInfo:
    """What scoring needs to know about one object.

    Attributes:
        points: (N, 3) model vertices, metres.
        symmetries: (S, 4, 4) T_obj_objsym incl. identity (discretized continuous ones too).
        diameter_m: diameter, metres (BOP: from models_info.json).
    """

    points: np.ndarray
    symmetries: np.ndarray
    diameter_m: float
    hull: np.ndarray | None = None  # (H, 3) convex-hull vertices of points (MSSD); default computed

    def __post_init__(self) -> None:
        if self.hull is None:
            object.__setattr__(self, "hull", metrics.hull_points(self.points))

    @property
    def is_symmetric(self) -> bool:
        return len(self.symmetries) > 1

    @classmethod
    def from_model(cls, model: ObjectModel, diameter_m: float | None = None) -> "ObjectEvalInfo":
        return cls(np.asarray(model.vertices, dtype=np.float64), np.asarray(model.symmetries, dtype=np.float64),
                   float(model.diameter_m if diameter_m is None else diameter_m))


@dataclass(frozen=True)
class GtInstance:
    """A GT instance in one image: ``T_camera_object`` (4, 4) metres and its visible fraction
    (NaN when unknown; only where it cannot matter: every GT of each target object is valid)."""

    obj_id: int
    T_camera_object: np.ndarray
    visib_fract: float


@dataclass(frozen=True)
class ImageEstimate:
    """An estimate expressed in one image's camera: ``T_camera_object`` (4, 4) metres."""

    obj_id: int
    score: float
    T_camera_object: np.ndarray


@dataclass
class _ErrorRecord:
    est_index: int
    obj_id: int
    score: float
    # gt_id -> normalized errors
    vsd: dict[int, np.ndarray] = field(default_factory=dict)  # (T,) per tau
    mssd: dict[int, float] = field(default_factory=dict)  # / diameter
    mspd: dict[int, float] = field(default_factory=dict)  # * 640 / width
    add_s: dict[int, float] = field(default_factory=dict)  # / diameter
    add_or_s: dict[int, float] = field(default_factory=dict)  # ADD, or ADD-S if symmetric; / diameter


def match_poses(records: Sequence[_ErrorRecord], errors_of: str, threshold: float, gt_valid: Sequence[bool],
                tau_index: int | None = None) -> set[int]:
    """Greedy matching of ``bop_toolkit pose_matching.match_poses`` for one threshold.

    Estimates in decreasing score order each take the valid, unmatched GT with the lowest error
    strictly below ``threshold``. Returns the set of matched GT ids.
    """
    matched: set[int] = set()
    for rec in sorted(records, key=lambda r: r.score, reverse=True):
        best_gt, best_err = -1, threshold
        for gt_id, err in getattr(rec, errors_of).items():
            e = float(err[tau_index]) if tau_index is not None else float(err)
            if gt_valid[gt_id] and gt_id not in matched and e < best_err:
                best_gt, best_err = gt_id, e
        if best_gt >= 0:
            matched.add(best_gt)
    return matched


def valid_gt_mask(gts: Sequence[GtInstance], targets: Mapping[int, int]) -> list[bool]:
    """``visib_gt_min = -1``: per target object, its ``inst_count`` most visible GT are valid."""
    order = sorted(range(len(gts)), key=lambda i: gts[i].visib_fract, reverse=True)
    to_add = dict(targets)
    valid = [False] * len(gts)
    for gt_id in order:
        obj = gts[gt_id].obj_id
        if to_add.get(obj, 0) > 0:
            valid[gt_id] = True
            to_add[obj] -= 1
    return valid


@dataclass
class _Counts:
    """True positives per threshold and valid GT count, for one object."""

    n_gt: int = 0
    vsd: np.ndarray | None = None  # (T_tau, T_th)
    mssd: np.ndarray | None = None
    mspd: np.ndarray | None = None
    add_s: int = 0
    add_or_s: int = 0


@dataclass(frozen=True)
class ScoreSummary:
    """Recalls of one evaluation.

    AR_VSD (and so AR) is None when VSD could not be computed (no depth renderer or no test depth
    for an image that had estimates); ``vsd_unavailable_reason`` says why.
    """

    AR: float | None
    AR_VSD: float | None
    AR_MSSD: float
    AR_MSPD: float
    recall_vsd: np.ndarray | None  # (T_tau, T_th)
    recall_mssd: np.ndarray  # (T,)
    recall_mspd: np.ndarray  # (T,)
    ADD_S_recall: float
    ADD_or_S_recall: float
    n_gt: int
    n_images: int
    n_estimates_evaluated: int
    per_object: dict[int, dict]
    vsd_unavailable_reason: str | None = None


class BopScorer:
    """Accumulates per-image errors and matches, then summarizes recalls (BOP19 localization).

    Args:
        objects: obj_id -> :class:`ObjectEvalInfo`.
        depth_renderer: for VSD; None = VSD unavailable (only matters when estimates exist).
        config: thresholds.
    """

    def __init__(self, objects: Mapping[int, ObjectEvalInfo], depth_renderer: metrics.DepthRenderer | None = None,
                 config: ScoringConfig = ScoringConfig()):
        self.objects = dict(objects)
        self.depth_renderer = depth_renderer
        self.config = config
        self._counts: dict[int, _Counts] = {}
        self._n_images = 0
        self._n_estimates = 0
        self._vsd_unavailable: str | None = None

    def _obj_counts(self, obj_id: int) -> _Counts:
        if obj_id not in self._counts:
            c = self.config
            self._counts[obj_id] = _Counts(
                vsd=np.zeros((len(c.vsd_taus), len(c.vsd_thresholds)), dtype=np.int64),
                mssd=np.zeros(len(c.mssd_thresholds), dtype=np.int64),
                mspd=np.zeros(len(c.mspd_thresholds_px), dtype=np.int64),
            )
        return self._counts[obj_id]

    def add_image(
        self,
        K: np.ndarray,
        width: int,
        height: int,
        gts: Sequence[GtInstance],
        targets: Mapping[int, int],
        estimates: Sequence[ImageEstimate],
        depth_test: np.ndarray | None = None,
        key: Hashable = None,
    ) -> None:
        """Evaluate the estimates of one image.

        Args:
            K: (3, 3) intrinsics; width, height: image size, pixels.
            gts: every GT instance of the image (BOP scene_gt order).
            targets: obj_id -> inst_count for this image.
            estimates: estimates in this camera's frame (objects not in ``targets`` are ignored).
            depth_test: (H, W) metres, the image's depth (for VSD), or None.
            key: identifies the image in log messages.
        """
        cfg = self.config
        self._n_images += 1
        valid = valid_gt_mask(gts, targets)
        for gt, ok in zip(gts, valid):
            if ok:
                self._obj_counts(gt.obj_id).n_gt += 1
        for obj_id in targets:
            self._obj_counts(obj_id)
        by_obj: dict[int, list[tuple[int, ImageEstimate]]] = {}
        for i, est in enumerate(estimates):
            if est.obj_id in targets:
                by_obj.setdefault(est.obj_id, []).append((i, est))
        gt_depth_cache: dict[int, np.ndarray] = {}
        for obj_id, inst_count in targets.items():
            ests = sorted(by_obj.get(obj_id, []), key=lambda ie: ie[1].score, reverse=True)[:inst_count]
            gt_ids = [g for g, gt in enumerate(gts) if gt.obj_id == obj_id]
            if not ests or not gt_ids:
                continue
            if obj_id not in self.objects:
                raise KeyError(f"no model information for object {obj_id} (image {key})")
            info = self.objects[obj_id]
            d = info.diameter_m
            vsd_ok = self.depth_renderer is not None and depth_test is not None
            if not vsd_ok and self._vsd_unavailable is None:
                self._vsd_unavailable = "no depth renderer" if self.depth_renderer is None else f"no test depth image ({key})"
                logger.warning("VSD unavailable: %s", self._vsd_unavailable)
            records = []
            for est_index, est in ests:
                self._n_estimates += 1
                rec = _ErrorRecord(est_index, obj_id, float(est.score))
                T_e = np.asarray(est.T_camera_object, dtype=np.float64)
                for g in gt_ids:
                    T_g = np.asarray(gts[g].T_camera_object, dtype=np.float64)
                    spheres_overlap = np.linalg.norm(T_e[:3, 3] - T_g[:3, 3]) < d
                    if spheres_overlap:
                        rec.mssd[g] = float(metrics.mssd(T_e, T_g, info.hull, info.symmetries)) / d
                        rec.add_s[g] = float(metrics.add_s(T_e, T_g, info.points)) / d
                        plain = metrics.add_s if info.is_symmetric else metrics.add
                        rec.add_or_s[g] = rec.add_s[g] if info.is_symmetric else float(plain(T_e, T_g, info.points)) / d
                    else:
                        rec.mssd[g] = rec.add_s[g] = rec.add_or_s[g] = np.inf
                    rec.mspd[g] = float(metrics.mspd(T_e, T_g, K, info.points, info.symmetries)) * metrics.mspd_scale(width)
                    if vsd_ok:
                        try:
                            if g not in gt_depth_cache and metrics.sphere_projections_overlap(0.5 * d, T_e[:3, 3], T_g[:3, 3]):
                                gt_depth_cache[g] = self.depth_renderer(obj_id, K, T_g, width, height)
                            rec.vsd[g] = metrics.vsd(self.depth_renderer, obj_id, T_e, T_g, depth_test, K, d,
                                                     cfg.vsd_taus, cfg.vsd_delta_m, depth_gt=gt_depth_cache.get(g))
                        except StageUnavailableError as exc:  # e.g. no GL context on this machine
                            self._vsd_unavailable = str(exc)
                            self.depth_renderer = None
                            vsd_ok = False
                            logger.warning("VSD unavailable: %s", exc)
                records.append(rec)
            counts = self._obj_counts(obj_id)
            for j, th in enumerate(cfg.mssd_thresholds):
                counts.mssd[j] += len(match_poses(records, "mssd", th, valid))
            for j, th in enumerate(cfg.mspd_thresholds_px):
                counts.mspd[j] += len(match_poses(records, "mspd", th, valid))
            if vsd_ok:
                for i in range(len(cfg.vsd_taus)):
                    for j, th in enumerate(cfg.vsd_thresholds):
                        counts.vsd[i, j] += len(match_poses(records, "vsd", th, valid, tau_index=i))
            counts.add_s += len(match_poses(records, "add_s", cfg.add_threshold, valid))
            counts.add_or_s += len(match_poses(records, "add_or_s", cfg.add_threshold, valid))

    def summary(self) -> ScoreSummary:
        """Recalls over everything added so far (recall 0 when there is no valid GT, as BOP)."""
        cfg = self.config
        n_gt = sum(c.n_gt for c in self._counts.values())
        zero_vsd = np.zeros((len(cfg.vsd_taus), len(cfg.vsd_thresholds)))

        def recall(tp, n):
            return np.asarray(tp, dtype=np.float64) / n if n > 0 else np.zeros_like(np.asarray(tp, dtype=np.float64))

        tot = lambda name: sum((getattr(c, name) for c in self._counts.values()), start=0)  # noqa: E731
        vsd_available = self._vsd_unavailable is None
        r_vsd = recall(tot("vsd"), n_gt) if self._counts else zero_vsd
        r_mssd = recall(tot("mssd"), n_gt) if self._counts else np.zeros(len(cfg.mssd_thresholds))
        r_mspd = recall(tot("mspd"), n_gt) if self._counts else np.zeros(len(cfg.mspd_thresholds_px))
        ar_vsd = float(np.mean(r_vsd)) if vsd_available else None
        ar_mssd, ar_mspd = float(np.mean(r_mssd)), float(np.mean(r_mspd))
        per_object = {}
        for obj_id, c in sorted(self._counts.items()):
            o_vsd = float(np.mean(recall(c.vsd, c.n_gt))) if vsd_available else None
            o_mssd = float(np.mean(recall(c.mssd, c.n_gt)))
            o_mspd = float(np.mean(recall(c.mspd, c.n_gt)))
            per_object[obj_id] = {
                "AR": None if o_vsd is None else float(np.mean([o_vsd, o_mssd, o_mspd])),
                "AR_VSD": o_vsd, "AR_MSSD": o_mssd, "AR_MSPD": o_mspd,
                "recall_mssd": o_mssd,
                "ADD_S_recall": float(recall(c.add_s, c.n_gt)),
                "n_gt": c.n_gt,
            }
        return ScoreSummary(
            AR=None if ar_vsd is None else float(np.mean([ar_vsd, ar_mssd, ar_mspd])),
            AR_VSD=ar_vsd, AR_MSSD=ar_mssd, AR_MSPD=ar_mspd,
            recall_vsd=r_vsd if vsd_available else None, recall_mssd=r_mssd, recall_mspd=r_mspd,
            ADD_S_recall=float(recall(tot("add_s"), n_gt)), ADD_or_S_recall=float(recall(tot("add_or_s"), n_gt)),
            n_gt=n_gt, n_images=self._n_images, n_estimates_evaluated=self._n_estimates, per_object=per_object,
            vsd_unavailable_reason=self._vsd_unavailable,
        )


__all__ = ["BopScorer", "GtInstance", "ImageEstimate", "ObjectEvalInfo", "ScoreSummary", "ScoringConfig",
           "match_poses", "valid_gt_mask"]
