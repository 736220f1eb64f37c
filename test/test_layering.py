"""The layering of the package: the runtime (what the node runs) never imports the tooling (what
people run to train, evaluate, time and demo it) or ROS.

Checked twice: statically, on the imports of every file under the runtime packages (imports inside
functions and ``TYPE_CHECKING`` blocks included), and in a fresh interpreter, on the modules that
importing the pipeline and the node actually loads.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pose_node"
RUNTIME = ("core", "onboarding", "detection", "correspondence", "refinement", "features", "render", "pipeline", "datasets",
           "visualization")
TOOLING = ("evaluation", "benchmark", "training", "scene", "apps")
# Top-level modules a ROS-free package must not import (rclpy and the message / TF packages).
ROS_MODULES = ("rclpy", "rosidl_runtime_py", "builtin_interfaces", "std_msgs", "std_srvs", "sensor_msgs", "geometry_msgs",
               "vision_msgs", "visualization_msgs", "diagnostic_msgs", "tf2_ros", "tf2_msgs", "rosbag2_py", "lifecycle_msgs")


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``tree``; ``from pose_node import x`` gives ``pose_node.x``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved by the caller's package; the project does not use them
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module == "pose_node":
                found += [(node.lineno, f"pose_node.{alias.name}") for alias in node.names]
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def forbidden(name: str, allow_ros: bool = False) -> bool:
    parts = name.split(".")
    if name.startswith("."):
        return True
    if parts[0] == "pose_node":
        return len(parts) > 1 and (parts[1] in TOOLING or (parts[1] == "ros" and not allow_ros))
    return not allow_ros and parts[0] in ROS_MODULES


def test_forbidden_names_are_recognized():
    assert forbidden("pose_node.evaluation.runner") and forbidden("pose_node.scene") and forbidden("rclpy.node")
    assert forbidden("pose_node.ros.node_config") and not forbidden("pose_node.ros.node_config", allow_ros=True)
    assert not forbidden("pose_node.pipeline.config") and not forbidden("torch") and not forbidden("pose_node")
    tree = ast.parse("def f():\n    from pose_node import training\n    import sensor_msgs.msg\n")
    assert [n for _, n in imported_modules(tree) if forbidden(n)] == ["pose_node.training", "sensor_msgs.msg"]


def test_no_runtime_file_imports_tooling_or_ros():
    files = [f for package in RUNTIME for f in sorted((PACKAGE_DIR / package).rglob("*.py"))]
    assert len(files) > 50  # the runtime packages were found
    violations = [f"{f.relative_to(PACKAGE_DIR.parent)}:{line}: {name}"
                  for f in files for line, name in imported_modules(ast.parse(f.read_text(), str(f))) if forbidden(name)]
    assert violations == []


def loaded_modules(code: str) -> list[str]:
    """``pose_node`` and ROS modules loaded by ``code`` in a fresh interpreter (repository root first on the path)."""
    script = (f"import json, sys\n{code}\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('pose_node', *json.loads(sys.argv[1])))))")
    result = subprocess.run([sys.executable, "-c", script, json.dumps(ROS_MODULES)], cwd=PACKAGE_DIR.parent, check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_pipeline_loads_no_tooling_or_ros():
    # Every runtime module, the pipeline's stages included (they are imported when it is built).
    code = ("import importlib, pkgutil, pose_node\n"
            f"for package in {RUNTIME!r}:\n"
            "    module = importlib.import_module(f'pose_node.{package}')\n"
            "    for info in pkgutil.walk_packages(module.__path__, f'pose_node.{package}.'):\n"
            "        importlib.import_module(info.name)\n"
            "from pose_node.pipeline import PosePipeline")
    loaded = loaded_modules(code)
    assert "pose_node.pipeline.pipeline" in loaded and "pose_node.correspondence.estimator" in loaded
    assert [m for m in loaded if forbidden(m)] == []
    assert [m for m in loaded_modules("import pose_node.pipeline") if forbidden(m)] == []


@pytest.mark.skipif(importlib.util.find_spec("rclpy") is None, reason="ROS 2 (rclpy) is not installed")
def test_importing_the_node_loads_no_tooling():
    loaded = loaded_modules("import pose_node.ros.node")
    assert "pose_node.ros.node" in loaded and "rclpy" in loaded
    assert [m for m in loaded if forbidden(m, allow_ros=True)] == []
