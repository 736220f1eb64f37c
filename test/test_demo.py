import json

import cv2

from pose_node.demo import main


def test_demo_runs_end_to_end_and_reuses_its_workcell(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POSE_NODE_CACHE", str(tmp_path / "cache"))  # onboarding cache
    args = ["--out", str(tmp_path), "--cameras", "2", "--objects", "2", "--frames", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "generated workcell" in first
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_targets"] > 0
    # Stages that do not exist are reported as such and produce no estimates (never faked).
    for stage, status in results["stages"].items():
        assert status in ("available", "missing"), (stage, status)
        if status == "missing":
            assert f"stage {stage}" in first and "missing" in first
    if results["stages"].get("correspondence") != "available":
        assert results["n_estimates"] == 0 and results["AR"] == 0
    else:
        # Single-view poses (refinement or not) of 2 objects seen by 2 cameras: most are right.
        assert results["n_estimates"] > 0 and results["AR"] > 0.5
    overlays = sorted((tmp_path / "overlays").glob("*.png"))
    assert len(overlays) == 2
    image = cv2.imread(str(overlays[0]))
    assert image.shape == (480, 640, 3)
    # Ground truth outlines are drawn in pure green (BGR (0, 255, 0) on disk).
    assert ((image[..., 1] == 255) & (image[..., 0] == 0) & (image[..., 2] == 0)).sum() > 100

    assert main(args) == 0
    assert "reusing workcell" in capsys.readouterr().out
