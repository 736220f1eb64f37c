"""Scaling sweeps (with a stand-in point runner) and the PNG plot."""
import json

import cv2
import numpy as np
import pytest

from pose_node.benchmark.cli import bench_config, build_parser
from pose_node.benchmark.harness import BenchConfig
from pose_node.benchmark.plot import panel_size_px, plot_scaling
from pose_node.benchmark.scenario import ScenarioConfig
from pose_node.benchmark.sweep import bench_arguments, parse_int_list, run_sweep
from pose_node.core.errors import InvalidInputError


def _point(cameras: int, objects: int, scale: float = 1.0) -> dict:
    """A result JSON whose latency grows with cameras and objects."""
    detection = 100.0 * cameras * scale
    correspondence = 40.0 * cameras * objects * scale
    stages = {"sync": 1.0 * cameras, "detection": detection, "correspondence_pnp": correspondence, "association": 1.0,
              "refinement": None, "publishing": 10.0 * objects}
    total = sum(v for v in stages.values() if v)
    return {"config": {"cameras": cameras, "objects": objects}, "stages_ms": stages,
            "end_to_end_ms": {"median": total + 5.0, "p95": total + 20.0, "max": total + 30.0, "n": 5}}


def test_sweep_runs_each_point_once_and_keeps_going_after_a_failure():
    seen = []

    def run_point(config: BenchConfig) -> dict:
        key = (config.scenario.cameras, config.scenario.objects)
        seen.append(key)
        if key == (3, 15):
            raise RuntimeError("objects do not fit on the table")
        return _point(*key)

    base = BenchConfig(scenario=ScenarioConfig(cameras=3, objects=5), repeats=4)
    result = run_sweep(base, {"cameras": [1, 3, 6], "objects": [1, 5, 15]}, run_point)
    assert seen == [(1, 5), (3, 5), (6, 5), (3, 1), (3, 15)]  # (3, 5) is on both axes: run once
    assert result["kind"] == "sweep" and result["config"]["cameras"] == 3 and result["config"]["repeats"] == 4
    assert [p["config"]["cameras"] for p in result["sweeps"]["cameras"]] == [1, 3, 6]
    assert result["sweeps"]["cameras"][1] is result["sweeps"]["objects"][1]
    failed = result["sweeps"]["objects"][2]
    assert failed["config"]["objects"] == 15 and "RuntimeError: objects do not fit" in failed["error"]
    json.dumps(result)  # writable as it is


def test_bench_arguments_round_trip_through_the_command_line():
    config = BenchConfig(scenario=ScenarioConfig(cameras=2, objects=7, resolution="720p", frames=4, seed=3), mode="rgb",
                         device="cuda:1", backend="torch", repeats=9, warmup=3, threads=2, ros_messages=False,
                         onboarding_cache="/tmp/cache")
    assert bench_config(build_parser().parse_args(bench_arguments(config))) == config


def test_parse_int_list():
    assert parse_int_list("1,2, 3,") == [1, 2, 3]
    for bad in ("", "0,1", "1,1", "a"):
        with pytest.raises(InvalidInputError):
            parse_int_list(bad)


def test_plot_is_a_png_of_the_announced_size(tmp_path):
    sweeps = {"cameras": [_point(c, 5) for c in (1, 2, 3, 4, 6)],
              "objects": [_point(3, o) for o in (1, 5, 10)] + [{"config": {"cameras": 3, "objects": 15}, "error": "x"}]}
    path = plot_scaling(sweeps, tmp_path / "plots" / "sweep.png", "vga rgbd cpu")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert (image.shape[1], image.shape[0]) == panel_size_px(2) == (1280, 480)
    assert image.std() > 10  # something is drawn, not a blank canvas
    # Only one axis swept: one panel.
    one = cv2.imread(str(plot_scaling({"cameras": sweeps["cameras"]}, tmp_path / "one.png")))
    assert (one.shape[1], one.shape[0]) == panel_size_px(1)


def test_plot_shows_how_latency_grows(tmp_path):
    """Taller bars for more cameras: the right half of a panel holds more coloured pixels."""
    path = plot_scaling({"cameras": [_point(1, 5), _point(6, 5)]}, tmp_path / "grow.png")
    image = cv2.imread(str(path)).astype(int)
    coloured = (np.abs(image - image.mean(axis=2, keepdims=True)).sum(axis=2) > 60)  # not grey/white/black
    width = image.shape[1]
    assert coloured[:, width // 2:].sum() > 2 * coloured[:, : width // 2].sum()
