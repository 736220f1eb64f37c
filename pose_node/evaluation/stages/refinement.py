"""The ``refinement`` stage of the evaluation runner: detection, single-view poses, then
multi-view association and feature-metric refinement (:data:`pose_node.evaluation.stages.STAGE_FACTORIES`).

Settings come from ``EvalConfig.refinement`` (a :class:`~pose_node.refinement.fusion.FusionConfig`;
``method="association"`` gives the association-only ablation), ``EvalConfig.correspondence`` and
``EvalConfig.time_budget`` (a :class:`~pose_node.pipeline.budget.TimeBudgetConfig`; None: no budget).
"""
from __future__ import annotations

from collections.abc import Sequence

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.evaluation.runner import EvalConfig
from pose_node.evaluation.stages.correspondence import CorrespondenceStage, correspondence_factory
from pose_node.pipeline.budget import TimeBudget, TimeBudgetConfig
from pose_node.pipeline.estimate import estimate_set, nominal_limits
from pose_node.refinement.fusion import FusionConfig, MultiViewFusion


class RefinementStage:
    """:class:`pose_node.evaluation.runner.Estimator`: single-view poses, then multi-view fusion,
    through the node pipeline's own set function (:func:`pose_node.pipeline.estimate.estimate_set`) under
    the same time budget (``budget_config`` off: the configured settings)."""

    def __init__(self, single_view: CorrespondenceStage, fusion: MultiViewFusion, with_depth: bool,
                 budget_config: TimeBudgetConfig = TimeBudgetConfig()) -> None:
        self.single_view = single_view
        self.fusion = fusion
        self.with_depth = with_depth
        self.last_detections = None
        self.budget = TimeBudget(budget_config, nominal_limits(single_view.detection.detector, single_view.estimator, fusion))

    def estimate(self, views: list[View], object_models: Sequence[ObjectModel]) -> tuple[list[PoseEstimate], dict[str, float]]:
        """One world-frame estimate per object instance, milliseconds per step and the counts
        (proposals, ``budget_level``)."""
        self.last_detections = None
        fused, timings, _, self.last_detections = estimate_set(
            self.single_view.detection.detector, self.single_view.estimator, self.fusion, views, self.budget,
            with_depth=self.with_depth, object_ids=[m.object_id for m in object_models])
        return fused, timings


def refinement_factory(stages: tuple[str, ...], config: EvalConfig, models: Sequence[ObjectModel]) -> RefinementStage:
    """Build the single-view stages and the fusion for the runner."""
    fusion_config = config.refinement or FusionConfig()
    if not isinstance(fusion_config, FusionConfig):
        raise InvalidInputError(f"EvalConfig.refinement: expected a FusionConfig, got {type(fusion_config).__name__}")
    budget_config = config.time_budget or TimeBudgetConfig()
    if not isinstance(budget_config, TimeBudgetConfig):
        raise InvalidInputError(f"EvalConfig.time_budget: expected a TimeBudgetConfig, got {type(budget_config).__name__}")
    single_view = correspondence_factory(stages, config, models)
    return RefinementStage(single_view, MultiViewFusion(models, fusion_config), with_depth=config.mode == "rgbd",
                           budget_config=budget_config)

