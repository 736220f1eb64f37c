"""The detect-and-estimate loop of one multi-view set, and how its pose stage is built.

Per view: detection (:class:`~pose_node.detection.detector.Detector`), then a pose and a 6x6
covariance per kept detection in its camera
(:class:`~pose_node.correspondence.estimator.CorrespondenceEstimator`), mapped into the world
frame (:func:`detect_and_estimate`); then association and refinement across the views under the
set's time budget (:func:`estimate_set`). The node's :class:`~pose_node.pipeline.PosePipeline` and
the evaluation's stages (:mod:`pose_node.evaluation.stages`) both run these functions, so
``pose_eval`` measures what the node runs.

The network comes from a :class:`CorrespondenceStageConfig` or the shipped
``models/correspondence_effl0.pt`` through the fastest available backend
(:func:`pose_node.correspondence.backends.create_backend`); templates are encoded at build time,
so no frame pays for them.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pose_node.core.errors import StageUnavailableError
from pose_node.core.resources import shipped_file
from pose_node.core.types import Detection, PoseEstimate, View
from pose_node.correspondence.estimator import CorrespondenceConfig, CorrespondenceEstimator
from pose_node.pipeline.budget import BudgetReport, BudgetSession, StageLimits, TimeBudget

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewDetections:
    """The detections of one view and the time spent on it.

    Attributes:
        detections: the view's detections (any order).
        timings_ms: step -> milliseconds for this view (``"proposals"``, ``"matching"``), and the
            detector's proposal counts (:data:`pose_node.pipeline.budget.COUNT_KEYS`, not milliseconds).
    """

    detections: tuple[Detection, ...]
    timings_ms: Mapping[str, float]


WEIGHTS_FILE_NAME = "correspondence_effl0.pt"
METADATA_FILE_NAME = "correspondence_effl0.json"


@dataclass(frozen=True)
class CorrespondenceStageConfig:
    """What the per-detection pose stage (backend + :class:`CorrespondenceEstimator`) is built from.

    Attributes:
        weights_path: checkpoint (None: the shipped ``models/correspondence_effl0.pt``).
        backend: ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
        device: ``cpu`` or ``cuda[:N]``.
        estimator: per-detection settings.
        warm_up: encode every template when the estimator is built.
    """

    weights_path: str | None = None
    backend: str = "auto"
    device: str = "cpu"
    estimator: CorrespondenceConfig = field(default_factory=CorrespondenceConfig)
    warm_up: bool = True


def default_weights_path() -> Path:
    return shipped_file(WEIGHTS_FILE_NAME)


def covariance_scales(weights_path: Path) -> dict[str, float]:
    """The calibrated covariance factors stored next to the weights (``<stem>.json``), if any."""
    meta = weights_path.with_suffix(".json")
    if not meta.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(meta.read_text()).get("covariance_scale", {}).items()}


def detect_and_estimate(
    detector, estimator: CorrespondenceEstimator, views: Sequence[View], *, object_ids: Sequence[int] | None = None,
    keep: Callable[[Detection], bool] | None = None, budget: BudgetSession | None = None,
) -> tuple[list[PoseEstimate], dict[str, float], list[ViewDetections]]:
    """Per view: detect, keep the detections ``keep`` accepts, pose each one; then keep what the
    other views confirm (:meth:`~pose_node.detection.detector.Detector.confirm`) and map it to the world.

    Shared by the evaluation's stages and :class:`pose_node.pipeline.PosePipeline`.

    Args:
        detector: a built :class:`~pose_node.detection.detector.Detector`.
        object_ids: look only for these objects (None: all the detector knows).
        keep: filter applied to the detections before the pose stage (None: keep all).
        budget: the set's time budget, asked for the proposal cap before each view's detection
            and for the hypotheses count before each view's pose stage, and told what they cost
            (None: the detector's and estimator's configured settings).
    Returns:
        World-frame estimates, milliseconds per step summed over the views (``proposals``,
        ``matching``, ``correspondence``, ``pnp``) with the proposal counts summed over the views
        (``proposals_total``, ``proposals_matched``, ``proposals_cut``), and each view's
        detections (the confirmed ones, before ``keep``) with their detection timings and counts.
        The pose stage runs before the confirmation (in view order, as the budget expects), so
        the correspondence time of a detection dropped then is spent.
    """
    timings = {"proposals": 0.0, "matching": 0.0, "correspondence": 0.0, "pnp": 0.0}
    found: list[tuple[list[Detection], dict[str, float]]] = []
    posed = []
    for index, view in enumerate(views):
        cap = None if budget is None else budget.view_limits(index).max_proposals_per_view
        detections, detection_ms = detector.detect(view, object_ids=object_ids, view_index=index, max_proposals=cap)
        found.append((detections, dict(detection_ms)))
        kept = detections if keep is None else [d for d in detections if keep(d)]
        if budget is None:
            poses, pose_ms = estimator.estimate_view(view, kept)
        else:
            budget.record_detection(detection_ms)
            hypotheses = budget.pose_limits(index, len(kept)).num_hypotheses
            poses, pose_ms = estimator.estimate_view(view, kept, num_hypotheses=hypotheses)
            budget.record_pose(len(kept), hypotheses, pose_ms)
        for k, v in {**detection_ms, **pose_ms}.items():
            timings[k] = timings.get(k, 0.0) + v
        posed.append(poses)
    confirmed = detector.confirm(views, [detections for detections, _ in found])
    estimates: list[PoseEstimate] = []
    for view, poses, kept in zip(views, posed, confirmed):
        ids = {id(d) for d in kept}
        estimates += estimator.to_world(view, [p for p in poses if id(p.detection) in ids], first_instance_id=len(estimates))
    per_view = [ViewDetections(tuple(kept), ms) for kept, (_, ms) in zip(confirmed, found)]
    return estimates, timings, per_view


def check_weights(stage_config: CorrespondenceStageConfig) -> Path:
    """The checkpoint ``stage_config`` names (or the shipped one).

    Raises:
        StageUnavailableError: the file does not exist.
    """
    weights = Path(stage_config.weights_path) if stage_config.weights_path else default_weights_path()
    if not weights.is_file():
        raise StageUnavailableError(f"correspondence weights {weights} not found (train with pose_train, see README)")
    return weights


def build_estimator(stage_config: CorrespondenceStageConfig, templates, object_ids: Sequence[int]) -> CorrespondenceEstimator:
    """The backend and :class:`CorrespondenceEstimator` over a detector's ``templates`` (warmed up if configured).

    Shared by the evaluation's correspondence stage and :class:`pose_node.pipeline.PosePipeline`.
    """
    from pose_node.correspondence.backends import create_backend

    weights = check_weights(stage_config)
    started = time.perf_counter()
    backend = create_backend(stage_config.backend, checkpoint=weights, device=stage_config.device)
    estimator = CorrespondenceEstimator(backend, templates, stage_config.estimator, backend.config.crop_size_px,
                                        covariance_scales(weights))
    if stage_config.warm_up:
        estimator.warm_up(list(object_ids))
    logger.info("correspondence stage: backend %s, %d objects ready in %.1f s", backend.name, len(object_ids),
                time.perf_counter() - started)
    return estimator


def nominal_limits(detector, estimator, fusion) -> StageLimits:
    """The stages' configured settings: the time budget's level 0."""
    refinement = fusion.config.refinement
    return StageLimits(detector.config.max_proposals_per_view, estimator.config.num_hypotheses, refinement.max_starts,
                       refinement.rounds)


def estimate_set(detector, estimator, fusion, views: list[View], budget: TimeBudget, *, with_depth: bool,
                 keep: Callable[[Detection], bool] | None = None, object_ids: Sequence[int] | None = None,
                 ) -> tuple[list[PoseEstimate], dict[str, float], BudgetReport, list]:
    """Detection, poses and fusion of one set under a time budget (:mod:`pose_node.pipeline.budget`).

    The one place the budget is applied, shared by :class:`PosePipeline` and the evaluation's
    refinement stage (so ``pose_eval`` measures what the node runs).

    Args:
        detector, estimator, fusion: the pipeline's stages.
        views: the set. budget: its time budget (``time_budget_ms`` 0: nominal settings).
        with_depth: the fusion may use depth. keep: detections posed (None: all).
        object_ids: objects looked for (None: all the detector knows).
    Returns:
        Fused estimates, timings (milliseconds and counts, with ``budget_level``), the budget's
        report and each view's :class:`ViewDetections`.
    """
    session = budget.start_set(len(views))
    estimates, timings, per_view = detect_and_estimate(detector, estimator, views, object_ids=object_ids, keep=keep,
                                                       budget=session)
    fused, fusion_ms = fusion(views, estimates, with_depth=with_depth, limits=session.refinement_limits)
    session.record_fusion(fusion_ms)
    timings.update(fusion_ms)
    report = session.finish()
    timings["budget_level"] = float(report.level)
    return fused, timings, report, per_view


__all__ = [
    "METADATA_FILE_NAME", "WEIGHTS_FILE_NAME", "CorrespondenceStageConfig", "ViewDetections", "build_estimator", "check_weights",
    "covariance_scales", "default_weights_path", "detect_and_estimate", "estimate_set", "nominal_limits",
]
