"""The pose pipeline behind the ROS node (ROS-free): views in, world-frame pose estimates out.

One :class:`PosePipeline` is built once (onboarding from the cache, the correspondence backend,
warm-up), then called per synchronized multi-view frame:

    detection per view -> pose + 6x6 covariance per detection -> world frame
    -> interim fusion across views -> thresholds -> stable instance ids (tracking)

The interim fusion keeps, among estimates of the same object whose positions lie within
``fusion_gate_diameters`` x the object's diameter of each other, the one with the smallest
covariance trace. The multi-view refinement stage (a later issue) replaces it.

Instance ids are stable across frames: each estimate takes the id of the nearest estimate of the
same object in the previous frame within ``tracking_gate_m`` (greedy, closest pairs first); the
others get fresh ids. :meth:`PosePipeline.reset` forgets the tracked state (re-detection).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.ros.node_config import NodeConfig, PipelineConfig, Thresholds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOptions:
    """Settings of :class:`PosePipeline` beyond :class:`~pose_node.ros.node_config.PipelineConfig`.

    Attributes:
        weights_path: correspondence checkpoint (None: ``stage.default_weights_path()``).
        cache_dir: onboarding cache (None: the default cache).
        fusion_gate_diameters: estimates of one object closer than this many diameters are one
            instance (interim fusion, see the module docstring).
        tracking_gate_m: an estimate keeps the id of the previous frame's nearest estimate of
            the same object when it is within this distance, metres.
        warm_up: encode every template when the pipeline is built.
    """

    weights_path: str | None = None
    cache_dir: str | None = None
    fusion_gate_diameters: float = 0.3
    tracking_gate_m: float = 0.05
    warm_up: bool = True

    def __post_init__(self) -> None:
        if not self.fusion_gate_diameters > 0:
            raise InvalidInputError(f"PipelineOptions.fusion_gate_diameters: expected > 0, got {self.fusion_gate_diameters}")
        if not self.tracking_gate_m > 0:
            raise InvalidInputError(f"PipelineOptions.tracking_gate_m: expected > 0 m, got {self.tracking_gate_m}")


def fuse_by_distance(estimates: Sequence[PoseEstimate], diameters_m: Mapping[int, float],
                     gate_diameters: float) -> list[PoseEstimate]:
    """Interim cross-view fusion: one estimate per cluster of close estimates of the same object.

    Estimates are taken in order of increasing covariance trace; each one is kept unless a kept
    estimate of the same object lies within ``gate_diameters x diameter`` (position distance),
    in which case its views are added to that kept estimate's ``view_indices``.

    Args:
        estimates: world-frame estimates of all views.
        diameters_m: object id -> diameter, metres.
        gate_diameters: the gate as a fraction of the object's diameter.
    Returns:
        The kept estimates (most certain first).
    """
    order = sorted(range(len(estimates)), key=lambda i: float(np.trace(estimates[i].covariance)))
    kept: list[PoseEstimate] = []
    for i in order:
        e = estimates[i]
        gate = gate_diameters * diameters_m[e.object_id]
        t = e.T_world_object[:3, 3]
        for k, other in enumerate(kept):
            if other.object_id == e.object_id and np.linalg.norm(other.T_world_object[:3, 3] - t) <= gate:
                views = tuple(sorted(set(other.view_indices) | set(e.view_indices)))
                kept[k] = replace(other, view_indices=views)
                break
        else:
            kept.append(e)
    return kept


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
    """

    gate_m: float
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
        out = []
        for i, e in enumerate(estimates):
            if i not in ids:
                ids[i] = self._next_id
                self._next_id += 1
            out.append(replace(e, instance_id=ids[i]))
        self._next_id = max([self._next_id] + [x + 1 for x in ids.values()])
        self._previous = out
        return out


class PosePipeline:
    """Detection + per-detection pose + interim fusion + tracking (module docstring).

    Args:
        models: the known objects.
        config: mode, device, backend and default thresholds.
        object_thresholds: object id -> thresholds with its overrides (default: ``config.thresholds``).
        options: see :class:`PipelineOptions`.
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

        self.models = list(models)
        if not self.models:
            raise InvalidInputError("PosePipeline: needs at least one object model")
        self.config = config
        self.options = options
        self._lock = threading.Lock()
        self._thresholds = {m.object_id: config.thresholds for m in self.models}
        self._thresholds.update(dict(object_thresholds or {}))
        self._diameters = {m.object_id: float(m.diameter_m) for m in self.models}
        stage_config = CorrespondenceStageConfig(weights_path=options.weights_path, backend=config.backend,
                                                 device=config.device, warm_up=options.warm_up)
        check_weights(stage_config)  # fail before onboarding
        started = time.perf_counter()
        detector_config = DetectorConfig(
            mode=config.mode, device=config.device,
            matching=MatchingConfig(score_threshold=config.thresholds.detection_score),
            object_score_thresholds=tuple((i, t.detection_score) for i, t in self._thresholds.items()),
        )
        self.detector = Detector(self.models, detector_config, cache_dir=options.cache_dir)
        self.estimator = build_estimator(stage_config, self.detector.templates, [m.object_id for m in self.models])
        self.tracker = InstanceTracker(options.tracking_gate_m)
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
            ``fusion`` and ``total``.
        Raises:
            InvalidInputError: a view lacks depth in RGB-D mode.
        """
        from pose_node.correspondence.stage import detect_and_estimate

        started = time.perf_counter()
        with self._lock:
            thresholds = dict(self._thresholds)
        estimates, timings, _ = detect_and_estimate(
            self.detector, self.estimator, views, keep=lambda d: d.score >= thresholds[d.object_id].detection_score)
        t_fusion = time.perf_counter()
        fused = fuse_by_distance(estimates, self._diameters, self.options.fusion_gate_diameters)
        fused = [e for e in fused if passes_thresholds(e, thresholds[e.object_id])]
        with self._lock:
            tracked = self.tracker.assign(fused)
        timings["fusion"] = (time.perf_counter() - t_fusion) * 1e3
        timings["total"] = (time.perf_counter() - started) * 1e3
        return tracked, timings


__all__ = ["InstanceTracker", "PipelineOptions", "PosePipeline", "fuse_by_distance", "passes_thresholds"]
