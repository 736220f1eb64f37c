"""Multi-view fusion: association, then feature-metric refinement (ROS-free).

:class:`MultiViewFusion` turns every view's world-frame single-view estimates into one estimate
per object instance. It is shared by the evaluation stage (:mod:`pose_node.evaluation.stages.refinement`) and
the node's pipeline (:class:`pose_node.pipeline.PosePipeline`).

``FusionConfig.method``:

- ``association``: the associated candidates as they are (fused initial pose, fused covariance);
- ``refinement`` (default): candidates refined against all views at once
  (:class:`~pose_node.refinement.refiner.MultiViewRefiner`).

The refined covariance's scale per mode comes from ``models/refinement_effl0.json`` (written by
``pose_refinement_bench --calibrate``), unless the config names one.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pose_node.core.errors import InvalidInputError
from pose_node.core.resources import REFINEMENT_CALIBRATION_FILE, shipped_file
from pose_node.core.types import ObjectModel, PoseEstimate, View
from pose_node.refinement.association import AssociationConfig, associate
from pose_node.refinement.refiner import MultiViewRefiner, RefinementConfig

logger = logging.getLogger(__name__)

CALIBRATION_FILE_NAME = REFINEMENT_CALIBRATION_FILE
METHODS = ("association", "refinement")


@dataclass(frozen=True)
class FusionConfig:
    """What happens after the single-view stage (module docstring).

    Attributes:
        method: ``association`` or ``refinement``.
        association: grouping and initial poses.
        refinement: the refiner (its ``covariance_scale`` empty: scale and score exponent read
            from ``calibration_path``).
        calibration_path: json with ``covariance_scale`` per mode (None: the shipped file).
        device: ``cpu`` or ``cuda[:N]`` for features and alignment.
        backbone: dense feature backbone name (``efficientnet_lite0``; the calibration is for it).
    """

    method: str = "refinement"
    association: AssociationConfig = field(default_factory=AssociationConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    calibration_path: str | None = None
    device: str = "cpu"
    backbone: str = "efficientnet_lite0"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"FusionConfig.method: expected one of {METHODS}, got {self.method!r}")


def default_calibration_path() -> Path:
    return shipped_file(CALIBRATION_FILE_NAME)


def load_covariance_calibration(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """``covariance_scale`` and ``covariance_score_exponent`` per mode of a calibration json
    (empty when the file does not exist)."""
    if not path.is_file():
        logger.warning("refinement covariance calibration %s not found: unscaled covariance", path)
        return {}, {}
    meta = json.loads(path.read_text())
    return ({k: float(v) for k, v in meta.get("covariance_scale", {}).items()},
            {k: float(v) for k, v in meta.get("covariance_score_exponent", {}).items()})


class MultiViewFusion:
    """Association (+ refinement) of single-view estimates (module docstring).

    Args:
        models: the known objects.
        config: settings.
    Raises:
        StageUnavailableError: refinement without headless OpenGL or backbone weights.
    """

    def __init__(self, models: Sequence[ObjectModel], config: FusionConfig = FusionConfig()) -> None:
        self.models = {m.object_id: m for m in models}
        self.config = config
        self.refiner: MultiViewRefiner | None = None
        if config.method == "refinement":
            from pose_node.features.backbones import BackboneConfig
            from pose_node.features.registry import create_backbone
            from pose_node.render.context import create_egl_context
            from pose_node.render.renderer import Renderer

            refinement = config.refinement
            if not refinement.covariance_scale:
                path = Path(config.calibration_path) if config.calibration_path else default_calibration_path()
                scales, exponents = load_covariance_calibration(path)
                refinement = replace(refinement, covariance_scale=scales, covariance_score_exponent=exponents)
            # The renderer's context is created on first use, in the thread that refines (the node's
            # worker): an EGL context stays current in the thread that created it and cannot be made
            # current in another. A throwaway context checks now that one can be created at all.
            create_egl_context(None).release()
            S = refinement.crops.size_px
            renderer = Renderer(S, S)
            backbone = create_backbone(BackboneConfig(name=config.backbone, device=config.device))
            self.refiner = MultiViewRefiner(list(models), renderer, backbone, refinement)

    def __call__(self, views: Sequence[View], estimates: Sequence[PoseEstimate], with_depth: bool, *,
                 limits: Callable[[int], tuple[int, int]] | None = None) -> tuple[list[PoseEstimate], dict[str, float]]:
        """One estimate per object instance.

        Args:
            views: the frame's views. estimates: every view's world-frame estimates.
            with_depth: the views carry depth the refinement may use.
            limits: ``limits(num_candidates) -> (max_starts, rounds)``, asked after association,
                before refinement (a time budget's :meth:`~pose_node.pipeline.budget.BudgetSession.refinement_limits`);
                None: the refinement config's.
        Returns:
            Estimates (highest score first) and milliseconds: ``association`` and, with
            refinement, ``refinement`` plus its parts.
        """
        t0 = time.perf_counter()
        centres = [v.camera.T_world_camera[:3, 3] for v in views]
        candidates = associate(estimates, self.models, self.config.association, centres)
        timings = {"association": (time.perf_counter() - t0) * 1e3}
        if self.refiner is None:
            return [c.to_estimate(i) for i, c in enumerate(candidates)], timings
        max_starts, rounds = (None, None) if limits is None else limits(len(candidates))
        t1 = time.perf_counter()
        refined, parts = self.refiner.refine(views, candidates, with_depth, max_starts=max_starts, rounds=rounds)
        timings["refinement"] = (time.perf_counter() - t1) * 1e3
        timings.update(parts)
        return sorted(refined, key=lambda e: -e.score), timings


__all__ = ["CALIBRATION_FILE_NAME", "FusionConfig", "METHODS", "MultiViewFusion", "default_calibration_path", "load_covariance_calibration"]
