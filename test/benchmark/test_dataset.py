"""``pose_bench --dataset``: latency on the frames of a BOP dataset.

A tiny pose_scene workcell (2 cameras, 1 object, 2 frames, 320x240) is timed end to end through
the real pipeline (multi-view target groups; a one-camera copy without world poses and with one
depth image removed); the frames the inputs hand the pipeline are checked against the dataset with
a stand-in pipeline; bad input is a one-line error.
"""
import json
import shutil

import numpy as np
import pytest

from pose_node.benchmark.cli import main
from pose_node.benchmark.dataset import DatasetArrayInput, DatasetFrames, DatasetSource, default_targets
from pose_node.benchmark.harness import BenchConfig, FrameRunner
from pose_node.core.errors import InvalidInputError
from pose_node.datasets.bop import BopFormatError, read_targets
from pose_node.evaluation.runner import group_targets
from pose_node.scene.generator import WorkcellConfig
from pose_node.scene.layout import LayoutConfig

CAMERAS = 2
FRAMES = 2
WIDTH, HEIGHT = 320, 240


@pytest.fixture(scope="module")
def workcell(tmp_path_factory, make_workcell):
    out = tmp_path_factory.mktemp("bench_dataset") / "workcell"
    config = WorkcellConfig(out_dir=out, num_objects=1, num_scenes=1, frames_per_scene=FRAMES, write_bag=False, seed=2,
                            layout=LayoutConfig(num_cameras=CAMERAS, width_px=WIDTH, height_px=HEIGHT))
    return make_workcell(config).root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_dataset_cache")


@pytest.fixture(scope="module")
def single_view(workcell, tmp_path_factory):
    """A copy as a classic single-view BOP dataset: no world poses, BOP19 targets only, and the depth
    image of the second target image removed."""
    root = tmp_path_factory.mktemp("single_view") / "ds"
    shutil.copytree(workcell, root)
    (root / "test_targets_multiview.json").unlink()
    for path in (root / "test").glob("*/scene_camera.json"):
        cameras = json.loads(path.read_text())
        path.write_text(json.dumps({k: {f: v for f, v in e.items() if f not in ("cam_R_w2c", "cam_t_w2c")}
                                    for k, e in cameras.items()}))
    target = read_targets(root / "test_targets_bop19.json")[1]
    (root / "test" / f"{target.scene_id:06d}" / "depth" / f"{target.im_ids[0]:06d}.png").unlink()
    return root


class RecordingPipeline:
    """Stands in for PosePipeline: records the views, reports one timed step."""

    def __init__(self):
        self.calls = []

    def estimate(self, views):
        self.calls.append(views)
        return [], {"proposals": 1.0, "total": 1.0}


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_multiview_dataset_is_timed_frame_by_frame(workcell, cache, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, printed, err = _run(["--dataset", str(workcell), "--warmup", "1", "--onboarding-cache", str(cache),
                               "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    groups = group_targets(read_targets(workcell / "test_targets_multiview.json"))
    assert len(groups) == FRAMES
    assert result["kind"] == "dataset" and result["targets"] == str(workcell / "test_targets_multiview.json")
    assert (result["dataset"], result["split"]) == (str(workcell), "test")
    assert result["n_frames"] == len(groups) and result["views_per_frame"] == {str(CAMERAS): len(groups)}
    assert result["n_views"] == CAMERAS * len(groups) and result["frames_without_depth"] == 0
    # One timing per frame, in the targets' order, each with every stage of the node measured.
    assert [(f["scene_id"], tuple(f["im_ids"])) for f in result["frames"]] == [(g.scene_id, g.im_ids) for g in groups]
    for frame in result["frames"]:
        assert frame["mode"] == "rgbd"
        for key in ("decode", "sync", "proposals", "matching", "correspondence", "pnp", "refinement", "publishing"):
            assert frame[key] > 0, key
        assert frame["total"] + frame["publishing"] <= frame["end_to_end_ms"]
    assert result["end_to_end_ms"]["n"] == len(groups) and result["first_frame_ms"] > 0
    assert all(result["stages_ms"][s] > 0 for s in ("sync", "detection", "correspondence_pnp", "refinement", "publishing"))
    assert result["estimates_per_frame"] >= 1  # the object was found: the latency is of real work
    # The scenario run's keys, the dataset's fields in the config instead of the scenario's.
    for key in ("stages_ms_p95", "timings_ms", "peak_rss_mb", "peak_gpu_mb", "build_s", "backend", "input_frames_mb", "machine"):
        assert key in result, key
    config = result["config"]
    assert config["root"] == str(workcell) and config["mode"] == "rgbd" and "cameras" not in config and "repeats" not in config
    assert f"{len(groups)} frames ({len(groups)} x {CAMERAS} views)" in printed


def test_single_view_dataset_without_world_poses_is_timed_as_one_camera_frames(single_view, cache, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code, printed, err = _run(["--dataset", str(single_view), "--warmup", "1", "--max-frames", "3",
                               "--onboarding-cache", str(cache), "--depth-encoding", "16UC1", "--out", str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    images = group_targets(read_targets(single_view / "test_targets_bop19.json"))
    assert len(images) > 3 and all(len(f.im_ids) == 1 for f in images)
    assert result["targets"] == str(single_view / "test_targets_bop19.json")
    assert result["n_frames"] == 3 and result["views_per_frame"] == {"1": 3}
    assert [tuple(f["im_ids"]) for f in result["frames"]] == [f.im_ids for f in images[:3]]
    # The image without depth is timed through an RGB pipeline and counted; the others as RGB-D.
    assert [f["mode"] for f in result["frames"]] == ["rgbd", "rgb", "rgbd"]
    assert result["frames_without_depth"] == 1 and result["frames_without_depth_ids"] == [
        {"scene_id": images[1].scene_id, "im_ids": list(images[1].im_ids)}]
    for frame in result["frames"]:
        assert frame["decode"] > 0 and frame["proposals"] > 0 and frame["publishing"] > 0
    assert result["config"]["depth_encoding"] == "16UC1" and result["config"]["max_frames"] == 3
    assert "1 without depth, timed as rgb" in printed


@pytest.mark.parametrize("ros_messages", [True, False])
def test_the_pipeline_gets_the_dataset_views(workcell, single_view, ros_messages):
    """What the inputs decode (colour, depth, K, camera pose from /tf) is the dataset's frame."""
    if ros_messages:
        pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")
        from pose_node.benchmark.ros_messages import DatasetMessageInput

    for root, cameras in ((workcell, CAMERAS), (single_view, 1)):
        frames = DatasetFrames(DatasetSource(str(root)), "rgbd")
        dataset = frames.dataset
        pipeline = RecordingPipeline()
        runners = {kind: FrameRunner(pipeline, DatasetMessageInput(frames, kind, "16UC1") if ros_messages
                                     else DatasetArrayInput(frames, kind), None) for kind in set(frames.kinds)}
        for i, frame in enumerate(frames.frames):
            runners[frames.kinds[i]].run(i)
            views = pipeline.calls[-1]
            assert [v.name for v in views] == [f"cam{k}" for k in range(cameras)]
            for view, im in zip(views, frame.im_ids):
                camera = dataset.camera(frame.scene_id, im)
                np.testing.assert_array_equal(view.rgb, dataset.rgb(frame.scene_id, im))
                np.testing.assert_allclose(view.camera.K, camera.K)
                # Multi-view: the camera's world pose (from /tf with ROS messages); one camera
                # without world poses: the identity (world = camera frame).
                np.testing.assert_allclose(view.camera.T_world_camera, camera.T_world_camera, atol=1e-9)
                assert view.camera.frame_id == f"{view.name}_optical_frame"
                if dataset.has_depth(frame.scene_id, im):
                    # 16UC1 is millimetres: the dataset's 0.1 mm depth rounded to 0.5 mm.
                    np.testing.assert_allclose(view.depth, dataset.depth_m(frame.scene_id, im),
                                               atol=0.5e-3 + 1e-6 if ros_messages else 0)
                else:
                    assert view.depth is None and frames.kinds[i] == (cameras, False)
        if cameras == 1:
            assert np.allclose(views[0].camera.T_world_camera, np.eye(4)) and frames.rgb_frames == [1]


def test_a_multiview_frame_without_world_poses_is_refused(single_view, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(single_view, root)
    shutil.copy(single_view / "test_targets_bop19.json", root / "single.json")
    groups = [{"scene_id": 0, "im_ids": [0, 1], "obj_id": 1, "inst_count": 1}]
    (root / "groups.json").write_text(json.dumps(groups))
    with pytest.raises(InvalidInputError, match="needs camera world poses.*no cam_R_w2c"):
        DatasetFrames(DatasetSource(str(root), targets="groups.json"), "rgbd")
    code, _, err = _run(["--dataset", str(root), "--targets", "groups.json", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "needs camera world poses" in err


def test_default_targets_and_frame_selection(workcell, tmp_path):
    assert default_targets(workcell, "test") == workcell / "test_targets_multiview.json"
    assert default_targets(workcell, "val") is None
    frames = DatasetFrames(DatasetSource(str(workcell), targets="test_targets_bop19.json", max_frames=2), "rgb")
    assert [f.im_ids for f in frames.frames] == [(0,), (1,)] and frames.kinds == [(1, False), (1, False)]
    assert frames.rgb_frames == []  # RGB mode: nothing is "without depth"
    # No targets file at all: every image of the split is a one-camera frame.
    root = tmp_path / "ds"
    shutil.copytree(workcell, root)
    for path in root.glob("test_targets_*.json"):
        path.unlink()
    frames = DatasetFrames(DatasetSource(str(root)), "rgbd")
    assert len(frames) == CAMERAS * FRAMES and frames.targets_path is None
    assert frames.summary()["views_per_frame"] == {"1": CAMERAS * FRAMES}


def test_a_directory_that_is_not_a_bop_dataset_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    for argv, message in (
        ([str(tmp_path)], "not a BOP dataset: no split folder 'test' (folders: notes)"),
        ([str(tmp_path / "missing")], "missing: not a directory"),
    ):
        code, _, err = _run(["--dataset", *argv, "--out", str(tmp_path / "b.json")], capsys)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and err.startswith("pose_bench: error: ") and message in err, err
    (tmp_path / "test").mkdir()
    code, _, err = _run(["--dataset", str(tmp_path), "--out", str(tmp_path / "b.json")], capsys)
    assert code == 2 and "not a BOP dataset: no models/models_info.json" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "models_info.json").write_text("{}")
    with pytest.raises(BopFormatError, match="no scenes with images"):
        DatasetFrames(DatasetSource(str(tmp_path)), "rgb")
    code, _, err = _run(["--dataset", str(tmp_path), "--targets", "nope.json", "--out", str(tmp_path / "b.json")], capsys)
    assert code == 2 and "nope.json: file not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "d", "--repeats", "5"], "--repeats does not apply to --dataset"),
    (["--dataset", "d", "--replay"], "--dataset times the dataset's frames in process"),
    (["--dataset", "d", "--sweep-cameras", "1,2"], "--dataset times the dataset's frames in process"),
    (["--targets", "t.json"], "--targets, --split and --max-frames need --dataset"),
    (["--dataset", "d", "--max-frames", "0"], "argument --max-frames: expected a positive integer, got '0'"),
    (["--dataset", "d", "--depth-encoding", "8UC1"], "argument --depth-encoding: invalid choice: '8UC1'"),
])
def test_dataset_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_dataset_source_and_config_validation():
    with pytest.raises(InvalidInputError, match="DatasetSource.max_frames"):
        DatasetSource("d", max_frames=0)
    with pytest.raises(InvalidInputError, match="DatasetSource.split"):
        DatasetSource("d", split="a/b")
    with pytest.raises(InvalidInputError, match="BenchConfig.depth_encoding"):
        BenchConfig(depth_encoding="8UC1")
    config = BenchConfig(dataset=DatasetSource("d", targets="t.json"))
    assert config.to_json()["targets"] == "t.json" and "objects" not in config.to_json()
