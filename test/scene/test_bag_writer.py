import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from pose_node.core import Camera, InvalidInputError
from pose_node.scene.bag_writer import WorkcellBagWriter, camera_topics, depth_to_image_data, typestore
from pose_node.scene.layout import LayoutConfig, sample_layout


def _read(path):
    store = typestore()
    out = {}
    with Reader(path) as reader:
        assert reader.connections[0].ext.serialization_format == "cdr"
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, store.deserialize_cdr(raw, connection.msgtype), connection))
    return out


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_round_trip(tmp_path, encoding):
    layout = sample_layout(np.random.default_rng(0), LayoutConfig(num_cameras=2, width_px=32, height_px=24))
    rng = np.random.default_rng(1)
    stamps = [[1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + 3_000_000], [1_700_000_000_100_000_000] * 2]
    frames = [([rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(2)],
               [rng.uniform(0.3, 2.0, (24, 32)).astype(np.float32) for _ in range(2)]) for _ in stamps]
    frames[0][1][0][0, :5] = 0.0  # invalid pixels
    with WorkcellBagWriter(tmp_path / "bag", layout.cameras, layout.camera_names, depth_encoding=encoding) as writer:
        for s, (rgbs, depths) in zip(stamps, frames):
            writer.write_frame(s, rgbs, depths)
    msgs = _read(tmp_path / "bag")
    expected = {"/tf_static", "/clock"} | {t for n in layout.camera_names for t in camera_topics(n).values()}
    assert set(msgs) == expected
    assert len(msgs["/tf_static"]) == 1 and msgs["/tf_static"][0][0] == stamps[0][0]
    assert msgs["/tf_static"][0][2].ext.offered_qos_profiles[0].durability.name == "TRANSIENT_LOCAL"
    assert [t for t, *_ in msgs["/clock"]] == [stamps[0][0], stamps[1][0]]
    tf = msgs["/tf_static"][0][1].transforms
    for cam_index, (name, camera) in enumerate(zip(layout.camera_names, layout.cameras)):
        topics = camera_topics(name)
        t = tf[cam_index]
        assert t.header.frame_id == "world" and t.child_frame_id == camera.frame_id == f"{name}_color_optical_frame"
        q = t.transform.rotation
        R = _quat_to_matrix(q.x, q.y, q.z, q.w)
        np.testing.assert_allclose(R, camera.T_world_camera[:3, :3], atol=1e-9)
        translation = t.transform.translation
        np.testing.assert_allclose([translation.x, translation.y, translation.z], camera.T_world_camera[:3, 3])
        for frame_index, (s, (rgbs, depths)) in enumerate(zip(stamps, frames)):
            stamp = s[cam_index]
            timestamp, image, _ = msgs[topics["color"]][frame_index]
            assert timestamp == stamp == image.header.stamp.sec * 10**9 + image.header.stamp.nanosec
            assert image.encoding == "rgb8" and image.header.frame_id == camera.frame_id and image.step == 32 * 3
            assert np.array_equal(image.data.reshape(24, 32, 3), rgbs[cam_index])
            _, depth, _ = msgs[topics["depth"]][frame_index]
            assert depth.encoding == encoding and depth.header.frame_id == camera.frame_id and depth.is_bigendian == 0
            if encoding == "32FC1":
                decoded = depth.data.view("<f4").reshape(24, 32)
                assert np.array_equal(decoded, depths[cam_index])
            else:
                decoded = depth.data.view("<u2").reshape(24, 32) / 1000.0
                np.testing.assert_allclose(decoded, depths[cam_index], atol=0.5e-3 + 1e-7)
            assert depth.step == 32 * (4 if encoding == "32FC1" else 2)
            for info_topic in ("color_info", "depth_info"):
                _, info, _ = msgs[topics[info_topic]][frame_index]
                np.testing.assert_allclose(info.k.reshape(3, 3), camera.K)
                np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], camera.K)
                assert info.distortion_model == "plumb_bob" and np.all(info.d == 0) and len(info.d) == 5
                assert (info.width, info.height) == (32, 24) and info.header.frame_id == camera.frame_id
                assert info.header.stamp.sec * 10**9 + info.header.stamp.nanosec == stamp


def _quat_to_matrix(x, y, z, w):
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def test_depth_16uc1_invalid_and_out_of_range():
    data, step = depth_to_image_data(np.array([[0.0, 0.0004, 1.2344, 70.0]], np.float32), "16UC1")
    assert step == 8
    assert data.view("<u2").tolist() == [0, 0, 1234, 0]  # 0.4 mm rounds to 0 (invalid); 70 m does not fit


def test_bad_input_raises(tmp_path):
    camera = Camera(K=np.diag([100.0, 100.0, 1.0]), width=8, height=6, frame_id="cam0_color_optical_frame")
    with pytest.raises(InvalidInputError, match="depth_encoding"):
        WorkcellBagWriter(tmp_path / "a", [camera], ["cam0"], depth_encoding="16SC1")
    with WorkcellBagWriter(tmp_path / "b", [camera], ["cam0"]) as writer:
        with pytest.raises(InvalidInputError, match="rgb must be"):
            writer.write_frame([0], [np.zeros((6, 8), np.uint8)], [None])
        with pytest.raises(InvalidInputError, match="expected 1 stamps"):
            writer.write_frame([0, 1], [np.zeros((6, 8, 3), np.uint8)], [None])
