"""The pipeline's configuration types check their values when built (a config made in code fails
as early as one read from a file), naming the offending field."""
from __future__ import annotations

import math

import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.pipeline.config import THRESHOLD_RANGES, ObjectThresholds, PipelineConfig, Thresholds


def test_defaults_are_valid():
    config = PipelineConfig()
    assert config.mode == "rgbd" and config.thresholds == Thresholds()
    assert Thresholds(max_position_std_m=math.inf, detection_score=0.0, pose_score=1.0).pose_score == 1.0
    assert set(THRESHOLD_RANGES) == set(vars(Thresholds()))


@pytest.mark.parametrize("field, value, message", [
    ("detection_score", 1.5, r"Thresholds.detection_score: expected a value in \[0, 1\], got 1.5"),
    ("pose_score", -0.1, r"Thresholds.pose_score: expected a value in \[0, 1\]"),
    ("max_position_std_m", 0.0, r"Thresholds.max_position_std_m: expected a value in \(0, inf\]"),
    ("max_rotation_std_deg", math.nan, r"Thresholds.max_rotation_std_deg: expected a number, got nan"),
    ("pose_score", "0.5", r"Thresholds.pose_score: expected a number"),
])
def test_thresholds_reject_out_of_range_values(field, value, message):
    with pytest.raises(InvalidInputError, match=message):
        Thresholds(**{field: value})


def test_object_thresholds_check_only_the_overrides():
    assert ObjectThresholds(pose_score=None).pose_score is None
    with pytest.raises(InvalidInputError, match="ObjectThresholds.max_position_std_m"):
        ObjectThresholds(max_position_std_m=-1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "depth"}, "PipelineConfig.mode: expected one of rgb, rgbd, got 'depth'"),
    ({"backend": "tflite"}, "PipelineConfig.backend"),
    ({"multiview": "voting"}, "PipelineConfig.multiview"),
    ({"device": "gpu"}, "PipelineConfig.device: expected cpu, cuda or cuda:N, got 'gpu'"),
    ({"max_proposals_per_view": -1}, "PipelineConfig.max_proposals_per_view"),
    ({"max_proposals_per_view": 2.5}, "PipelineConfig.max_proposals_per_view"),
    ({"time_budget_ms": -5.0}, "PipelineConfig.time_budget_ms"),
    ({"thresholds": {"pose_score": 0.3}}, "PipelineConfig.thresholds: expected Thresholds"),
])
def test_pipeline_config_rejects_invalid_settings(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        PipelineConfig(**kwargs)


def test_pipeline_config_accepts_every_device_form():
    assert [PipelineConfig(device=d).device for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
