"""--profile: only the chosen stage's code is profiled, and the instances are left as they were."""
import time

import numpy as np
import pytest

from pose_node.benchmark.harness import FrameRunner
from pose_node.benchmark.inputs import ArrayInput
from pose_node.benchmark.profiling import profile_stage, slowest_stage, stage_entry_points
from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Camera, View


def slow_detection_kernel():
    time.sleep(0.004)


def slow_pose_kernel():
    time.sleep(0.002)


class Detector:
    def detect(self, view):
        slow_detection_kernel()


class Estimator:
    def estimate_view(self, view):
        slow_pose_kernel()


class Pipeline:
    def __init__(self):
        self.detector, self.estimator = Detector(), Estimator()

    def estimate(self, views):
        for view in views:
            self.detector.detect(view)
            self.estimator.estimate_view(view)
        return [], {"proposals": 4.0, "correspondence": 2.0}


def _runner() -> FrameRunner:
    K = np.array([[50.0, 0, 15.5], [0, 50.0, 11.5], [0, 0, 1]])
    view = View(camera=Camera(K=K, width=32, height=24, T_world_camera=np.eye(4)), rgb=np.zeros((24, 32, 3), np.uint8),
                name="cam0")
    return FrameRunner(Pipeline(), ArrayInput([[view]]), None)


@pytest.mark.parametrize("stage, inside, outside", [("detection", "slow_detection_kernel", "slow_pose_kernel"),
                                                    ("correspondence_pnp", "slow_pose_kernel", "slow_detection_kernel")])
def test_only_the_stage_is_profiled(tmp_path, stage, inside, outside):
    runner = _runner()
    summary = profile_stage(runner, stage, 3, tmp_path / "profile.txt")
    names = [t["function"] for t in summary["top_functions"]]
    assert any(inside in n for n in names) and not any(outside in n for n in names)
    kernel = next(t for t in summary["top_functions"] if inside in t["function"])
    assert kernel["calls_per_frame"] == 1.0 and kernel["cumulative_ms_per_frame"] >= 1.5
    assert summary["own_entry_points"] and summary["frames"] == 3
    assert inside in (tmp_path / "profile.txt").read_text()
    # The wrappers are gone: the class methods show through again.
    assert "detect" not in vars(runner.pipeline.detector) and "estimate_view" not in vars(runner.pipeline.estimator)


def test_a_stage_without_its_own_entry_point_profiles_the_whole_pipeline(tmp_path):
    runner = _runner()
    points, own = stage_entry_points(runner, "refinement")
    assert not own and [p.label for p in points] == ["PosePipeline.estimate"]
    summary = profile_stage(runner, "refinement", 1, tmp_path / "p.txt")
    assert not summary["own_entry_points"] and "no entry point of its own" in (tmp_path / "p.txt").read_text()
    assert "estimate" not in vars(runner.pipeline)


def test_slowest_stage_skips_unmeasured_ones():
    assert slowest_stage({"sync": 1.0, "detection": 400.0, "correspondence_pnp": 500.0, "refinement": None}) == "correspondence_pnp"
    with pytest.raises(InvalidInputError):
        slowest_stage({"refinement": None})
