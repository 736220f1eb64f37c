"""The pose pipeline behind the ROS node (ROS-free): views in, world-frame pose estimates out.

One :class:`PosePipeline` is built once (onboarding from the cache, the correspondence backend,
the refinement's renderer and features, warm-up), then called per synchronized multi-view frame:

    detection per view -> pose + 6x6 covariance per detection -> world frame
    -> association across views -> feature-metric refinement (all views at once)
    -> thresholds -> stable instance ids (tracking)

Association and refinement are :class:`pose_node.refinement.fusion.MultiViewFusion`
(``PipelineConfig.multiview`` selects refinement or association only).

Instance ids are numbered per object and stable across frames
(:class:`~pose_node.pipeline.tracker.InstanceTracker`): each
estimate takes the id of the nearest recently seen instance of the same object within
``tracking_gate_m``; an id is given again only after its instance has been unseen for
``name_reuse_s``. A tracked symmetric object is reported as the symmetric equivalent closest to its
previous pose, so its frame does not jump between equivalent orientations.
:meth:`PosePipeline.reset` forgets the tracked state (re-detection; ids start again at 0).

Cost is bounded per view by ``PipelineConfig.max_proposals_per_view`` and per set by
``PipelineConfig.time_budget_ms`` (:mod:`pose_node.pipeline.budget`: fewer proposals, then fewer pose
hypotheses and refinement starts, then fewer refinement rounds), applied in :func:`pose_node.pipeline.estimate.estimate_set`;
the level a set used is ``budget_level`` in its timings and :attr:`PosePipeline.last_budget`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.pipeline.budget import BudgetReport, TimeBudget, TimeBudgetConfig
from pose_node.pipeline.config import PipelineConfig, Thresholds
from pose_node.pipeline.estimate import estimate_set, nominal_limits
from pose_node.pipeline.tracker import InstanceTracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of :class:`PosePipeline` beyond :class:`~pose_node.pipeline.config.PipelineConfig`.

    Attributes:
        weights_path: correspondence checkpoint (None: :func:`pose_node.pipeline.estimate.default_weights_path`).
        cache_dir: onboarding cache (None: the default cache).
        tracking_gate_m: an estimate keeps the id of the nearest recently seen instance of the
            same object when it is within this distance, metres.
        name_reuse_s: an instance unseen for this long (header-stamp time, seconds) is
            forgotten and its id may name a new instance.
        warm_up: encode every template when the pipeline is built.
    """

    weights_path: str | None = None
    cache_dir: str | None = None
    tracking_gate_m: float = 0.05
    name_reuse_s: float = 2.0
    warm_up: bool = True

    def __post_init__(self) -> None:
        if not self.tracking_gate_m > 0:
            raise InvalidInputError(f"PipelineOptions.tracking_gate_m: expected > 0 m, got {self.tracking_gate_m}")
        if not self.name_reuse_s >= 0:
            raise InvalidInputError(f"PipelineOptions.name_reuse_s: expected >= 0 s, got {self.name_reuse_s}")


@dataclass(frozen=True)
class UnitReport:
    """An object whose mesh size disagrees with the depth of its first detection by a unit factor.

    Attributes:
        object_id: the object.
        declared_units: the units its mesh was declared in.
        likely_units: the units that explain the sizes (``"unknown"`` when none does).
        size_ratio: model diameter / extent of the detection's depth points (about 1-2 when
            the units are right: a view shows part of the object).
        view_name: the view of that detection.
    """

    object_id: int
    declared_units: str
    likely_units: str
    size_ratio: float
    view_name: str


# Visible extent vs model diameter: a partial view shows 0.5-1 diameter, so only a ratio beyond
# this factor is a unit error (units differ by 10, 100, 1000, or 2.54 which this cannot tell).
UNIT_CHECK_TOLERANCE = 3.5


def detection_units(model: ObjectModel, view: View, detection, tolerance: float = UNIT_CHECK_TOLERANCE) -> tuple[float, str | None] | None:
    """Compare a model's size with the depth its detection covers.

    Args:
        model: the detected object (``diameter_m``, ``source_units``).
        view: the detection's view (depth (H, W) metres, camera K).
        detection: a :class:`~pose_node.core.types.Detection` with a mask.
    Returns:
        ``(model diameter / observed extent, likely units or None when the declared ones fit)``,
        or None when there is nothing to measure (no mask, no depth, too few depth pixels).
    """
    from pose_node.core.units import likely_units, observed_extent_m

    if detection.mask is None or view.depth is None:
        return None
    extent_m = observed_extent_m(view.depth, detection.mask, view.camera.K)
    if extent_m is None or extent_m <= 0:
        return None
    ratio = model.diameter_m / extent_m
    return ratio, likely_units(model.source_units, ratio, tolerance)


def passes_thresholds(estimate: PoseEstimate, thresholds: Thresholds) -> bool:
    """Whether an estimate is certain enough to publish (``pose_score`` and the std limits)."""
    if estimate.score < thresholds.pose_score:
        return False
    var = np.diag(estimate.covariance)
    position_std_m = math.sqrt(max(float(var[:3].max()), 0.0))
    rotation_std_deg = math.degrees(math.sqrt(max(float(var[3:].max()), 0.0)))
    return position_std_m <= thresholds.max_position_std_m and rotation_std_deg <= thresholds.max_rotation_std_deg


class PosePipeline:
    """Detection + per-detection pose + multi-view fusion + tracking (module docstring).

    Args:
        models: the known objects.
        config: mode, device, backend and default thresholds.
        object_thresholds: object id -> thresholds with its overrides (default: ``config.thresholds``).
        options: see :class:`PipelineOptions`.
    Attributes:
        budget: the per-set time budget (its ``clock`` may be replaced, e.g. in tests).
        last_budget: how the last set used it (None before the first set).
    Raises:
        InvalidInputError: no models or invalid settings.
        StageUnavailableError: weights missing, no renderer for onboarding, ...
    """

    def __init__(self, models: Sequence[ObjectModel], config: PipelineConfig = PipelineConfig(), *,
                 object_thresholds: Mapping[int, Thresholds] | None = None,
                 options: PipelineOptions = PipelineOptions()) -> None:
        from pose_node.pipeline.estimate import CorrespondenceStageConfig, build_estimator, check_weights
        from pose_node.detection.detector import Detector, DetectorConfig
        from pose_node.detection.matching import MatchingConfig
        from pose_node.detection.multiview import MultiViewEvidenceConfig
        from pose_node.refinement.fusion import FusionConfig, MultiViewFusion

        self.models = list(models)
        if not self.models:
            raise InvalidInputError("PosePipeline: needs at least one object model")
        self.config = config
        self.options = options
        self._lock = threading.Lock()
        self._thresholds = {m.object_id: config.thresholds for m in self.models}
        self._thresholds.update(dict(object_thresholds or {}))
        stage_config = CorrespondenceStageConfig(weights_path=options.weights_path, backend=config.backend,
                                                 device=config.device, warm_up=options.warm_up)
        check_weights(stage_config)  # fail before onboarding
        started = time.perf_counter()
        detector_config = DetectorConfig(
            mode=config.mode, device=config.device,
            matching=MatchingConfig(score_threshold=config.thresholds.detection_score),
            max_proposals_per_view=config.max_proposals_per_view,
            object_score_thresholds=tuple((i, t.detection_score) for i, t in self._thresholds.items()),
            multiview=MultiViewEvidenceConfig(min_views=config.min_supporting_views),
        )
        self.detector = Detector(self.models, detector_config, cache_dir=options.cache_dir)
        self.estimator = build_estimator(stage_config, self.detector.templates, [m.object_id for m in self.models])
        fusion_config = FusionConfig(method=config.multiview, device=config.device)
        fusion_config = replace(fusion_config, refinement=replace(fusion_config.refinement, min_supporting_views=config.min_supporting_views))
        self.fusion = MultiViewFusion(self.models, fusion_config)
        self.tracker = InstanceTracker(options.tracking_gate_m, {m.object_id: m.symmetries for m in self.models if len(m.symmetries) > 1},
                                       name_reuse_s=options.name_reuse_s)
        self._units_checked: set[int] = set()
        self._unit_reports: list[UnitReport] = []
        self.budget = TimeBudget(TimeBudgetConfig(time_budget_ms=config.time_budget_ms),
                                 nominal_limits(self.detector, self.estimator, self.fusion))
        self.last_budget: BudgetReport | None = None
        self.build_s = time.perf_counter() - started
        logger.info("pose pipeline: %d objects, mode %s, ready in %.1f s", len(self.models), config.mode, self.build_s)

    @classmethod
    def from_node_config(cls, config, models: Sequence[ObjectModel],
                         options: PipelineOptions | None = None) -> PosePipeline:
        """Build from the node's configuration, a :class:`pose_node.ros.node_config.NodeConfig`
        (per-object threshold overrides included; ``options`` default: the file's ``tracking``
        section). Only its attributes are read: the pipeline never imports :mod:`pose_node.ros`."""
        if options is None:
            options = PipelineOptions(tracking_gate_m=config.tracking.gate_m, name_reuse_s=config.tracking.name_reuse_s)
        return cls(models, config.pipeline, object_thresholds={o.object_id: config.thresholds_for(o.object_id)
                                                               for o in config.objects}, options=options)

    def thresholds(self, object_id: int) -> Thresholds:
        return self._thresholds[object_id]

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Change every object's publishing thresholds at runtime (``pose_score``, std limits and
        ``detection_score``; detections are also filtered by the detector's build-time threshold,
        so lowering ``detection_score`` below the configured value has no effect)."""
        with self._lock:
            self._thresholds = {i: thresholds for i in self._thresholds}

    def reset(self) -> None:
        """Drop tracked state: the next frame is associated to nothing (fresh instance ids)."""
        with self._lock:
            self.tracker.reset()

    def pop_unit_reports(self) -> list[UnitReport]:
        """Unit mismatches found since the last call (each object is checked once, on its first
        RGB-D detection with enough depth)."""
        with self._lock:
            reports, self._unit_reports = self._unit_reports, []
        return reports

    def _check_units(self, views: list[View], per_view, thresholds: Mapping[int, Thresholds]) -> None:
        models = {m.object_id: m for m in self.models}
        for view_detections in per_view:
            for d in view_detections.detections:
                view = views[d.view_index]
                if d.object_id in self._units_checked or d.score < thresholds[d.object_id].detection_score:
                    continue
                found = detection_units(models[d.object_id], view, d)
                if found is None:
                    continue
                self._units_checked.add(d.object_id)
                ratio, likely = found
                model = models[d.object_id]
                if likely is not None:
                    logger.warning("object %s: mesh diameter %.3g times the depth extent of its detection in %s: "
                                   "units %s declared, %s likely", model.name, ratio, view.name, model.source_units, likely)
                    with self._lock:
                        self._unit_reports.append(UnitReport(d.object_id, model.source_units, likely, ratio, view.name))

    def estimate(self, views: list[View]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """World-frame estimates of the known objects in one synchronized multi-view frame.

        Args:
            views: one per camera, ``camera.T_world_camera`` set; depth in RGB-D mode.
        Returns:
            Estimates (fused, thresholded, tracked ids) and milliseconds per step:
            ``proposals``, ``matching``, ``correspondence``, ``pnp`` (summed over views),
            ``association``, ``refinement`` (with its parts ``refinement_*``) and ``total``; plus
            counts (:data:`pose_node.pipeline.budget.COUNT_KEYS`): ``proposals_total`` / ``_matched`` /
            ``_cut`` summed over views and the time budget's ``budget_level`` (also in
            :attr:`last_budget`).
        Raises:
            InvalidInputError: a view lacks depth in RGB-D mode.
        """
        started = time.perf_counter()
        with self._lock:
            thresholds = dict(self._thresholds)
        fused, timings, self.last_budget, per_view = estimate_set(
            self.detector, self.estimator, self.fusion, views, self.budget, with_depth=self.config.mode == "rgbd",
            keep=lambda d: d.score >= thresholds[d.object_id].detection_score)
        if self.config.mode == "rgbd":
            self._check_units(views, per_view, thresholds)
        fused = [e for e in fused if passes_thresholds(e, thresholds[e.object_id])]
        with self._lock:
            tracked = self.tracker.assign(fused, min((v.stamp_ns for v in views), default=0))
        timings["total"] = (time.perf_counter() - started) * 1e3
        return tracked, timings


__all__ = ["PipelineOptions", "PosePipeline", "UnitReport", "detection_units", "passes_thresholds"]
