"""Mesh units: one list for node, pose_onboard and mesh loading; the likely unit from a size ratio."""
from __future__ import annotations

import numpy as np
import pytest

from pose_node.core.types import Camera, View
from pose_node.core.units import MESH_UNITS, UNIT_TO_METRES, depth_distance_ratio, likely_units


def test_one_list_of_units():
    from pose_node.onboarding import mesh_loading
    from pose_node.ros import node_config

    assert MESH_UNITS == ("m", "cm", "mm", "in") and node_config.MESH_UNITS == MESH_UNITS
    assert mesh_loading.UNIT_TO_METRES is UNIT_TO_METRES


@pytest.mark.parametrize("declared, ratio, expected", [
    ("cm", 10.0, "mm"),        # a millimetre mesh declared in centimetres: 10 times too large
    ("m", 1000.0, "mm"), ("mm", 0.001, "m"), ("mm", 1 / 25.4, "in"), ("m", 100.0, "cm"),
    ("cm", 1.3, None), ("m", 0.6, None),  # within the tolerance: the declared unit fits
    ("m", 10.0, "unknown"),    # no unit is 10 times smaller than a metre
    ("m", float("nan"), None),
])
def test_likely_units(declared, ratio, expected):
    assert likely_units(declared, ratio) == expected


def test_depth_distance_ratio():
    K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    T_world_camera = np.eye(4)
    T_world_camera[:3, 3] = [0.0, 0.0, -1.0]  # the camera 1 m behind the world origin, looking along +z
    depth = np.full((48, 64), 0.25, np.float32)
    depth[:5, :5] = 0.0  # no return there
    view = View(camera=Camera(K=K, width=64, height=48, T_world_camera=T_world_camera), rgb=np.zeros((48, 64, 3), np.uint8),
                depth=depth, name="cam0")
    T_world_object = np.eye(4)
    ratio, name = depth_distance_ratio(T_world_object, [view])  # estimated at 1 m, depth says 0.25 m
    assert ratio == pytest.approx(4.0) and name == "cam0"
    T_world_object[:3, 3] = [0.0, 0.0, -2.0]  # behind the camera: no ratio
    assert depth_distance_ratio(T_world_object, [view]) is None
    assert depth_distance_ratio(np.eye(4), [View(camera=view.camera, rgb=view.rgb, depth=None, name="rgb")]) is None
