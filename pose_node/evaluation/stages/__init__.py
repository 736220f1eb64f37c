"""How ``pose_eval`` drives the pipeline: one estimator factory per evaluated stage, built from the
pipeline's own pieces (the pipeline never imports these)."""
from __future__ import annotations

from pose_node.evaluation.runner import EstimatorFactory
from pose_node.evaluation.stages.correspondence import CorrespondenceStage, correspondence_factory
from pose_node.evaluation.stages.detection import DetectionEstimator, detection_factory
from pose_node.evaluation.stages.refinement import RefinementStage, refinement_factory

#: stage name -> ``factory(stages, config, models)`` building an estimator that runs the pipeline
#: up to and including that stage (the runner builds ``stages[-1]``'s). Tests replace an entry to
#: stand in for a stage.
STAGE_FACTORIES: dict[str, EstimatorFactory] = {
    "detection": detection_factory,
    "correspondence": correspondence_factory,
    "refinement": refinement_factory,
}

__all__ = ["STAGE_FACTORIES", "CorrespondenceStage", "DetectionEstimator", "RefinementStage", "correspondence_factory",
           "detection_factory", "refinement_factory"]
