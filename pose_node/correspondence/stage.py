"""The ``correspondence`` pipeline stage of the evaluation runner: detection + per-detection pose.

Importing this module registers the stage (``STAGE_MODULES["correspondence"]`` points here).
Every view is detected (:mod:`pose_node.detection.stage`), each detection gets a pose and a
covariance in its camera (:class:`~pose_node.correspondence.estimator.CorrespondenceEstimator`),
mapped into the world frame. No fusion across views: in a multi-view frame each view's estimates
are returned as they are (the ``refinement`` stage fuses them).

The network comes from ``EvalConfig.correspondence`` (a :class:`CorrespondenceStageConfig`) or the
shipped ``models/correspondence_effl0.pt`` through the fastest available backend
(:func:`pose_node.correspondence.backends.create_backend`); templates are encoded at build time,
so no frame pays for them.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.resources import shipped_file
from pose_node.core.types import Detection, ObjectModel, PoseEstimate, View
from pose_node.correspondence.estimator import CorrespondenceConfig, CorrespondenceEstimator
from pose_node.detection.stage import DetectionEstimator, detection_factory
from pose_node.evaluation.runner import EvalConfig, ViewDetections, register_stage

if TYPE_CHECKING:
    from pose_node.budget import BudgetSession

logger = logging.getLogger(__name__)

WEIGHTS_FILE_NAME = "correspondence_effl0.pt"
METADATA_FILE_NAME = "correspondence_effl0.json"


@dataclass(frozen=True)
class CorrespondenceStageConfig:
    """What the stage is built from.

    Attributes:
        weights_path: checkpoint (None: the shipped ``models/correspondence_effl0.pt``).
        backend: ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
        device: ``cpu`` or ``cuda[:N]``.
        estimator: per-detection settings.
        warm_up: encode every template when the stage is built.
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
    """Per view: detect, keep the detections ``keep`` accepts, pose each one, map it to the world.

    Shared by this stage and :class:`pose_node.pipeline.PosePipeline`.

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
        detections (all of them, before ``keep``) with their detection timings and counts.
    """
    timings = {"proposals": 0.0, "matching": 0.0, "correspondence": 0.0, "pnp": 0.0}
    estimates: list[PoseEstimate] = []
    per_view: list[ViewDetections] = []
    for index, view in enumerate(views):
        cap = None if budget is None else budget.view_limits(index).max_proposals_per_view
        detections, detection_ms = detector.detect(view, object_ids=object_ids, view_index=index, max_proposals=cap)
        per_view.append(ViewDetections(tuple(detections), dict(detection_ms)))
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
        estimates += estimator.to_world(view, poses, first_instance_id=len(estimates))
    return estimates, timings, per_view


class CorrespondenceStage:
    """:class:`pose_node.evaluation.runner.Estimator`: detection, then a pose per detection."""

    #: Each estimate comes from one view; the runner scores an image with its own view's estimates.
    per_view_estimates = True

    def __init__(self, detection: DetectionEstimator, estimator: CorrespondenceEstimator) -> None:
        self.detection = detection
        self.estimator = estimator
        self.last_detections: list[ViewDetections] | None = None

    def estimate(self, views: list[View], object_models: Sequence[ObjectModel]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """World-frame estimates of every detection of every view, and milliseconds per step."""
        estimates, timings, self.last_detections = detect_and_estimate(
            self.detection.detector, self.estimator, views, object_ids=[m.object_id for m in object_models])
        return estimates, timings


def correspondence_factory(stages: tuple[str, ...], config: EvalConfig, models: Sequence[ObjectModel]) -> CorrespondenceStage:
    """Build detection and the correspondence estimator for the runner."""
    stage_config = getattr(config, "correspondence", None) or CorrespondenceStageConfig()
    if not isinstance(stage_config, CorrespondenceStageConfig):
        raise InvalidInputError(f"EvalConfig.correspondence: expected a CorrespondenceStageConfig, got {type(stage_config).__name__}")
    check_weights(stage_config)
    detection = detection_factory(stages, config, models)
    return CorrespondenceStage(detection, build_estimator(stage_config, detection.detector.templates,
                                                          [m.object_id for m in models]))


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

    Shared by the evaluation runner's stage and :class:`pose_node.pipeline.PosePipeline`.
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


def register() -> None:
    """Register the ``correspondence`` stage with the runner."""
    register_stage("correspondence", correspondence_factory)


register()
