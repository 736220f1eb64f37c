import numpy as np
import pytest

from pose_node.core import InvalidInputError
from pose_node.scene.layout import LayoutConfig, look_at, make_table_model, sample_layout


@pytest.mark.parametrize("num_cameras", [2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cameras_in_ranges_and_see_table_centre(num_cameras, seed):
    config = LayoutConfig(num_cameras=num_cameras)
    layout = sample_layout(np.random.default_rng(seed), config)
    assert len(layout.cameras) == len(layout.camera_names) == num_cameras
    assert [c.frame_id for c in layout.cameras] == [f"cam{i}_color_optical_frame" for i in range(num_cameras)]
    azimuths = []
    for camera in layout.cameras:
        eye = camera.T_world_camera[:3, 3]
        # distance to the aimed point (table centre + 5 cm, +- look-at jitter)
        distance = np.linalg.norm(eye - [0, 0, 0.05])
        jitter = np.sqrt(3) * config.look_at_jitter_m
        assert config.distance_range_m[0] - jitter <= distance <= config.distance_range_m[1] + jitter
        elevation = np.rad2deg(np.arcsin((eye[2] - 0.05) / distance))
        assert config.elevation_range_deg[0] - 3 <= elevation <= config.elevation_range_deg[1] + 3
        fx = camera.K[0, 0]
        assert 500 <= fx <= 900 and abs(camera.K[1, 1] / fx - 1) <= 0.01
        assert abs(camera.K[0, 2] - 319.5) <= 0.02 * 640 + 1e-9 and abs(camera.K[1, 2] - 239.5) <= 0.02 * 480 + 1e-9
        uv, z = camera.project(np.array([[0.0, 0.0, 0.0]]))
        assert z[0] > 0
        assert 0 <= uv[0, 0] < camera.width and 0 <= uv[0, 1] < camera.height
        # x axis horizontal up to the roll jitter, y pointing down
        assert camera.T_world_camera[2, 1] < 0
        azimuths.append(np.arctan2(eye[1], eye[0]))
    # spread: neighbouring azimuths are at least (1 - 2 * jitter) of the even spacing apart
    gaps = np.diff(np.sort(np.mod(azimuths, 2 * np.pi)), append=np.min(np.mod(azimuths, 2 * np.pi)) + 2 * np.pi)
    assert gaps.min() >= (1 - 2 * config.azimuth_jitter_frac) * 2 * np.pi / num_cameras - 0.15


def test_layout_is_deterministic_and_scales_focal_length():
    a = sample_layout(np.random.default_rng(5), LayoutConfig(num_cameras=4))
    b = sample_layout(np.random.default_rng(5), LayoutConfig(num_cameras=4))
    assert all(np.array_equal(x.T_world_camera, y.T_world_camera) and np.array_equal(x.K, y.K) for x, y in zip(a.cameras, b.cameras))
    small = sample_layout(np.random.default_rng(5), LayoutConfig(num_cameras=4, width_px=320, height_px=240))
    np.testing.assert_allclose([c.K[0, 0] for c in small.cameras], [c.K[0, 0] / 2 for c in a.cameras])


def test_look_at_axes():
    T = look_at(np.array([1.0, 0.0, 0.0]), np.zeros(3))
    np.testing.assert_allclose(T[:3, 2], [-1, 0, 0])  # z forward, toward the target
    np.testing.assert_allclose(T[:3, 1], [0, 0, -1])  # y down
    np.testing.assert_allclose(T[:3, 0], [0, 1, 0], atol=1e-12)  # x right (facing -x with z up: right is +y)
    with pytest.raises(InvalidInputError, match="parallel"):
        look_at(np.array([0.0, 0.0, 1.0]), np.zeros(3))


@pytest.mark.parametrize("kwargs, match", [({"num_cameras": 0}, "num_cameras"), ({"distance_range_m": (1.0, 0.5)}, "distance_range_m"),
                                          ({"elevation_range_deg": (30.0, 95.0)}, "below 90")])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        LayoutConfig(**kwargs)


def test_table_model_top_at_zero():
    table = make_table_model((1.0, 0.8), 0.04, np.zeros((8, 8, 3), np.uint8))
    assert table.vertices[:, 2].max() == 0.0 and table.vertices[:, 2].min() == pytest.approx(-0.04)
    np.testing.assert_allclose(table.vertices[:, :2].max(0), [0.5, 0.4])
    # outward normals: face normals agree with the stored vertex normals
    tri = table.vertices[table.faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(np.einsum("fi,fi->f", face_normals, table.normals[table.faces[:, 0]]) > 0)
