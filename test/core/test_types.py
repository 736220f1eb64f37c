import subprocess
import sys

import numpy as np
import pytest

from pose_node.core import Camera, InvalidInputError, MultiViewFrame, PoseEstimate, View


def _camera(**kw):
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    return Camera(K=K, width=640, height=480, **kw)


def test_camera_projects_optical_axis_to_principal_point():
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 3.0]
    cam = _camera(T_world_camera=T)
    uv, z = cam.project(np.array([[1.0, 2.0, 4.0], [1.1, 2.0, 4.0]]))
    np.testing.assert_allclose(uv[0], [320, 240])
    np.testing.assert_allclose(uv[1], [370, 240])  # 0.1 m right at 1 m depth -> 50 px
    np.testing.assert_allclose(z, [1.0, 1.0])


def test_invalid_inputs_name_the_field():
    with pytest.raises(InvalidInputError, match="Camera.K"):
        Camera(K=np.eye(2), width=640, height=480)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(InvalidInputError, match="T_world_camera"):
        _camera(T_world_camera=bad)
    with pytest.raises(InvalidInputError, match=r"View\[cam1\].rgb.*\(480, 640, 3\)"):
        View(camera=_camera(), rgb=np.zeros((480, 641, 3), np.uint8), name="cam1")
    with pytest.raises(InvalidInputError, match="float32 metres"):
        View(camera=_camera(), rgb=np.zeros((480, 640, 3), np.uint8), depth=np.zeros((480, 640), np.uint16))
    with pytest.raises(InvalidInputError, match="duplicate"):
        v = View(camera=_camera(), rgb=np.zeros((480, 640, 3), np.uint8))
        MultiViewFrame(views=(v, v), stamp_ns=0)
    with pytest.raises(InvalidInputError, match="symmetric"):
        cov = np.eye(6)
        cov[0, 1] = 1.0
        PoseEstimate(object_id=1, instance_id=0, T_world_object=np.eye(4), covariance=cov, score=1.0)


def test_core_imports_without_ros():
    code = (
        "import sys; sys.modules['rclpy'] = None; sys.modules['sensor_msgs'] = None\n"
        "import pose_node.core, pose_node.onboarding.mesh_loading, pose_node.onboarding.procedural\n"
        "import importlib, pkgutil, pose_node\n"
        "for m in pkgutil.walk_packages(pose_node.__path__, 'pose_node.'):\n"
        "    if not m.name.startswith(('pose_node.ros', 'pose_node.benchmark.ros_messages')):\n"
        "        importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
