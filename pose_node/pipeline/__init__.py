"""The runtime pose pipeline (ROS-free): its settings, the detect-and-estimate loop, the time budget,
instance tracking and :class:`PosePipeline`, which the ROS node runs per multi-view set.

Names are loaded on first use, so ``pose_node.pipeline.config`` (what a configuration parser needs)
does not import the stages (torch models, renderer) behind :class:`PosePipeline`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "pose_node.pipeline.budget": ("BudgetReport", "StageLimits", "TimeBudget", "TimeBudgetConfig"),
    "pose_node.pipeline.config": ("BACKENDS", "DEVICE_PATTERN", "MODES", "MULTIVIEW_METHODS", "THRESHOLD_RANGES",
                                  "ObjectThresholds", "PipelineConfig", "Thresholds"),
    "pose_node.pipeline.estimate": ("CorrespondenceStageConfig", "ViewDetections", "detect_and_estimate", "estimate_set",
                                    "nominal_limits"),
    "pose_node.pipeline.pipeline": ("PipelineOptions", "PosePipeline", "UnitReport", "detection_units", "passes_thresholds"),
    "pose_node.pipeline.tracker": ("InstanceTracker",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pose_node.pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__all__ = sorted(_MODULE_OF)
