"""``pose_bench`` command line: argument validation (fast), and one real run of a tiny configuration
(1 camera, 1 object, VGA, RGB-D on the CPU: scenario, pipeline, JSON, profile)."""
import json

import pytest

from pose_node.benchmark.cli import bench_config, build_parser, main


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--resolution", "1080p"], "argument --resolution: invalid choice: '1080p' (choose from"),
    (["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--mode", "depth"], "argument --mode: invalid choice: 'depth'"),
    (["--cameras", "0"], "argument --cameras: expected a positive integer, got '0'"),
    (["--cameras", "9"], "ScenarioConfig.cameras: expected an integer in 1..8, got 9"),
    (["--repeats", "two"], "argument --repeats: expected a positive integer, got 'two'"),
    (["--sweep-cameras", "1,x"], "argument --sweep-cameras: expected comma-separated integers"),
    (["--sweep-objects", "5,5"], "argument --sweep-objects: expected distinct positive integers"),
    (["--rates", "10,fast"], "argument --rates: rates: expected positive numbers (Hz) or 'max', got 'fast'"),
    (["--replay", "--sweep-cameras", "1,2"], "--replay and --sweep-* are separate runs"),
    (["--profile", "--sweep-objects", "1,2"], "--profile runs on a single configuration"),
])
def test_bad_arguments_are_usage_errors_that_name_the_problem(capsys, argv, message):
    err = _usage_error(capsys, argv)
    assert message in err, err


def test_defaults_are_the_issue_target_configuration():
    config = bench_config(build_parser().parse_args([]))
    s = config.scenario
    assert (s.cameras, s.objects, s.resolution, config.mode, config.device, config.threads) == (3, 5, "vga", "rgbd", "cpu", 1)
    args = build_parser().parse_args(["--device", "cuda:0", "--rates", "10,30,max"])
    assert args.device == "cuda:0" and args.rates == [10.0, 30.0, None]


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for extra in ([], ["--sweep-cameras", "1,2"], ["--replay"]):
        assert main(["--device", "cuda", "--out", str(tmp_path / "b.json"), "--out-dir", str(tmp_path / "s"), *extra]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "s").exists()  # checked before any work


def test_tiny_run_writes_a_valid_result(tmp_path, make_renderer, capsys):
    make_renderer(16, 16)  # skips without headless OpenGL (the scenario is rendered)
    out = tmp_path / "bench.json"
    argv = ["--cameras", "1", "--objects", "1", "--repeats", "3", "--warmup", "1", "--frames", "2",
            "--out", str(out), "--out-dir", str(tmp_path / "scenarios"), "--onboarding-cache", str(tmp_path / "cache"),
            "--profile", "--profile-frames", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "end to end median" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())

    config = result["config"]
    assert (config["cameras"], config["objects"], config["resolution"], config["mode"], config["device"]) == (1, 1, "vga", "rgbd", "cpu")
    assert (config["repeats"], config["warmup"], config["threads"], config["ros_messages"]) == (3, 1, 1, True)
    e2e = result["end_to_end_ms"]
    assert 0 < e2e["median"] <= e2e["p95"] <= e2e["max"] and e2e["n"] == 3
    assert result["first_frame_ms"] > 0
    stages = result["stages_ms"]
    for stage in ("sync", "detection", "correspondence_pnp", "publishing"):
        assert stages[stage] > 0, stage
        assert stages[stage] <= result["stages_ms_p95"][stage]
    # The stages are parts of the frame: their medians add up to at most the end-to-end median
    # (10 % + 1 ms slack: a median of sums is not the sum of medians).
    assert sum(v for v in stages.values() if v is not None) <= 1.1 * e2e["median"] + 1.0
    for frame in result["frames"]:
        assert frame["total"] + frame["publishing"] <= frame["end_to_end_ms"]
    assert result["estimates_per_frame"] >= 1  # the pipeline found the object: the latency is of real work
    assert result["peak_rss_mb"] > 100 and result["peak_gpu_mb"] is None and result["gpu_device_used_mb"] is None
    assert result["build_s"] > 0 and result["backend"] in ("onnxruntime", "torch") and result["input_frames_mb"] > 0
    assert result["machine"]["torch_threads"] == 1 and result["machine"]["gpu_name"] is None

    profile = result["profile"]
    measured = {k: v for k, v in stages.items() if v is not None}
    assert profile["stage"] == max(measured, key=measured.get) and profile["frames"] == 1
    assert profile["top_functions"] and all(t["own_ms_per_frame"] >= 0 for t in profile["top_functions"])
    report = (tmp_path / "bench_profile.txt").read_text()
    assert profile["report"] == str(tmp_path / "bench_profile.txt") and "sorted by tottime" in report
