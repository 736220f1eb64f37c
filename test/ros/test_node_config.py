"""NodeConfig: the example file parses; every kind of bad value fails naming its key path."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from pose_node.core.errors import InvalidInputError
from pose_node.onboarding.object_models import load_object_models
from pose_node.pipeline.config import BACKENDS, MODES
from pose_node.ros.node_config import (
    DEFAULT_PUBLISH_POSE_SCORE, DEPTH_ENCODINGS, MESH_UNITS, default_publish_pose_score, load_node_config, parse_node_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "pose_node.yaml"
DELETE = object()


def write_box_mesh(path: Path, size_mm: float = 80.0) -> Path:
    import trimesh

    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=[size_mm, size_mm / 2, size_mm / 4]).export(path)
    return path


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A config folder with meshes/box.ply (mm) and a BOP models folder with objects 1 and 2."""
    write_box_mesh(tmp_path / "meshes" / "box.ply")
    models = tmp_path / "bop" / "models"
    for obj_id in (1, 2):
        write_box_mesh(models / f"obj_{obj_id:06d}.ply", 50.0 + 10 * obj_id)
    info = {"1": {"diameter": 70.0},
            "2": {"diameter": 80.0, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}}
    (models / "models_info.json").write_text(json.dumps(info))
    return tmp_path


def valid_mapping() -> dict:
    cameras = {
        f"cam{i}": {
            "color_topic": f"/cam{i}/color/image_raw",
            "camera_info_topic": f"/cam{i}/color/camera_info",
            "depth_topic": f"/cam{i}/depth/image_rect_raw",
            "depth_encoding": "16UC1",
        }
        for i in range(3)
    }
    cameras["cam1"]["T_world_camera"] = {"translation_m": [0.5, -0.2, 1.0], "rotation_xyzw": [0.0, 0.0, 0.7071068, 0.7071068]}
    return {
        "world_frame": "world",
        "cameras": cameras,
        "objects": [
            {"bop_models": "bop/models", "thresholds": {"detection_score": 0.6}},
            {"id": 10, "name": "box", "mesh": "meshes/box.ply", "units": "mm",
             "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]},
            {"procedural": {"seed": 3, "count": 2, "first_id": 20}},
        ],
        "pipeline": {"mode": "rgbd", "device": "cuda:0", "backend": "onnxruntime",
                     "thresholds": {"detection_score": 0.45, "max_position_std_m": 0.01}},
        "sync": {"slop_s": 0.01, "timeout_s": 0.2, "min_cameras": 2, "queue_size": 5},
        "tracking": {"gate_m": 0.03, "name_reuse_s": 1.5},
        "diagnostics": {"window_s": 4.0, "late_s": 0.5, "stale_timeout_s": 2.0, "period_s": 0.5},
    }


def changed(path: tuple, value) -> dict:
    mapping = valid_mapping()
    node = mapping
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return mapping


def test_example_file_parses():
    config = load_node_config(EXAMPLE)
    assert config.world_frame == "world" and config.source_path == EXAMPLE
    assert [c.name for c in config.cameras] == ["cam0", "cam1", "cam2"]
    cam0 = config.camera("cam0")
    assert cam0.color_topic == "/cam0/color/image_raw" and cam0.depth_topic == "/cam0/depth/image_rect_raw"
    assert cam0.depth_encoding == "32FC1" and cam0.T_world_camera is None
    assert [(o.object_id, o.name, o.source) for o in config.objects] == [
        (i, f"obj_{i:06d}", "procedural") for i in range(1, 5)]
    assert config.pipeline.mode == "rgbd" and config.pipeline.device == "cpu" and config.pipeline.backend == "auto"
    assert config.pipeline.multiview == "refinement"
    assert math.isinf(config.pipeline.thresholds.max_position_std_m)
    assert config.sync.min_cameras == 2 and config.sync.timeout_s == 0.1
    assert config.sync_streams()["cam2"] == ("color", "info", "depth")


def test_full_mapping_parses_with_paths_symmetries_and_thresholds(workdir):
    config = parse_node_config(valid_mapping(), base_dir=workdir)
    ids = [o.object_id for o in config.objects]
    assert ids == [1, 2, 10, 20, 21]
    bop2 = config.object(2)
    assert bop2.mesh_path == (workdir / "bop/models/obj_000002.ply").resolve() and bop2.units == "mm"
    assert bop2.symmetries_continuous[0].axis == (0.0, 0.0, 1.0)
    box = config.object(10)
    assert box.mesh_path == (workdir / "meshes/box.ply").resolve() and box.name == "box"
    assert len(box.symmetries_discrete) == 1
    assert config.object(21).procedural.first_id == 20
    # Per-object overrides on top of the pipeline's thresholds.
    assert config.thresholds_for(1).detection_score == 0.6
    assert config.thresholds_for(10).detection_score == 0.45
    assert config.thresholds_for(1).max_position_std_m == 0.01
    # Unset in the file: the node's calibrated publishing default for the mode, not the library's 0.
    default = default_publish_pose_score(config.pipeline.mode)
    assert 0.0 < default < 1.0
    assert config.thresholds_for(1).pose_score == default and config.pipeline.thresholds.pose_score == default
    explicit = valid_mapping()
    explicit["pipeline"]["thresholds"]["pose_score"] = 0.0
    assert parse_node_config(explicit, base_dir=workdir).thresholds_for(1).pose_score == 0.0
    assert config.tracking.name_reuse_s == 1.5 and config.diagnostics.stale_timeout_s == 2.0 and config.tf_timeout_s == 0.5
    # Static extrinsics: a 90 degree yaw.
    T = config.camera("cam1").T_world_camera
    np.testing.assert_allclose(T[:3, :3], Rotation.from_euler("z", 90, degrees=True).as_matrix(), atol=1e-6)
    np.testing.assert_allclose(T[:3, 3], [0.5, -0.2, 1.0])
    assert config.sync.queue_size == 5 and config.pipeline.device == "cuda:0"


def test_load_object_models_builds_every_object(workdir):
    config = parse_node_config(valid_mapping(), base_dir=workdir)
    models = load_object_models(config.objects)
    assert [m.object_id for m in models] == [1, 2, 10, 20, 21]
    assert [m.name for m in models] == ["obj_000001", "obj_000002", "box", "obj_000020", "obj_000021"]
    box = models[2]
    assert box.diameter_m == pytest.approx(np.linalg.norm([0.08, 0.04, 0.02]), rel=1e-6)  # mm -> m
    assert box.symmetries.shape == (2, 4, 4)
    assert models[1].symmetries.shape[0] > 100  # continuous symmetry, discretized
    # Procedural objects equal the generator's (what pose_scene renders for that seed).
    from pose_node.onboarding.procedural import make_procedural_objects

    reference = make_procedural_objects(2, 3, first_id=20)
    np.testing.assert_array_equal(models[3].vertices, reference[0].vertices)


def test_constants_match_the_modules_they_mirror():
    from pose_node.correspondence.backends import BACKEND_KINDS
    from pose_node.detection.detector import DETECTOR_MODES
    from pose_node.onboarding.mesh_loading import UNIT_TO_METRES
    from pose_node.scene.bag_writer import DEPTH_ENCODINGS as BAG_DEPTH_ENCODINGS

    assert set(MODES) == set(DETECTOR_MODES)
    assert BACKENDS == ("auto", *BACKEND_KINDS)
    assert set(MESH_UNITS) <= set(UNIT_TO_METRES)
    assert set(DEPTH_ENCODINGS) == set(BAG_DEPTH_ENCODINGS)
    from pose_node.refinement.fusion import METHODS
    from pose_node.pipeline.config import MULTIVIEW_METHODS

    assert set(MULTIVIEW_METHODS) == set(METHODS)


BAD_VALUES = [
    # (path, value, expected message; the message must start with the key path)
    (("cameras", "cam0", "depth_encoding"), "foo", "cameras.cam0.depth_encoding: expected one of 16UC1, 32FC1, got 'foo'"),
    (("camera",), {}, "camera: unknown key (expected one of world_frame, cameras, objects, pipeline, sync, tracking, diagnostics, tf_timeout_s, debug_images); did you mean 'cameras'?"),
    (("cameras", "cam0", "colour_topic"), "/x", "cameras.cam0.colour_topic: unknown key"),
    (("cameras", "cam1", "color_topic"), DELETE, "cameras.cam1.color_topic: required"),
    (("cameras", "cam0", "color_topic"), "/cam 0/image", "cameras.cam0.color_topic: expected a ROS topic name"),
    (("cameras", "cam0", "camera_info_topic"), 5, "cameras.cam0.camera_info_topic: expected a string, got 5 (int)"),
    (("cameras", "cam2", "color_topic"), "/cam0/color/image_raw", "cameras.cam2.color_topic: topic '/cam0/color/image_raw' is already used by cameras.cam0.color_topic"),
    (("cameras", "cam2", "depth_topic"), DELETE, "cameras.cam2.depth_encoding: given without cameras.cam2.depth_topic"),
    (("cameras", "cam1", "T_world_camera", "rotation_xyzw"), [0, 0, 0, 2], "cameras.cam1.T_world_camera.rotation_xyzw: expected a unit quaternion"),
    (("cameras", "cam1", "T_world_camera", "translation_m"), [1, 2], "cameras.cam1.T_world_camera.translation_m: expected a list of 3 numbers"),
    (("cameras", "cam1", "T_world_camera", "rotation"), [0, 0, 0, 1], "cameras.cam1.T_world_camera.rotation: unknown key"),
    (("cameras", "cam-3"), {"color_topic": "/a", "camera_info_topic": "/b"}, "cameras.cam-3: camera names must match"),
    (("cameras",), {}, "cameras: expected a non-empty mapping"),
    (("world_frame",), "/world", "world_frame: expected a TF frame id"),
    (("pipeline", "mode"), "depth", "pipeline.mode: expected one of rgb, rgbd, got 'depth'"),
    (("pipeline", "device"), "gpu", "pipeline.device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (("pipeline", "backend"), "tflite", "pipeline.backend: expected one of auto, tensorrt, onnxruntime, torch"),
    (("pipeline", "multiview"), "nearest", "pipeline.multiview: expected one of refinement, association"),
    (("pipeline", "thresholds", "detection_score"), 1.5, "pipeline.thresholds.detection_score: expected a number <= 1.0"),
    (("pipeline", "thresholds", "pose_score"), "high", "pipeline.thresholds.pose_score: expected a number, got 'high' (str)"),
    (("pipeline", "thresholds", "max_position_std_m"), 0, "pipeline.thresholds.max_position_std_m: expected a number > 0.0"),
    (("pipeline", "thresholds", "max_rotation_deg"), 5, "pipeline.thresholds.max_rotation_deg: unknown key"),
    (("sync", "slop_s"), -0.1, "sync.slop_s: expected a number >= 0.0"),
    (("sync", "timeout_s"), math.inf, "sync.timeout_s: expected a finite number"),
    (("sync", "min_cameras"), 4, "sync.min_cameras: 4 is more than the 3 configured cameras"),
    (("sync", "min_cameras"), True, "sync.min_cameras: expected an integer, got True (bool)"),
    (("sync", "queue_size"), 0, "sync.queue_size: expected an integer >= 1"),
    (("tracking", "gate_m"), 0, "tracking.gate_m: expected a number > 0.0"),
    (("tracking", "name_reuse_s"), -1, "tracking.name_reuse_s: expected a number >= 0.0"),
    (("diagnostics", "stale_timeout_s"), 0.5, "diagnostics.stale_timeout_s: expected > diagnostics.late_s"),
    (("diagnostics", "window"), 5, "diagnostics.window: unknown key"),
    (("tf_timeout_s",), -1, "tf_timeout_s: expected a number >= 0.0"),
    (("debug_images",), "yes", "debug_images: expected true or false, got 'yes' (str)"),
    (("objects",), [], "objects: expected a non-empty list"),
    (("objects", 0, "procedural"), {"seed": 1, "count": 1}, "objects[0]: expected exactly one source key of mesh, bop_models, procedural, got bop_models, procedural"),
    (("objects", 0), {"id": 3}, "objects[0]: expected exactly one source key"),
    (("objects", 2, "procedural", "count"), 0, "objects[2].procedural.count: expected an integer >= 1"),
    (("objects", 2, "procedural", "sead"), 0, "objects[2].procedural.sead: unknown key"),
    (("objects", 1, "units"), DELETE, "objects[1].units: required (mesh files carry no reliable unit); one of m, cm, mm, in"),
    (("objects", 1, "units"), "inch", "objects[1].units: expected one of m, cm, mm, in, got 'inch'"),
    (("objects", 1, "mesh"), "meshes/nope.ply", "objects[1].mesh: file not found: "),
    (("objects", 1, "id"), 2, "objects[1]: object id 2 is already used by objects[0]"),
    (("objects", 1, "name"), "obj_000001", "objects[1]: object name 'obj_000001' is already used by objects[0]"),
    (("objects", 1, "name"), "my mug", "objects[1].name: expected a name matching"),
    (("objects", 1, "symmetries_continuous"), [{"axis": [0, 0, 0]}], "objects[1].symmetries_continuous[0].axis: must not be zero"),
    (("objects", 1, "symmetries_discrete"), [[2] + [0] * 15], "objects[1].symmetries_discrete[0]: not a rigid transform"),
    (("objects", 1, "symmetries_discrete"), [[1, 0, 0]], "objects[1].symmetries_discrete[0]: expected a list of 16 numbers"),
    (("objects", 0, "thresholds"), {"detection_score": -1}, "objects[0].thresholds.detection_score: expected a number >= 0.0"),
    (("objects", 0, "units"), "mm", "objects[0].units: unknown key (expected one of bop_models, ids, thresholds)"),
    (("objects", 0, "bop_models"), "nowhere", "objects[0].bop_models: no models_info.json in "),
    (("objects", 0, "ids"), [1, 9], "objects[0].ids[1]: object 9 is not in "),
]


@pytest.mark.parametrize("path, value, message", BAD_VALUES, ids=[m.split(":")[0] + f"-{i}" for i, (_, _, m) in enumerate(BAD_VALUES)])
def test_bad_value_names_its_key_path(workdir, path, value, message):
    with pytest.raises(InvalidInputError) as info:
        parse_node_config(changed(path, value), base_dir=workdir)
    assert str(info.value).startswith(message), str(info.value)


def test_rgbd_needs_depth_on_every_camera(workdir):
    mapping = valid_mapping()
    del mapping["cameras"]["cam2"]["depth_topic"], mapping["cameras"]["cam2"]["depth_encoding"]
    with pytest.raises(InvalidInputError, match=re.escape("cameras.cam2.depth_topic: required by pipeline.mode 'rgbd'")):
        parse_node_config(mapping, base_dir=workdir)
    mapping["pipeline"]["mode"] = "rgb"
    config = parse_node_config(mapping, base_dir=workdir)
    assert config.camera("cam2").stream_names() == ("color", "info")


def test_null_timeout_waits_for_every_camera(workdir):
    config = parse_node_config(changed(("sync", "timeout_s"), None), base_dir=workdir)
    assert config.sync.timeout_s is None


def test_file_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read it"):
        load_node_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("cameras: [unclosed\n")
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        load_node_config(tmp_path / "bad.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(InvalidInputError, match="empty"):
        load_node_config(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(InvalidInputError, match="<top level>: expected a mapping"):
        load_node_config(tmp_path / "list.yaml")


def test_relative_paths_resolve_against_the_yaml_folder(workdir, tmp_path, monkeypatch):
    config_dir = workdir / "config"
    config_dir.mkdir()
    mapping = valid_mapping()
    mapping["objects"][0]["bop_models"] = "../bop/models"
    mapping["objects"][1]["mesh"] = "../meshes/box.ply"
    (config_dir / "cell.yaml").write_text(yaml.safe_dump(copy.deepcopy(mapping)))
    monkeypatch.chdir(tmp_path.parent)  # not the config folder
    config = load_node_config(config_dir / "cell.yaml")
    assert config.object(10).mesh_path == (workdir / "meshes" / "box.ply").resolve()


def test_config_sync_and_tf_buffer_import_without_ros():
    """The node's helpers that need no messages stay importable (and testable) without ROS."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'tf2_msgs', 'vision_msgs', 'visualization_msgs'):\n"
        "    sys.modules[name] = None\n"
        "import pose_node.ros.node_config, pose_node.ros.sync, pose_node.ros.tf_buffer\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_load_object_configs_reads_the_objects_of_a_whole_or_objects_only_file(workdir):
    """pose_scene's view of a file: the objects the node would configure, with or without the rest."""
    from pose_node.ros.node_config import load_object_configs

    whole = workdir / "whole.yaml"
    whole.write_text(yaml.safe_dump(valid_mapping()))
    only = workdir / "only.yaml"
    only.write_text(yaml.safe_dump({"objects": valid_mapping()["objects"]}))
    expected = load_node_config(whole).objects
    assert load_object_configs(whole) == expected == load_object_configs(only)
    (workdir / "none.yaml").write_text(yaml.safe_dump({"world_frame": "world"}))
    with pytest.raises(InvalidInputError, match=re.escape(f"{(workdir / 'none.yaml').resolve()}: no objects: list")):
        load_object_configs(workdir / "none.yaml")
    (workdir / "typo.yaml").write_text(yaml.safe_dump({"object": valid_mapping()["objects"]}))
    with pytest.raises(InvalidInputError, match="object: unknown key .* did you mean 'objects'"):
        load_object_configs(workdir / "typo.yaml")
    bad = valid_mapping()
    bad["objects"][1]["units"] = "ft"
    (workdir / "bad.yaml").write_text(yaml.safe_dump({"objects": bad["objects"]}))
    with pytest.raises(InvalidInputError, match=r"bad\.yaml: objects\[1\]\.units: expected one of m, cm, mm, in, got 'ft'"):
        load_object_configs(workdir / "bad.yaml")


def test_default_pose_score_comes_from_the_calibration_file(tmp_path):
    calibration = tmp_path / "refinement.json"
    calibration.write_text(json.dumps({"pose_score_threshold": {"rgbd": {"threshold": 0.42}, "rgb": {"threshold": 7.0}}}))
    assert default_publish_pose_score("rgbd", calibration) == 0.42
    assert default_publish_pose_score("rgb", calibration) == DEFAULT_PUBLISH_POSE_SCORE  # out of [0, 1]: ignored
    assert default_publish_pose_score("rgbd", tmp_path / "missing.json") == DEFAULT_PUBLISH_POSE_SCORE


def _node_mapping(pipeline: dict) -> dict:
    return {"world_frame": "world", "cameras": {"cam0": {"color_topic": "/c/image", "camera_info_topic": "/c/info"}},
            "objects": [{"procedural": {"seed": 0, "count": 1}}], "pipeline": {"mode": "rgb", **pipeline}}


def test_pipeline_budget_keys():
    config = parse_node_config(_node_mapping({"max_proposals_per_view": 20, "time_budget_ms": 150}), base_dir=".")
    assert config.pipeline.max_proposals_per_view == 20 and config.pipeline.time_budget_ms == 150.0
    defaults = parse_node_config(_node_mapping({}), base_dir=".").pipeline
    assert (defaults.max_proposals_per_view, defaults.time_budget_ms) == (32, 0.0)
    with pytest.raises(InvalidInputError, match="pipeline.max_proposals_per_view"):
        parse_node_config(_node_mapping({"max_proposals_per_view": -1}), base_dir=".")
    with pytest.raises(InvalidInputError, match="pipeline.time_budget_ms"):
        parse_node_config(_node_mapping({"time_budget_ms": "fast"}), base_dir=".")


def test_pipeline_min_supporting_views():
    assert parse_node_config(_node_mapping({}), base_dir=".").pipeline.min_supporting_views == 2
    assert parse_node_config(_node_mapping({"min_supporting_views": 1}), base_dir=".").pipeline.min_supporting_views == 1
    for bad in (0, 1.5, "two"):
        with pytest.raises(InvalidInputError, match="pipeline.min_supporting_views"):
            parse_node_config(_node_mapping({"min_supporting_views": bad}), base_dir=".")
