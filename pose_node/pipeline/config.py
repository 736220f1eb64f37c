"""The pipeline's settings: modes, backends, multi-view methods, device names and thresholds.

The one copy of these choices: the node's YAML parser (:mod:`pose_node.ros.node_config`), its runtime
parameter descriptors, ``pose_eval`` and ``pose_bench`` take them from here. Every type checks its
values when built, so a configuration made in code fails as early as one read from a file.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from pose_node.core.errors import InvalidInputError

MODES: tuple[str, ...] = ("rgb", "rgbd")  # pose_node.detection.detector.DETECTOR_MODES
BACKENDS: tuple[str, ...] = ("auto", "tensorrt", "onnxruntime", "torch")  # "auto" + correspondence BACKEND_KINDS
MULTIVIEW_METHODS: tuple[str, ...] = ("refinement", "association")  # pose_node.refinement.fusion.METHODS
DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")  # a torch device name: cpu, cuda or cuda:N
#: Threshold name -> (low, high, low excluded) of its valid values; the node declares its runtime
#: parameters with these ranges (a ``max_*`` limit must be > 0; ``inf`` = no limit).
THRESHOLD_RANGES: dict[str, tuple[float, float, bool]] = {
    "detection_score": (0.0, 1.0, False),
    "pose_score": (0.0, 1.0, False),
    "max_position_std_m": (0.0, math.inf, True),
    "max_rotation_std_deg": (0.0, math.inf, True),
}


def _check_range(path: str, value: object, low: float, high: float, low_open: bool) -> None:
    """Raise :class:`InvalidInputError` naming ``path`` unless ``value`` is a number in the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise InvalidInputError(f"{path}: expected a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise InvalidInputError(f"{path}: expected a value in {interval}, got {value}")


@dataclass(frozen=True)
class Thresholds:
    """Acceptance thresholds of the pipeline.

    Attributes:
        detection_score: template-matching score below which a detection is dropped, in [0, 1].
        pose_score: pose score in [0, 1] (the share of feature points the views agree with at the
            refined pose, times the weight of the winning start) below which a pose is not published.
        max_position_std_m: a pose whose largest position standard deviation exceeds this is
            not published, metres (> 0; ``.inf`` = no limit).
        max_rotation_std_deg: the same for the largest rotation standard deviation, degrees.
    """

    detection_score: float = 0.4
    pose_score: float = 0.0
    max_position_std_m: float = math.inf
    max_rotation_std_deg: float = math.inf

    def __post_init__(self) -> None:
        for name, (low, high, low_open) in THRESHOLD_RANGES.items():
            _check_range(f"Thresholds.{name}", getattr(self, name), low, high, low_open)


@dataclass(frozen=True)
class ObjectThresholds:
    """Per-object overrides of :class:`Thresholds`; None inherits the pipeline's value."""

    detection_score: float | None = None
    pose_score: float | None = None
    max_position_std_m: float | None = None
    max_rotation_std_deg: float | None = None

    def __post_init__(self) -> None:
        for name, (low, high, low_open) in THRESHOLD_RANGES.items():
            if getattr(self, name) is not None:
                _check_range(f"ObjectThresholds.{name}", getattr(self, name), low, high, low_open)


@dataclass(frozen=True)
class PipelineConfig:
    """Pipeline settings.

    Attributes:
        mode: ``rgbd`` (depth proposals; every camera needs a depth topic) or ``rgb``.
        device: torch device, ``cpu`` or ``cuda[:N]``.
        backend: correspondence-network backend: ``auto``, ``tensorrt``, ``onnxruntime`` or ``torch``.
        multiview: after the single-view poses: ``refinement`` (association, then feature-metric
            refinement against all views) or ``association`` (association and fusion only).
        thresholds: defaults for every object (the node applies per-object overrides,
            :meth:`pose_node.ros.node_config.NodeConfig.thresholds_for`); read from a file,
            ``pose_score`` defaults to the node's calibrated per-mode threshold
            (:func:`pose_node.ros.node_config.default_publish_pose_score`), not 0.
        max_proposals_per_view: proposals matched per view, highest proposal score first (0: no
            cap); see :class:`pose_node.detection.detector.DetectorConfig`.
        time_budget_ms: milliseconds per multi-view set before the pipeline degrades (fewer
            proposals, then fewer pose hypotheses and refinement starts, then fewer refinement
            rounds; :mod:`pose_node.pipeline.budget`); 0: no budget.
        min_supporting_views: in RGB-D a detection is dropped when fewer views than this (it
            included) detect the object where at least this many frame it
            (:mod:`pose_node.detection.multiview`), and in both modes an object detected in fewer
            views is not refined or published (:class:`pose_node.refinement.refiner.RefinementConfig`);
            1 where objects are often hidden from all cameras but one.
    """

    mode: str = "rgbd"
    device: str = "cpu"
    backend: str = "auto"
    multiview: str = "refinement"
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_proposals_per_view: int = 32
    time_budget_ms: float = 0.0
    min_supporting_views: int = 2

    def __post_init__(self) -> None:
        for name, value, choices in (("mode", self.mode, MODES), ("backend", self.backend, BACKENDS),
                                     ("multiview", self.multiview, MULTIVIEW_METHODS)):
            if value not in choices:
                raise InvalidInputError(f"PipelineConfig.{name}: expected one of {', '.join(choices)}, got {value!r}")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.match(self.device):
            raise InvalidInputError(f"PipelineConfig.device: expected cpu, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.thresholds, Thresholds):
            raise InvalidInputError(f"PipelineConfig.thresholds: expected Thresholds, got {type(self.thresholds).__name__}")
        if isinstance(self.max_proposals_per_view, bool) or not isinstance(self.max_proposals_per_view, int) \
                or self.max_proposals_per_view < 0:
            raise InvalidInputError(f"PipelineConfig.max_proposals_per_view: expected an integer >= 0, got {self.max_proposals_per_view!r}")
        _check_range("PipelineConfig.time_budget_ms", self.time_budget_ms, 0.0, math.inf, False)
        if isinstance(self.min_supporting_views, bool) or not isinstance(self.min_supporting_views, int) \
                or self.min_supporting_views < 1:
            raise InvalidInputError(f"PipelineConfig.min_supporting_views: expected an integer >= 1, got {self.min_supporting_views!r}")


__all__ = ["BACKENDS", "DEVICE_PATTERN", "MODES", "MULTIVIEW_METHODS", "THRESHOLD_RANGES", "ObjectThresholds", "PipelineConfig",
           "Thresholds"]
