"""pose_bench scenarios: validation, cache keys, the pose_scene command line, reuse of a generated folder."""
import json
from pathlib import Path

import pytest

from pose_node.benchmark import scenario as scenario_module
from pose_node.benchmark.scenario import RESOLUTIONS, ScenarioConfig, ScenarioGenerationError, ensure_scenario
from pose_node.core.errors import InvalidInputError


@pytest.mark.parametrize("kwargs, field", [
    ({"resolution": "1080p"}, "resolution"), ({"cameras": 0}, "cameras"), ({"cameras": 9}, "cameras"),
    ({"objects": 0}, "objects"), ({"frames": 0}, "frames"), ({"cameras": True}, "cameras"), ({"frame_rate_hz": 0.0}, "frame_rate_hz"),
])
def test_invalid_configurations_name_the_field(kwargs, field):
    with pytest.raises(InvalidInputError, match=f"ScenarioConfig.{field}"):
        ScenarioConfig(**kwargs)


def test_key_depends_on_every_field_and_is_stable():
    base = ScenarioConfig()
    assert base.key() == ScenarioConfig().key()
    others = [ScenarioConfig(cameras=2), ScenarioConfig(objects=1), ScenarioConfig(resolution="720p"), ScenarioConfig(frames=4),
              ScenarioConfig(seed=1), ScenarioConfig(bag=True), ScenarioConfig(frame_rate_hz=30.0)]
    assert len({base.key(), *(o.key() for o in others)}) == len(others) + 1
    assert base.key().startswith("c3_o5_vga_")


@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
def test_pose_scene_arguments_describe_the_scenario(resolution):
    from pose_node.scene.cli import build_parser, config_from_args

    config = ScenarioConfig(cameras=2, objects=4, resolution=resolution, frames=3, seed=9, frame_rate_hz=15.0, bag=True)
    workcell = config_from_args(build_parser().parse_args(config.pose_scene_args(Path("/tmp/x"))))
    assert (workcell.layout.width_px, workcell.layout.height_px) == RESOLUTIONS[resolution]
    assert workcell.layout.num_cameras == 2 and workcell.num_objects == 4 and workcell.max_instances_per_object == 1
    assert workcell.num_scenes == 1 and workcell.frames_per_scene == 3 and workcell.seed == 9
    assert workcell.frame_rate_hz == 15.0 and workcell.write_bag and workcell.objects == "procedural"


def test_a_generated_folder_is_reused_and_a_changed_one_regenerated(tmp_path, monkeypatch):
    calls = []

    class Done:
        returncode, stdout, stderr = 0, "", ""

    def fake_run(command, **kwargs):
        calls.append(command)
        return Done()

    monkeypatch.setattr(scenario_module.subprocess, "run", fake_run)
    config = ScenarioConfig(cameras=1, objects=1, frames=2)
    directory = ensure_scenario(config, tmp_path)
    assert directory == tmp_path / config.key() and len(calls) == 1
    assert calls[0][1:3] == ["-m", "pose_node.scene.cli"]
    assert json.loads((directory / ".bench_scenario.json").read_text())["objects"] == 1
    assert ensure_scenario(config, tmp_path) == directory and len(calls) == 1  # reused
    (directory / ".bench_scenario.json").write_text("{}")  # another configuration wrote it
    ensure_scenario(config, tmp_path)
    assert len(calls) == 2


def test_a_failed_generation_is_an_error_with_the_output_and_leaves_no_signature(tmp_path, monkeypatch):
    class Failed:
        returncode, stdout, stderr = 2, "", "pose_scene: error: headless OpenGL unavailable"

    monkeypatch.setattr(scenario_module.subprocess, "run", lambda command, **kwargs: Failed())
    with pytest.raises(ScenarioGenerationError, match="headless OpenGL unavailable"):
        ensure_scenario(ScenarioConfig(cameras=1, objects=1), tmp_path)
    assert not any(tmp_path.rglob(".bench_scenario.json"))
