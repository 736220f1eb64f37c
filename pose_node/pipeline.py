"""The pose pipeline behind the ROS node (ROS-free): views in, world-frame pose estimates out.

One :class:`PosePipeline` is built once (onboarding from the cache, the correspondence backend,
the refinement's renderer and features, warm-up), then called per synchronized multi-view frame:

    detection per view -> pose + 6x6 covariance per detection -> world frame
    -> association across views -> feature-metric refinement (all views at once)
    -> thresholds -> stable instance ids (tracking)

Association and refinement are :class:`pose_node.refinement.fusion.MultiViewFusion`
(``PipelineConfig.multiview`` selects refinement or association only).

Instance ids are stable across frames: each estimate takes the id of the nearest estimate of the
same object in the previous frame within ``tracking_gate_m`` (greedy, closest pairs first); the
others get fresh ids. A tracked symmetric object is reported as the symmetric equivalent closest
to its previous pose, so its frame does not jump between equivalent orientations.
:meth:`PosePipeline.reset` forgets the tracked state (re-detection).

Cost is bounded per view by ``PipelineConfig.max_proposals_per_view`` and per set by
``PipelineConfig.time_budget_ms`` (:mod:`pose_node.budget`: fewer proposals, then fewer pose
hypotheses and refinement starts, then fewer refinement rounds), applied in :func:`estimate_set`;
the level a set used is ``budget_level`` in its timings and :attr:`PosePipeline.last_budget`.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pose_node.budget import BudgetReport, StageLimits, TimeBudget, TimeBudgetConfig
from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Detection, ObjectModel, PoseEstimate, View
from pose_node.refinement.association import closest_equivalent, equivalent_with_covariance
from pose_node.ros.node_config import NodeConfig, PipelineConfig, Thresholds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of :class:`PosePipeline` beyond :class:`~pose_node.ros.node_config.PipelineConfig`.

    Attributes:
        weights_path: correspondence checkpoint (None: ``stage.default_weights_path()``).
        cache_dir: onboarding cache (None: the default cache).
        tracking_gate_m: an estimate keeps the id of the previous frame's nearest estimate of
            the same object when it is within this distance, metres.
        warm_up: encode every template when the pipeline is built.
    """

    weights_path: str | None = None
    cache_dir: str | None = None
    tracking_gate_m: float = 0.05
    warm_up: bool = True

    def __post_init__(self) -> None:
        if not self.tracking_gate_m > 0:
            raise InvalidInputError(f"PipelineOptions.tracking_gate_m: expected > 0 m, got {self.tracking_gate_m}")


def passes_thresholds(estimate: PoseEstimate, thresholds: Thresholds) -> bool:
    """Whether an estimate is certain enough to publish (``pose_score`` and the std limits)."""
    if estimate.score < thresholds.pose_score:
        return False
    var = np.diag(estimate.covariance)
    position_std_m = math.sqrt(max(float(var[:3].max()), 0.0))
    rotation_std_deg = math.degrees(math.sqrt(max(float(var[3:].max()), 0.0)))
    return position_std_m <= thresholds.max_position_std_m and rotation_std_deg <= thresholds.max_rotation_std_deg


@dataclass
class InstanceTracker:
    """Stable instance ids by nearest-neighbour association to the previous frame (see module docstring).

    Attributes:
        gate_m: association gate, metres.
        symmetries: object id -> (S, 4, 4) symmetry transforms: a tracked estimate is re-expressed
            as the equivalent closest to its previous pose (objects not listed: no symmetry).
    """

    gate_m: float
    symmetries: Mapping[int, np.ndarray] = field(default_factory=dict)
    _previous: list[PoseEstimate] = field(default_factory=list)
    _next_id: int = 0

    def reset(self) -> None:
        """Forget the previous frame; ids keep increasing (a new id never repeats an old one)."""
        self._previous = []

    def assign(self, estimates: Sequence[PoseEstimate]) -> list[PoseEstimate]:
        """The estimates with tracked ``instance_id`` s (input order kept)."""
        pairs = []
        for i, e in enumerate(estimates):
            for j, p in enumerate(self._previous):
                if p.object_id == e.object_id:
                    d = float(np.linalg.norm(p.T_world_object[:3, 3] - e.T_world_object[:3, 3]))
                    if d <= self.gate_m:
                        pairs.append((d, i, j))
        ids: dict[int, int] = {}
        used: set[int] = set()
        for _, i, j in sorted(pairs):
            if i not in ids and j not in used:
                ids[i] = self._previous[j].instance_id
                used.add(j)
        previous = {self._previous[j].instance_id: self._previous[j] for j in used}
        out = []
        for i, e in enumerate(estimates):
            if i not in ids:
                ids[i] = self._next_id
                self._next_id += 1
            elif e.object_id in self.symmetries:
                T, cov = equivalent_with_covariance(e.T_world_object, e.covariance, closest_equivalent(
                    e.T_world_object, previous[ids[i]].T_world_object, self.symmetries[e.object_id]))
                e = replace(e, T_world_object=T, covariance=cov)
            out.append(replace(e, instance_id=ids[i]))
        self._next_id = max([self._next_id] + [x + 1 for x in ids.values()])
        self._previous = out
        return out


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
        from pose_node.correspondence.stage import CorrespondenceStageConfig, build_estimator, check_weights
        from pose_node.detection.detector import Detector, DetectorConfig
        from pose_node.detection.matching import MatchingConfig
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
        )
        self.detector = Detector(self.models, detector_config, cache_dir=options.cache_dir)
        self.estimator = build_estimator(stage_config, self.detector.templates, [m.object_id for m in self.models])
        self.fusion = MultiViewFusion(self.models, FusionConfig(method=config.multiview, device=config.device))
        self.tracker = InstanceTracker(options.tracking_gate_m, {m.object_id: m.symmetries for m in self.models if len(m.symmetries) > 1})
        self.budget = TimeBudget(TimeBudgetConfig(time_budget_ms=config.time_budget_ms),
                                 nominal_limits(self.detector, self.estimator, self.fusion))
        self.last_budget: BudgetReport | None = None
        self.build_s = time.perf_counter() - started
        logger.info("pose pipeline: %d objects, mode %s, ready in %.1f s", len(self.models), config.mode, self.build_s)

    @classmethod
    def from_node_config(cls, config: NodeConfig, models: Sequence[ObjectModel],
                         options: PipelineOptions = PipelineOptions()) -> PosePipeline:
        """Build from the node's configuration (per-object threshold overrides included)."""
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

    def estimate(self, views: list[View]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """World-frame estimates of the known objects in one synchronized multi-view frame.

        Args:
            views: one per camera, ``camera.T_world_camera`` set; depth in RGB-D mode.
        Returns:
            Estimates (fused, thresholded, tracked ids) and milliseconds per step:
            ``proposals``, ``matching``, ``correspondence``, ``pnp`` (summed over views),
            ``association``, ``refinement`` (with its parts ``refinement_*``) and ``total``; plus
            counts (:data:`pose_node.budget.COUNT_KEYS`): ``proposals_total`` / ``_matched`` /
            ``_cut`` summed over views and the time budget's ``budget_level`` (also in
            :attr:`last_budget`).
        Raises:
            InvalidInputError: a view lacks depth in RGB-D mode.
        """
        started = time.perf_counter()
        with self._lock:
            thresholds = dict(self._thresholds)
        fused, timings, self.last_budget, _ = estimate_set(
            self.detector, self.estimator, self.fusion, views, self.budget, with_depth=self.config.mode == "rgbd",
            keep=lambda d: d.score >= thresholds[d.object_id].detection_score)
        fused = [e for e in fused if passes_thresholds(e, thresholds[e.object_id])]
        with self._lock:
            tracked = self.tracker.assign(fused)
        timings["total"] = (time.perf_counter() - started) * 1e3
        return tracked, timings


def nominal_limits(detector, estimator, fusion) -> StageLimits:
    """The stages' configured settings: the time budget's level 0."""
    refinement = fusion.config.refinement
    return StageLimits(detector.config.max_proposals_per_view, estimator.config.num_hypotheses, refinement.max_starts,
                       refinement.rounds)


def estimate_set(detector, estimator, fusion, views: list[View], budget: TimeBudget, *, with_depth: bool,
                 keep: Callable[[Detection], bool] | None = None, object_ids: Sequence[int] | None = None,
                 ) -> tuple[list[PoseEstimate], dict[str, float], BudgetReport, list]:
    """Detection, poses and fusion of one set under a time budget (:mod:`pose_node.budget`).

    The one place the budget is applied, shared by :class:`PosePipeline` and the evaluation's
    refinement stage (so ``pose_eval`` measures what the node runs).

    Args:
        detector, estimator, fusion: the pipeline's stages.
        views: the set. budget: its time budget (``time_budget_ms`` 0: nominal settings).
        with_depth: the fusion may use depth. keep: detections posed (None: all).
        object_ids: objects looked for (None: all the detector knows).
    Returns:
        Fused estimates, timings (milliseconds and counts, with ``budget_level``), the budget's
        report and each view's :class:`~pose_node.evaluation.runner.ViewDetections`.
    """
    from pose_node.correspondence.stage import detect_and_estimate

    session = budget.start_set(len(views))
    estimates, timings, per_view = detect_and_estimate(detector, estimator, views, object_ids=object_ids, keep=keep,
                                                       budget=session)
    fused, fusion_ms = fusion(views, estimates, with_depth=with_depth, limits=session.refinement_limits)
    session.record_fusion(fusion_ms)
    timings.update(fusion_ms)
    report = session.finish()
    timings["budget_level"] = float(report.level)
    return fused, timings, report, per_view


__all__ = ["InstanceTracker", "PipelineOptions", "PosePipeline", "estimate_set", "nominal_limits", "passes_thresholds"]
