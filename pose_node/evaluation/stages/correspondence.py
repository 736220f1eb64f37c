"""The ``correspondence`` stage of the evaluation runner: detection + per-detection pose.

Built by the runner from :data:`pose_node.evaluation.stages.STAGE_FACTORIES`.
Every view is detected (:mod:`pose_node.evaluation.stages.detection`), each detection gets a pose and a
covariance in its camera (:class:`~pose_node.correspondence.estimator.CorrespondenceEstimator`),
mapped into the world frame. No fusion across views: in a multi-view frame each view's estimates
are returned as they are (the ``refinement`` stage fuses them).

The network comes from ``EvalConfig.correspondence`` (a
:class:`~pose_node.pipeline.estimate.CorrespondenceStageConfig`) or the shipped
``models/correspondence_effl0.pt`` through the fastest available backend
(:func:`pose_node.correspondence.backends.create_backend`); templates are encoded at build time,
so no frame pays for them.
"""
from __future__ import annotations

from collections.abc import Sequence

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.correspondence.estimator import CorrespondenceEstimator
from pose_node.evaluation.runner import EvalConfig
from pose_node.evaluation.stages.detection import DetectionEstimator, detection_factory
from pose_node.pipeline.estimate import (
    CorrespondenceStageConfig, ViewDetections, build_estimator, check_weights, detect_and_estimate,
)


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

