"""``colcon build`` of the package (ament_python) installs what a ROS user runs: the executables in
``lib/pose_node`` (``ros2 run pose_node <name>``), the launch file, configs and models in
``share/pose_node``, the ament index entry and the Fast DDS profile. Skipped when colcon is not
importable (``pip install colcon-core colcon-ros`` into the environment that runs the tests)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAVE_COLCON = all(importlib.util.find_spec(m) is not None for m in ("colcon_core", "colcon_ros"))


def _console_scripts() -> list[str]:
    """The executables setup.py declares (``name = pose_node.module:main``)."""
    return re.findall(r'"(\w+) = pose_node[\w.]*:\w+"', (ROOT / "setup.py").read_text())


@pytest.mark.skipif(not HAVE_COLCON, reason="colcon is not installed (pip install colcon-core colcon-ros)")
def test_colcon_build_installs_executables_launch_config_and_models(tmp_path):
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "colcon", "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(ROOT),
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--event-handlers", "console_direct-"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Finished <<< pose_node" in result.stdout, result.stdout + result.stderr
    prefix = tmp_path / "install" / "pose_node"

    scripts = _console_scripts()
    assert {"pose_node", "pose_replay", "pose_scene", "pose_onboard"} <= set(scripts)
    for name in scripts:
        path = prefix / "lib" / "pose_node" / name
        assert path.is_file() and os.access(path, os.X_OK), f"{path} not installed"
    share = prefix / "share" / "pose_node"
    for relative in ("package.xml", "launch/pose_estimation.launch.py", "config/pose_node.yaml", "config/pose_node.rviz"):
        assert (share / relative).is_file(), relative
    models = {p.name for p in (share / "models").iterdir()}
    assert {p.name for p in (ROOT / "models").glob("*.json")} <= models
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "pose_node").is_file()
    (site,) = (prefix / "lib").glob("python3*/site-packages")
    assert (site / "pose_node" / "ros" / "fastdds_shm_only.xml").is_file()

    # The installed executable runs from the install space (not from this checkout).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    run = subprocess.run([str(prefix / "lib" / "pose_node" / "pose_replay"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "usage: pose_replay" in run.stdout, run.stdout + run.stderr
    probe = subprocess.run([sys.executable, "-c", "import pose_node; print(pose_node.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout + probe.stderr
