"""The ``detection`` stage of the evaluation runner (:mod:`pose_node.evaluation.runner`).

Built by the runner from :data:`pose_node.evaluation.stages.STAGE_FACTORIES`. The estimator runs the
:class:`~pose_node.detection.detector.Detector` on every view of a frame (then its multi-view
confirmation, as the pipeline does), returns no poses (the
pose stages come after it) and exposes the detections as ``last_detections`` for the runner's
detection scores. The detector is built once, when the runner builds the pipeline: onboarding
(or reading the onboarding cache) is not part of any frame's latency.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.evaluation.runner import EvalConfig
from pose_node.pipeline.estimate import ViewDetections

logger = logging.getLogger(__name__)


class DetectionEstimator:
    """:class:`pose_node.evaluation.runner.Estimator` running detection only.

    Args:
        detector: a built :class:`~pose_node.detection.detector.Detector`.
    Attributes:
        last_detections: per view of the last :meth:`estimate` call, its detections and timings.
    """

    def __init__(self, detector) -> None:
        self.detector = detector
        self.last_detections: list[ViewDetections] | None = None

    def estimate(self, views: list[View], object_models: Sequence[ObjectModel]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """Detect ``object_models`` in every view.

        Returns:
            no estimates, and milliseconds summed over the views: ``proposals``, ``matching``.
        Raises:
            InvalidInputError: a view lacks depth in RGB-D mode, or an object is unknown.
        """
        object_ids = [m.object_id for m in object_models]
        found = []
        totals = {"proposals": 0.0, "matching": 0.0}
        for index, view in enumerate(views):
            detections, timings = self.detector.detect(view, object_ids=object_ids, view_index=index)
            found.append((detections, dict(timings)))
            for name in totals:
                totals[name] += timings.get(name, 0.0)
        confirmed = self.detector.confirm(views, [detections for detections, _ in found])
        self.last_detections = [ViewDetections(tuple(kept), timings) for kept, (_, timings) in zip(confirmed, found)]
        return [], totals


def detection_factory(stages: tuple[str, ...], config: EvalConfig, models: Sequence[ObjectModel]) -> DetectionEstimator:
    """Build the detector for the runner (``config.detector`` with ``config.mode``)."""
    from pose_node.detection.detector import Detector, DetectorConfig

    detector_config = config.detector if config.detector is not None else DetectorConfig()
    if not isinstance(detector_config, DetectorConfig):
        from pose_node.core.errors import InvalidInputError

        raise InvalidInputError(f"EvalConfig.detector: expected a DetectorConfig, got {type(detector_config).__name__}")
    started = time.perf_counter()
    detector = Detector(models, replace(detector_config, mode=config.mode), cache_dir=config.cache_dir)
    logger.info("detection stage: %d objects ready in %.1f s", len(models), time.perf_counter() - started)
    return DetectionEstimator(detector)

