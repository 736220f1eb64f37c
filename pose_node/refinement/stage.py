"""The ``refinement`` pipeline stage of the evaluation runner: detection, single-view poses, then
multi-view association and feature-metric refinement. Importing this module registers the stage
(``STAGE_MODULES["refinement"]`` points here).

Settings come from ``EvalConfig.refinement`` (a :class:`~pose_node.refinement.fusion.FusionConfig`;
``method="association"`` gives the association-only ablation) and ``EvalConfig.correspondence``.
"""
from __future__ import annotations

from collections.abc import Sequence

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.correspondence.stage import CorrespondenceStage, correspondence_factory
from pose_node.evaluation.runner import EvalConfig, register_stage
from pose_node.refinement.fusion import FusionConfig, MultiViewFusion


class RefinementStage:
    """:class:`pose_node.evaluation.runner.Estimator`: single-view poses, then multi-view fusion."""

    def __init__(self, single_view: CorrespondenceStage, fusion: MultiViewFusion, with_depth: bool) -> None:
        self.single_view = single_view
        self.fusion = fusion
        self.with_depth = with_depth
        self.last_detections = None

    def estimate(self, views: list[View], object_models: Sequence[ObjectModel]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """One world-frame estimate per object instance, and milliseconds per step."""
        self.single_view.last_detections = None
        estimates, timings = self.single_view.estimate(views, object_models)
        self.last_detections = self.single_view.last_detections
        fused, fusion_ms = self.fusion(views, estimates, self.with_depth)
        return fused, {**timings, **fusion_ms}


def refinement_factory(stages: tuple[str, ...], config: EvalConfig, models: Sequence[ObjectModel]) -> RefinementStage:
    """Build the single-view stages and the fusion for the runner."""
    fusion_config = config.refinement or FusionConfig()
    if not isinstance(fusion_config, FusionConfig):
        raise InvalidInputError(f"EvalConfig.refinement: expected a FusionConfig, got {type(fusion_config).__name__}")
    single_view = correspondence_factory(stages, config, models)
    return RefinementStage(single_view, MultiViewFusion(models, fusion_config), with_depth=config.mode == "rgbd")


def register() -> None:
    """Register the ``refinement`` stage with the runner."""
    register_stage("refinement", refinement_factory)


register()
