"""ROS message conversions: images (every encoding, padding, byte order), cameras, detections, markers."""
from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, PoseEstimate
from pose_node.ros.conversions import (
    camera_from_info, covariance_ellipsoid_marker, depth_from_image, estimate_to_detection3d, estimate_to_transform,
    image_to_numpy, label_marker, make_header, mesh_marker, msg_to_matrix, numpy_to_image, rgb_from_image,
    stamp_to_ns,
)

H, W = 5, 7
STAMP_NS = 1_700_000_000_123_456_789


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_rigid(rng) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(rng.normal(size=3)).as_matrix()
    T[:3, 3] = rng.normal(size=3)
    return T


def random_spd(rng, n: int) -> np.ndarray:
    A = rng.normal(size=(n, n))
    return A @ A.T * 1e-4 + np.eye(n) * 1e-6


# --------------------------------------------------------------------------------- images
@pytest.mark.parametrize("step_padding", [0, 5])
@pytest.mark.parametrize("bigendian", [False, True])
def test_round_trip_every_encoding(rng, step_padding, bigendian):
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mono = rng.integers(0, 256, (H, W), dtype=np.uint8)
    depth_m = rng.uniform(0.2, 3.0, (H, W)).astype(np.float32)
    depth_m[0, 0] = 0.0  # no return
    cases = [("rgb8", rgb, rgb), ("bgr8", rgb, rgb), ("mono8", mono, np.repeat(mono[..., None], 3, 2)),
             ("16UC1", depth_m, np.rint(depth_m * 1000) / 1000), ("32FC1", depth_m, depth_m)]
    for encoding, array, expected in cases:
        pixel_bytes = {"rgb8": 3, "bgr8": 3, "mono8": 1, "16UC1": 2, "32FC1": 4}[encoding]
        step = W * pixel_bytes + step_padding
        msg = numpy_to_image(array, encoding, stamp_ns=STAMP_NS, frame_id="cam0_color_optical_frame",
                             step=step, is_bigendian=bigendian)
        assert msg.step == step and len(msg.data) == step * H and msg.encoding == encoding
        assert stamp_to_ns(msg.header.stamp) == STAMP_NS and msg.header.frame_id == "cam0_color_optical_frame"
        out = image_to_numpy(msg)
        assert out.dtype == (np.uint8 if encoding in ("rgb8", "bgr8", "mono8") else np.float32)
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=encoding)
        assert out.flags.writeable and not np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_decoding_reads_the_wire_layout():
    """Hand-built messages, independent of numpy_to_image: channel order, byte order, padding."""
    from sensor_msgs.msg import Image

    bgr = Image(height=1, width=2, encoding="bgr8", step=8, data=bytes([1, 2, 3, 4, 5, 6, 99, 99]))
    np.testing.assert_array_equal(image_to_numpy(bgr), [[[3, 2, 1], [6, 5, 4]]])
    # 16UC1 big-endian, rows padded to 6 bytes: 0x0102 = 258 mm, 0x0A0B = 2571 mm.
    depth = Image(height=2, width=2, encoding="16UC1", is_bigendian=1, step=6,
                  data=bytes([1, 2, 10, 11, 0, 0, 0, 0, 1, 2, 7, 7]))
    np.testing.assert_allclose(image_to_numpy(depth), [[0.258, 2.571], [0.0, 0.258]], atol=1e-7)
    little = Image(height=1, width=1, encoding="16UC1", is_bigendian=0, step=2, data=bytes([2, 1]))
    assert image_to_numpy(little)[0, 0] == pytest.approx(0.258)
    f32be = Image(height=1, width=1, encoding="32FC1", is_bigendian=1, step=4, data=np.array([1.5], ">f4").tobytes())
    assert image_to_numpy(f32be)[0, 0] == 1.5


def test_16uc1_from_metres_clamps_and_from_uint16_is_raw():
    depth = np.array([[0.0, -1.0, np.nan, 70.0, 1.2344]], np.float32)
    np.testing.assert_allclose(image_to_numpy(numpy_to_image(depth, "16UC1")), [[0, 0, 0, 0, 1.234]], atol=1e-7)
    raw = np.array([[0, 65535]], np.uint16)
    np.testing.assert_allclose(image_to_numpy(numpy_to_image(raw, "16UC1")), [[0.0, 65.535]], rtol=1e-7)


def test_image_errors():
    from sensor_msgs.msg import Image

    with pytest.raises(InvalidInputError, match=r"Image.encoding: 'rgba8' is not supported; expected one of rgb8, bgr8"):
        image_to_numpy(Image(height=1, width=1, encoding="rgba8", step=4, data=bytes(4)))
    with pytest.raises(InvalidInputError, match=r"Image.data: expected step x height = 42 bytes, got 40"):
        image_to_numpy(Image(height=2, width=7, encoding="rgb8", step=21, data=bytes(40)))
    with pytest.raises(InvalidInputError, match=r"Image.step: 20 bytes is less than .* = 21"):
        image_to_numpy(Image(height=2, width=7, encoding="rgb8", step=20, data=bytes(40)))
    with pytest.raises(InvalidInputError, match="empty image"):
        image_to_numpy(Image(height=0, width=7, encoding="rgb8", step=21))
    depth_msg = numpy_to_image(np.ones((2, 2), np.float32), "32FC1")
    with pytest.raises(InvalidInputError, match="colour Image.encoding: expected one of rgb8, bgr8, mono8, got '32FC1'"):
        rgb_from_image(depth_msg)
    with pytest.raises(InvalidInputError, match="depth Image.encoding: expected one of 16UC1, got '32FC1'"):
        depth_from_image(depth_msg, expected_encoding="16UC1")
    assert depth_from_image(depth_msg).shape == (2, 2)
    with pytest.raises(InvalidInputError, match="expected uint8"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(InvalidInputError, match=r"expected shape \(H, W\)"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "32FC1")
    with pytest.raises(InvalidInputError, match="step 3 is less than the row size 8"):
        numpy_to_image(np.zeros((2, 2), np.float32), "32FC1", step=3)


def test_numpy_to_image_is_fast_for_a_vga_frame():
    rgb = np.zeros((480, 640, 3), np.uint8)
    numpy_to_image(rgb, "rgb8")
    start = time.perf_counter()
    for _ in range(5):
        numpy_to_image(rgb, "rgb8")
    assert (time.perf_counter() - start) / 5 < 0.03  # assigning the ndarray itself takes ~60 ms


# --------------------------------------------------------------------------------- cameras
def camera_info(**overrides):
    from sensor_msgs.msg import CameraInfo

    K = np.array([[600.0, 0, 319.5], [0, 601.0, 239.5], [0, 0, 1]])
    P = np.zeros((3, 4))
    P[:, :3] = K
    P[0, 0] = 590.0
    msg = CameraInfo(header=make_header(STAMP_NS, "cam0_color_optical_frame"), width=640, height=480,
                     distortion_model="plumb_bob", d=[0.0] * 5, k=K.reshape(-1), p=P.reshape(-1))
    for key, value in overrides.items():
        setattr(msg, key, value)
    return msg


def test_camera_from_info(rng):
    T = random_rigid(rng)
    camera = camera_from_info(camera_info(), T, image_size=(640, 480))
    assert camera.K[0, 0] == 600.0 and camera.K[1, 2] == 239.5 and (camera.width, camera.height) == (640, 480)
    assert camera.frame_id == "cam0_color_optical_frame" and camera.distortion is None
    np.testing.assert_allclose(camera.T_world_camera, T)
    assert camera_from_info(camera_info(), T, use_projection_matrix=True).K[0, 0] == 590.0
    assert camera_from_info(camera_info(d=[0.1, 0, 0, 0, 0]), T).distortion[0] == 0.1


def test_camera_from_info_errors():
    T = np.eye(4)
    with pytest.raises(InvalidInputError, match=r"CameraInfo.k: all zeros \(the camera is not calibrated\)"):
        camera_from_info(camera_info(k=np.zeros(9)), T)
    with pytest.raises(InvalidInputError, match="size 640x480 does not match the image's 1280x720"):
        camera_from_info(camera_info(), T, image_size=(1280, 720))
    with pytest.raises(InvalidInputError, match="zero image size"):
        camera_from_info(camera_info(width=0), T)
    with pytest.raises(InvalidInputError, match="binning"):
        camera_from_info(camera_info(binning_x=2), T)
    with pytest.raises(InvalidInputError, match="frame_id: empty"):
        camera_from_info(camera_info(header=make_header(0, "")), T)


# --------------------------------------------------------------------------------- detections
def test_detection3d_carries_pose_covariance_and_box(rng):
    T = random_rigid(rng)
    cov = random_spd(rng, 6)
    estimate = PoseEstimate(object_id=3, instance_id=2, T_world_object=T, covariance=cov, score=0.83)
    lo, hi = np.array([-0.02, -0.03, 0.0]), np.array([0.04, 0.03, 0.12])
    det = estimate_to_detection3d(estimate, make_header(STAMP_NS, "world"), (lo, hi), "mug")
    assert det.header.frame_id == "world" and stamp_to_ns(det.header.stamp) == STAMP_NS
    assert det.id == "mug_2" and len(det.results) == 1
    hyp = det.results[0]
    assert hyp.hypothesis.class_id == "mug" and hyp.hypothesis.score == pytest.approx(0.83)
    np.testing.assert_array_equal(np.asarray(hyp.pose.covariance).reshape(6, 6), cov)  # exact, row-major
    np.testing.assert_allclose(msg_to_matrix(hyp.pose.pose), T, atol=1e-12)
    box = msg_to_matrix(det.bbox.center)
    np.testing.assert_allclose(box[:3, 3], T[:3, :3] @ ((lo + hi) / 2) + T[:3, 3], atol=1e-12)
    np.testing.assert_allclose(box[:3, :3], T[:3, :3], atol=1e-12)
    assert (det.bbox.size.x, det.bbox.size.y, det.bbox.size.z) == pytest.approx(tuple(hi - lo))
    with pytest.raises(InvalidInputError, match="model_bbox"):
        estimate_to_detection3d(estimate, make_header(0, "world"), (hi, lo), "mug")


def test_transform_stamped(rng):
    T = random_rigid(rng)
    estimate = PoseEstimate(object_id=1, instance_id=0, T_world_object=T, covariance=np.eye(6), score=1.0)
    msg = estimate_to_transform(estimate, make_header(STAMP_NS, "world"), "mug_0")
    assert msg.header.frame_id == "world" and msg.child_frame_id == "mug_0"
    from pose_node.ros.tf_buffer import transform_from_message

    np.testing.assert_allclose(transform_from_message(msg.transform), T, atol=1e-12)


# --------------------------------------------------------------------------------- markers
@pytest.mark.parametrize("seed", range(5))
def test_ellipsoid_orientation_and_scale_reproduce_the_covariance(seed):
    from visualization_msgs.msg import Marker

    rng = np.random.default_rng(seed)
    cov = random_spd(rng, 3)
    marker = covariance_ellipsoid_marker(make_header(0, "world"), [1.0, 2.0, 3.0], cov, n_sigma=3.0)
    assert marker.type == Marker.SPHERE and marker.header.frame_id == "world"
    R = msg_to_matrix(marker.pose)[:3, :3]
    assert np.linalg.det(R) == pytest.approx(1.0)
    s = np.array([marker.scale.x, marker.scale.y, marker.scale.z])
    np.testing.assert_allclose(R @ np.diag(s**2) @ R.T, (2 * 3.0) ** 2 * cov, rtol=1e-9, atol=1e-15)
    assert (marker.pose.position.x, marker.pose.position.y, marker.pose.position.z) == (1.0, 2.0, 3.0)


def test_ellipsoid_degenerate_and_invalid():
    flat = np.diag([1e-4, 0.0, 0.0])
    marker = covariance_ellipsoid_marker(make_header(0, "world"), [0, 0, 0], flat, n_sigma=1.0, min_diameter_m=1e-3)
    assert sorted([marker.scale.x, marker.scale.y, marker.scale.z]) == pytest.approx([1e-3, 1e-3, 0.02])
    with pytest.raises(InvalidInputError, match="positive semi-definite"):
        covariance_ellipsoid_marker(make_header(0, "world"), [0, 0, 0], -np.eye(3))
    with pytest.raises(InvalidInputError, match="symmetric"):
        covariance_ellipsoid_marker(make_header(0, "world"), [0, 0, 0], np.triu(np.ones((3, 3))))


def test_mesh_and_label_markers(tmp_path, rng):
    from visualization_msgs.msg import Marker

    T = random_rigid(rng)
    header = make_header(STAMP_NS, "world")
    mesh_file = tmp_path / "mug.ply"
    mesh_file.write_text("ply\n")
    marker = mesh_marker(header, T, mesh_path=mesh_file, mesh_scale=0.001, color=None, marker_id=4)
    assert marker.type == Marker.MESH_RESOURCE and marker.mesh_resource == f"file://{mesh_file.resolve()}"
    assert marker.scale.x == 0.001 and marker.mesh_use_embedded_materials and marker.id == 4
    np.testing.assert_allclose(msg_to_matrix(marker.pose), T, atol=1e-12)

    vertices = rng.normal(size=(30, 3)).astype(np.float32)
    faces = rng.integers(0, 30, (40, 3)).astype(np.int32)
    model = ObjectModel(object_id=1, name="mug", vertices=vertices, faces=faces, normals=vertices, diameter_m=1.0)
    tri = mesh_marker(header, T, model=model)
    assert tri.type == Marker.TRIANGLE_LIST and len(tri.points) == 120
    assert tri.points[3].x == pytest.approx(float(vertices[faces[1, 0], 0]))
    assert len(mesh_marker(header, T, model=model, max_triangles=10).points) == 30
    with pytest.raises(InvalidInputError, match="exactly one"):
        mesh_marker(header, T)

    label = label_marker(header, [0.1, 0.2, 0.3], "mug 0.83", marker_id=7)
    assert label.type == Marker.TEXT_VIEW_FACING and label.text == "mug 0.83" and label.scale.z == 0.03
    assert (label.pose.position.x, label.pose.position.z) == (0.1, 0.3)
