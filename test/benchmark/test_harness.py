"""The in-process runner with a stand-in pipeline (fast): what each frame times, the input paths
(arrays, and ROS messages decoded as the node decodes them), and the result summary."""
import time

import numpy as np
import pytest

from pose_node.benchmark.harness import BenchConfig, FrameRunner, FrameTiming, check_device, summarize_frames
from pose_node.benchmark.inputs import ArrayInput
from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.types import Camera, PoseEstimate, View

W, H = 64, 48


def _views(n_cameras: int = 2, value: int = 0) -> list[View]:
    views = []
    for c in range(n_cameras):
        K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
        T = np.eye(4)
        T[0, 3] = 0.1 * c
        rgb = np.full((H, W, 3), value + c, np.uint8)
        depth = np.full((H, W), 0.5 + 0.1 * c, np.float32)
        views.append(View(camera=Camera(K=K, width=W, height=H, T_world_camera=T, frame_id=f"cam{c}_optical"),
                          rgb=rgb, depth=depth, name=f"cam{c}"))
    return views


class SleepingPipeline:
    """Sleeps per step and reports it, as PosePipeline.estimate does; records the views it got."""

    STEPS_S = {"proposals": 0.002, "matching": 0.001, "correspondence": 0.003, "pnp": 0.001, "refinement": 0.002}

    def __init__(self):
        self.calls = []

    def estimate(self, views):
        self.calls.append(views)
        started = time.perf_counter()
        timings = {}
        for key, seconds in self.STEPS_S.items():
            t0 = time.perf_counter()
            time.sleep(seconds)
            timings[key] = (time.perf_counter() - t0) * 1e3
        timings["total"] = (time.perf_counter() - started) * 1e3
        estimate = PoseEstimate(object_id=1, instance_id=0, T_world_object=np.eye(4), covariance=np.eye(6) * 1e-6, score=0.9)
        return [estimate], timings


def test_a_frame_times_decode_sync_pipeline_and_publishing():
    published = []

    def publish(stamp_ns, estimates):
        time.sleep(0.002)
        published.append((stamp_ns, len(estimates)))

    pipeline = SleepingPipeline()
    runner = FrameRunner(pipeline, ArrayInput([_views(2, 0), _views(2, 10)]), publish, frame_period_ns=50_000_000)
    first, second = runner.run(0), runner.run(1)
    for frame in (first, second):
        steps = {k: v for k, v in frame.timings_ms.items() if k != "total"}
        assert set(steps) == {"decode", "sync", "proposals", "matching", "correspondence", "pnp", "refinement", "publishing"}
        assert all(v >= 0 for v in steps.values())
        assert frame.timings_ms["publishing"] >= 2.0 and frame.timings_ms["total"] >= 9.0
        # The wall clock covers every step (the clock runs around all of them).
        assert frame.end_to_end_ms >= frame.timings_ms["total"] + frame.timings_ms["publishing"]
        assert frame.end_to_end_ms >= sum(steps.values()) - 1e-6
        assert frame.n_estimates == 1
    # The pipeline got the frame's views, camera names kept; stamps step by the frame period.
    assert [v.name for v in pipeline.calls[1]] == ["cam0", "cam1"]
    assert int(pipeline.calls[1][1].rgb[0, 0, 0]) == 11
    assert published[1][0] - published[0][0] == 50_000_000


def test_a_frame_without_a_complete_set_is_an_error():
    class MissingCamera(ArrayInput):
        def messages(self, frame, stamp_ns):
            return [m for m in super().messages(frame, stamp_ns) if m[0][0] != "cam1"]

    runner = FrameRunner(SleepingPipeline(), MissingCamera([_views(2)]), None)
    with pytest.raises(InvalidInputError, match="no complete synchronized set"):
        runner.run(0)


def test_summary_statistics_and_stage_groups():
    timed = [FrameTiming(end_to_end_ms=100.0 + i, timings_ms={"decode": 1.0, "sync": 0.5, "proposals": 10.0 + i,
                                                               "matching": 20.0, "total": 60.0, "mystery": 2.0},
                         n_estimates=i) for i in range(5)]
    first = FrameTiming(end_to_end_ms=500.0, timings_ms={}, n_estimates=0)
    summary = summarize_frames(first, timed)
    assert summary["end_to_end_ms"] == {"median": 102.0, "p95": pytest.approx(103.8), "max": 104.0, "n": 5}
    assert summary["first_frame_ms"] == 500.0
    assert summary["stages_ms"]["sync"] == 1.5 and summary["stages_ms"]["detection"] == 32.0
    assert summary["stages_ms"]["mystery"] == 2.0 and summary["stages_ms"]["refinement"] is None
    assert summary["stages_ms_p95"]["detection"] == pytest.approx(33.8)
    assert summary["timings_ms"]["total"]["median"] == 60.0 and "total" not in summary["stages_ms"]
    assert summary["estimates_per_frame"] == 2.0 and len(summary["frames"]) == 5


@pytest.mark.parametrize("kwargs, field", [({"mode": "depth"}, "mode"), ({"device": "gpu"}, "device"),
                                           ({"backend": "tflite"}, "backend"), ({"repeats": 0}, "repeats"),
                                           ({"warmup": 0}, "warmup"), ({"threads": 0}, "threads")])
def test_invalid_bench_configurations_name_the_field(kwargs, field):
    with pytest.raises(InvalidInputError, match=f"BenchConfig.{field}"):
        BenchConfig(**kwargs)


def test_cuda_is_accepted_and_fails_clearly_without_a_gpu():
    import torch

    config = BenchConfig(device="cuda")
    assert config.to_json()["device"] == "cuda" and BenchConfig(device="cuda:1").device == "cuda:1"
    if torch.cuda.is_available():
        check_device("cuda")
    else:
        with pytest.raises(StageUnavailableError, match="CUDA is not available"):
            check_device("cuda")


# -- ROS messages (the node's decode path and its outputs) --------------------------------------

def test_ros_messages_decode_to_the_views_and_outputs_serialize():
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")
    from pose_node.benchmark.ros_messages import OutputPublisher, RosMessageInput
    from pose_node.onboarding.procedural import make_procedural_objects

    views = _views(2, 40)
    frame_input = RosMessageInput([views])
    assert frame_input.streams == {"cam0": ("color", "info", "depth"), "cam1": ("color", "info", "depth")}
    assert frame_input.size_mb() == pytest.approx(2 * H * W * (3 + 4) / 2**20)
    models = make_procedural_objects(1, 0)
    publisher = OutputPublisher(models)
    runner = FrameRunner(SleepingPipeline(), frame_input, publisher)
    runner.run(0)
    decoded = runner.pipeline.calls[0]
    for got, sent in zip(decoded, views):
        np.testing.assert_array_equal(got.rgb, sent.rgb)
        np.testing.assert_array_equal(got.depth, sent.depth)
        np.testing.assert_allclose(got.camera.K, sent.camera.K)
        np.testing.assert_allclose(got.camera.T_world_camera, sent.camera.T_world_camera)
        assert got.camera.frame_id == sent.camera.frame_id and got.name == sent.name
    assert publisher.last_bytes > 1000  # one Detection3D, TF and a mesh marker of thousands of points
    publisher(0, [])  # nothing found: an empty Detection3DArray and a DELETEALL marker, no TF
    assert 0 < publisher.last_bytes < 1000


def test_the_core_runs_without_ros():
    """Without the ROS packages the harness feeds arrays and says so (no decode or publishing stage)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['rclpy'] = None\n"
            "import pose_node.benchmark, pose_node.benchmark.cli, pose_node.benchmark.sweep, pose_node.benchmark.profiling\n"
            "from pose_node.benchmark.cli import _ros_messages_available\n"
            "assert not _ros_messages_available()\n"
            "assert 'rclpy' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "feeding arrays" in done.stderr
