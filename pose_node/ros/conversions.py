"""ROS messages <-> pose_node core types (used by the ROS adapter only; imports the message packages).

``cv_bridge`` is not installable here (and the PyPI package of that name is an unrelated ROS 1
port that decodes 16UC1 as 8-bit), so images are converted here with numpy, handling what
cv_bridge handles for the encodings a workcell uses: row padding (``step`` > width x pixel
size) and ``is_bigendian``. Depth always comes out as float32 metres, whatever the encoding, so
the core never sees millimetres.

Frames and conventions are those of :mod:`pose_node.core.geometry`: ``T_a_b`` maps points in
``b`` into ``a``; a TransformStamped carries ``T_frame_id_child``; quaternions are (x, y, z, w);
pose covariances are 6x6 in ``(x, y, z, rot_x, rot_y, rot_z)`` about the parent frame's axes,
exactly the order of ``geometry_msgs/PoseWithCovariance``, so they are copied, never permuted.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Point, Pose as PoseMsg, PoseWithCovariance, Quaternion, Transform, TransformStamped, Vector3
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import BoundingBox3D, Detection3D, ObjectHypothesis, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.core.types import Camera, ObjectModel, PoseEstimate, as_rigid_transform

NS_PER_S = 1_000_000_000

# encoding -> (little-endian numpy dtype, channels)
_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "mono8": ("u1", 1),
    "16UC1": ("<u2", 1),
    "32FC1": ("<f4", 1),
}
COLOR_ENCODINGS: tuple[str, ...] = ("rgb8", "bgr8", "mono8")
DEPTH_ENCODINGS: tuple[str, ...] = ("16UC1", "32FC1")
_MM_PER_M = 1000.0
_UINT16_MAX = 65535


# ---------------------------------------------------------------------------------------------
# Stamps and headers
# ---------------------------------------------------------------------------------------------
def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    """Nanoseconds (>= 0) -> ``builtin_interfaces/Time``."""
    if stamp_ns < 0:
        raise InvalidInputError(f"stamp_ns: expected >= 0, got {stamp_ns}")
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def _duration(seconds: float) -> Duration:
    sec, nanosec = divmod(int(round(seconds * NS_PER_S)), NS_PER_S)
    return Duration(sec=sec, nanosec=nanosec)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def _pixel_array(msg: Image) -> np.ndarray:
    """The pixels of ``msg`` as (H, W, C) in the encoding's dtype, native byte order, owning its memory."""
    if msg.encoding not in _ENCODINGS:
        raise InvalidInputError(
            f"Image.encoding: {msg.encoding!r} is not supported; expected one of {', '.join(_ENCODINGS)}")
    base, channels = _ENCODINGS[msg.encoding]
    dtype = np.dtype(base)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise InvalidInputError(f"Image: empty image ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise InvalidInputError(
            f"Image.step: {step} bytes is less than width x channels x bytes per channel = {row_bytes} ({msg.encoding})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size != step * height:
        raise InvalidInputError(f"Image.data: expected step x height = {step * height} bytes, got {data.size}")
    rows = data.reshape(height, step)[:, :row_bytes]
    # ascontiguousarray drops the row padding (a copy when padded); astype makes native byte order
    # and always copies, so the result never aliases the message buffer.
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    return pixels.astype(dtype.newbyteorder("="), copy=True)


def image_to_numpy(msg: Image) -> np.ndarray:
    """Decode a ``sensor_msgs/Image``.

    Args:
        msg: rgb8, bgr8, mono8 (colour) or 16UC1 (millimetres), 32FC1 (metres) (depth); any
            ``step`` >= the row size; either byte order.
    Returns:
        Colour: (H, W, 3) uint8, RGB order (mono8 is replicated). Depth: (H, W) float32 metres,
        0 where 16UC1 is 0 (no return); 32FC1 values are passed through (0 or NaN = invalid).
    Raises:
        InvalidInputError: unsupported encoding, empty image, ``step`` too small, or a data size
            other than ``step x height``.
    """
    pixels = _pixel_array(msg)
    if msg.encoding == "rgb8":
        return pixels
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(pixels[..., ::-1])
    if msg.encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    if msg.encoding == "16UC1":
        return pixels[..., 0].astype(np.float32) / np.float32(_MM_PER_M)
    return pixels[..., 0].astype(np.float32, copy=False)


def rgb_from_image(msg: Image) -> np.ndarray:
    """:func:`image_to_numpy` for a colour topic: (H, W, 3) uint8 RGB; a depth encoding is an error."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise InvalidInputError(f"colour Image.encoding: expected one of {', '.join(COLOR_ENCODINGS)}, got {msg.encoding!r}")
    return image_to_numpy(msg)


def depth_from_image(msg: Image, expected_encoding: str | None = None) -> np.ndarray:
    """:func:`image_to_numpy` for a depth topic: (H, W) float32 metres.

    Args:
        msg: 16UC1 or 32FC1.
        expected_encoding: when set (``cameras.<name>.depth_encoding``), any other encoding is an error.
    """
    allowed = (expected_encoding,) if expected_encoding else DEPTH_ENCODINGS
    if msg.encoding not in allowed:
        raise InvalidInputError(f"depth Image.encoding: expected one of {', '.join(allowed)}, got {msg.encoding!r}")
    return image_to_numpy(msg)


def numpy_to_image(array: np.ndarray, encoding: str, *, stamp_ns: int = 0, frame_id: str = "",
                   step: int | None = None, is_bigendian: bool = False) -> Image:
    """Encode an image (for tests, bags and debug topics); the inverse of :func:`image_to_numpy`.

    Args:
        array: rgb8 / bgr8: (H, W, 3) uint8 in RGB order (bgr8 reorders it). mono8: (H, W) uint8.
            16UC1: (H, W) float metres (rounded to millimetres; <= 0, non-finite or beyond
            65.535 m -> 0) or uint16 millimetres as they are. 32FC1: (H, W) float metres.
        encoding: one of rgb8, bgr8, mono8, 16UC1, 32FC1.
        stamp_ns, frame_id: the header.
        step: row size in bytes, >= width x pixel size (larger pads every row); default unpadded.
        is_bigendian: byte order of multi-byte encodings.
    Raises:
        InvalidInputError: unsupported encoding, wrong shape or dtype, ``step`` too small.
    """
    if encoding not in _ENCODINGS:
        raise InvalidInputError(f"encoding: {encoding!r} is not supported; expected one of {', '.join(_ENCODINGS)}")
    array = np.asarray(array)
    base, channels = _ENCODINGS[encoding]
    expected_ndim = 3 if channels == 3 else 2
    if array.ndim != expected_ndim or (channels == 3 and array.shape[2] != 3):
        expected = "(H, W, 3)" if channels == 3 else "(H, W)"
        raise InvalidInputError(f"numpy_to_image({encoding}): expected shape {expected}, got {array.shape}")
    if channels == 3 or encoding == "mono8":
        if array.dtype != np.uint8:
            raise InvalidInputError(f"numpy_to_image({encoding}): expected uint8, got {array.dtype}")
        pixels = array[..., ::-1] if encoding == "bgr8" else array
    elif encoding == "16UC1":
        if array.dtype == np.uint16:
            pixels = array
        else:
            mm = np.rint(np.nan_to_num(np.asarray(array, np.float64), nan=0.0, posinf=0.0, neginf=0.0) * _MM_PER_M)
            pixels = np.where((mm > 0) & (mm <= _UINT16_MAX), mm, 0).astype(np.uint16)
    else:
        pixels = array.astype(np.float32, copy=False)
    dtype = np.dtype(base).newbyteorder(">" if is_bigendian else "<") if np.dtype(base).itemsize > 1 else np.dtype(base)
    raw = np.ascontiguousarray(pixels, dtype=dtype).view(np.uint8).reshape(array.shape[0], -1)
    height, row_bytes = raw.shape
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise InvalidInputError(f"numpy_to_image: step {step} is less than the row size {row_bytes} bytes")
    if step > row_bytes:
        padded = np.zeros((height, step), np.uint8)
        padded[:, :row_bytes] = raw
        raw = padded
    msg = Image(header=make_header(stamp_ns, frame_id), height=height, width=array.shape[1], encoding=encoding,
                is_bigendian=int(bool(is_bigendian) and dtype.itemsize > 1), step=step)
    msg.data = raw.tobytes()  # bytes, not the ndarray: assigning an ndarray element-copies (~60 ms per frame)
    return msg


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------
def camera_from_info(msg: CameraInfo, T_world_camera: np.ndarray, *, image_size: tuple[int, int] | None = None,
                     use_projection_matrix: bool = False) -> Camera:
    """``sensor_msgs/CameraInfo`` -> :class:`pose_node.core.types.Camera`.

    Args:
        msg: calibration of the colour camera; ``header.frame_id`` is its optical frame.
        T_world_camera: (4, 4) pose of that optical frame in the world frame, metres (from TF or
            the static extrinsics of the configuration).
        image_size: ``(width, height)`` of the image it goes with, pixels; a different size in
            ``msg`` is an error (an info from another stream or resolution).
        use_projection_matrix: take the intrinsics from ``P[:, :3]`` instead of ``K`` (for
            rectified images, whose intrinsics are P's).
    Returns:
        The camera; ``distortion`` is ``msg.d`` (None when empty or all zero).
    Raises:
        InvalidInputError: all-zero or non-positive focal lengths (uncalibrated camera), zero
            size, size mismatch, binning or a region of interest (not supported), empty frame id.
    """
    width, height = int(msg.width), int(msg.height)
    if width == 0 or height == 0:
        raise InvalidInputError(f"CameraInfo: zero image size ({width}x{height})")
    if image_size is not None and (width, height) != tuple(image_size):
        raise InvalidInputError(
            f"CameraInfo: size {width}x{height} does not match the image's {image_size[0]}x{image_size[1]}")
    if use_projection_matrix:
        K = np.asarray(msg.p, np.float64).reshape(3, 4)[:, :3]
    else:
        K = np.asarray(msg.k, np.float64).reshape(3, 3)
    name = "p" if use_projection_matrix else "k"
    if not np.any(K):
        raise InvalidInputError(f"CameraInfo.{name}: all zeros (the camera is not calibrated)")
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InvalidInputError(f"CameraInfo.{name}: focal lengths must be finite and positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if max(msg.binning_x, msg.binning_y) > 1:
        raise InvalidInputError(f"CameraInfo: binning {msg.binning_x}x{msg.binning_y} is not supported")
    roi = msg.roi
    if roi.width or roi.height or roi.x_offset or roi.y_offset:
        if (roi.x_offset, roi.y_offset, roi.width, roi.height) != (0, 0, width, height):
            raise InvalidInputError("CameraInfo.roi: a region of interest is not supported")
    if not msg.header.frame_id:
        raise InvalidInputError("CameraInfo.header.frame_id: empty (TF needs the optical frame)")
    d = np.asarray(msg.d, np.float64)
    return Camera(K=K, width=width, height=height, T_world_camera=T_world_camera,
                  distortion=d if d.size and np.any(d) else None, frame_id=msg.header.frame_id)


# ---------------------------------------------------------------------------------------------
# Poses and detections
# ---------------------------------------------------------------------------------------------
def _quaternion_xyzw(R: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    return Pose.from_matrix(T).quaternion_xyzw().numpy()


def pose_to_msg(T: np.ndarray) -> PoseMsg:
    """(4, 4) rigid transform -> ``geometry_msgs/Pose`` (the child's pose in the parent frame)."""
    q = _quaternion_xyzw(T[:3, :3])
    return PoseMsg(position=Point(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                   orientation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])))


def msg_to_matrix(pose: PoseMsg) -> np.ndarray:
    """``geometry_msgs/Pose`` -> (4, 4) float64 (inverse of :func:`pose_to_msg`)."""
    q = torch.tensor([pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w], dtype=torch.float64)
    t = torch.tensor([pose.position.x, pose.position.y, pose.position.z], dtype=torch.float64)
    return Pose.from_quaternion_xyzw(q, t).matrix().numpy()


def estimate_to_detection3d(estimate: PoseEstimate, header: Header, model_bbox: tuple[np.ndarray, np.ndarray],
                            class_name: str, *, detection_id: str | None = None) -> Detection3D:
    """A world-frame pose estimate -> ``vision_msgs/Detection3D``.

    Args:
        estimate: pose ``T_world_object`` and its 6x6 covariance (ROS order, world axes).
        header: stamp of the images and ``frame_id`` = the world frame.
        model_bbox: ``(min, max)``, each (3,), the mesh's axis-aligned box in the object frame,
            metres (:attr:`pose_node.core.types.ObjectModel.bbox_min_max`).
        class_name: ``ObjectHypothesis.class_id`` (the configured object name).
        detection_id: ``Detection3D.id`` (default ``<class_name>_<instance_id>``, stable across frames).
    Returns:
        One hypothesis (class id, score, pose with the covariance copied row-major) and the
        oriented box: centre = the box centre moved by the pose, orientation = the object's,
        size = max - min.
    Raises:
        InvalidInputError: bad box, empty class name, non-finite covariance.
    """
    lo, hi = (np.asarray(v, np.float64).reshape(-1) for v in model_bbox)
    if lo.shape != (3,) or hi.shape != (3,) or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)) or np.any(hi < lo):
        raise InvalidInputError(f"model_bbox: expected (min (3,), max (3,)) with max >= min, got {lo}, {hi}")
    if not class_name:
        raise InvalidInputError("class_name: empty")
    cov = np.asarray(estimate.covariance, np.float64)
    if not np.all(np.isfinite(cov)):
        raise InvalidInputError("PoseEstimate.covariance: contains NaN or inf")
    T = np.asarray(estimate.T_world_object, np.float64)
    hypothesis = ObjectHypothesisWithPose(
        hypothesis=ObjectHypothesis(class_id=class_name, score=float(estimate.score)),
        pose=PoseWithCovariance(pose=pose_to_msg(T), covariance=cov.reshape(36).copy()),
    )
    T_box = T.copy()
    T_box[:3, 3] = T[:3, :3] @ ((lo + hi) / 2.0) + T[:3, 3]
    size = hi - lo
    bbox = BoundingBox3D(center=pose_to_msg(T_box), size=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])))
    return Detection3D(header=header, results=[hypothesis], bbox=bbox,
                       id=detection_id if detection_id is not None else f"{class_name}_{estimate.instance_id}")


def estimate_to_transform(estimate: PoseEstimate, header: Header, child_frame: str) -> TransformStamped:
    """``T_world_object`` -> TransformStamped (``header.frame_id`` = world, ``child_frame_id`` = the object's frame)."""
    if not child_frame or child_frame.startswith("/"):
        raise InvalidInputError(f"child_frame: expected a TF frame id, got {child_frame!r}")
    T = np.asarray(estimate.T_world_object, np.float64)
    q = _quaternion_xyzw(T[:3, :3])
    return TransformStamped(
        header=header, child_frame_id=child_frame,
        transform=Transform(translation=Vector3(x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
                            rotation=Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))),
    )


# ---------------------------------------------------------------------------------------------
# Markers
# ---------------------------------------------------------------------------------------------
def _color(rgba: Sequence[float]) -> ColorRGBA:
    if len(rgba) != 4:
        raise InvalidInputError(f"color: expected (r, g, b, a), got {rgba!r}")
    r, g, b, a = (float(v) for v in rgba)
    return ColorRGBA(r=r, g=g, b=b, a=a)


def _marker(header: Header, ns: str, marker_id: int, marker_type: int, lifetime_s: float) -> Marker:
    return Marker(header=header, ns=ns, id=int(marker_id), type=marker_type, action=Marker.ADD,
                  lifetime=_duration(lifetime_s))


def covariance_ellipsoid_marker(header: Header, position_m: Sequence[float], covariance_m2: np.ndarray, *,
                                n_sigma: float = 2.0, ns: str = "covariance", marker_id: int = 0,
                                color: Sequence[float] = (1.0, 0.6, 0.0, 0.35), min_diameter_m: float = 1e-4,
                                lifetime_s: float = 0.0) -> Marker:
    """The ``n_sigma`` ellipsoid of a position covariance, as a SPHERE marker.

    With ``cov = V diag(lambda) V^T`` (V right-handed), the marker's orientation is V and its
    scale (full axis lengths, which is what ``Marker.scale`` means for a sphere) is
    ``2 n_sigma sqrt(lambda)``, so ``R diag(scale^2) R^T = (2 n_sigma)^2 cov``. For a 3-D
    Gaussian the 2-sigma ellipsoid holds 73.9 % of the mass, the 3-sigma one 97.1 %.

    Args:
        header: frame of the covariance (the world frame for :class:`PoseEstimate`).
        position_m: (3,) centre, metres.
        covariance_m2: (3, 3) position covariance, m^2 (``PoseEstimate.covariance[:3, :3]``).
        n_sigma: semi-axes in standard deviations.
        min_diameter_m: axes are at least this long, so a degenerate covariance stays visible.
    Raises:
        InvalidInputError: wrong shape, non-finite, asymmetric or clearly negative-definite covariance.
    """
    cov = np.asarray(covariance_m2, np.float64)
    position = np.asarray(position_m, np.float64).reshape(-1)
    if cov.shape != (3, 3) or position.shape != (3,):
        raise InvalidInputError(f"covariance_ellipsoid_marker: expected (3,) and (3, 3), got {position.shape} and {cov.shape}")
    if not np.all(np.isfinite(cov)) or not np.allclose(cov, cov.T, atol=1e-12 + 1e-9 * np.abs(cov).max()):
        raise InvalidInputError("covariance_m2: not finite and symmetric")
    eigenvalues, V = np.linalg.eigh(cov)
    if eigenvalues[0] < -1e-9 * max(eigenvalues[-1], 1e-30):
        raise InvalidInputError(f"covariance_m2: not positive semi-definite (eigenvalues {eigenvalues})")
    if np.linalg.det(V) < 0:
        V[:, 2] = -V[:, 2]  # eigh may return a reflection; a marker orientation must be a rotation
    scale = np.maximum(2.0 * n_sigma * np.sqrt(np.clip(eigenvalues, 0.0, None)), min_diameter_m)
    T = np.eye(4)
    T[:3, :3] = V
    T[:3, 3] = position
    marker = _marker(header, ns, marker_id, Marker.SPHERE, lifetime_s)
    marker.pose = pose_to_msg(T)
    marker.scale = Vector3(x=float(scale[0]), y=float(scale[1]), z=float(scale[2]))
    marker.color = _color(color)
    return marker


def mesh_marker(header: Header, T_frame_object: np.ndarray, *, mesh_path: str | Path | None = None,
                mesh_scale: float = 1.0, model: ObjectModel | None = None, ns: str = "meshes", marker_id: int = 0,
                color: Sequence[float] | None = (0.2, 0.8, 0.2, 0.6), max_triangles: int = 20000,
                lifetime_s: float = 0.0) -> Marker:
    """The object's mesh at its pose: MESH_RESOURCE from a file, or a TRIANGLE_LIST from a model.

    Args:
        header: the frame of ``T_frame_object`` (the world frame).
        T_frame_object: (4, 4) the object's pose, metres.
        mesh_path: a mesh file RViz can read; sent as a ``file://`` URI (RViz must run on a
            machine that has the file).
        mesh_scale: metres per mesh unit (RViz reads the file in its own units: 0.001 for mm).
        model: instead of a file: the onboarded model (metres); its triangles are sent, every
            n-th one when there are more than ``max_triangles`` (a marker with many points is
            slow to build and to send).
        color: RGBA in [0, 1]; None for a mesh file keeps its embedded materials.
    Raises:
        InvalidInputError: not exactly one of ``mesh_path`` / ``model``, a bad pose.
    """
    if (mesh_path is None) == (model is None):
        raise InvalidInputError("mesh_marker: give exactly one of mesh_path and model")
    T = as_rigid_transform("T_frame_object", T_frame_object)
    if mesh_path is not None:
        marker = _marker(header, ns, marker_id, Marker.MESH_RESOURCE, lifetime_s)
        marker.mesh_resource = Path(mesh_path).expanduser().resolve().as_uri()
        marker.mesh_use_embedded_materials = color is None
        marker.scale = Vector3(x=float(mesh_scale), y=float(mesh_scale), z=float(mesh_scale))
        # All-zero colour + embedded materials: RViz draws the file's own materials.
        marker.color = _color(color if color is not None else (0.0, 0.0, 0.0, 0.0))
    else:
        if color is None:
            raise InvalidInputError("mesh_marker: a TRIANGLE_LIST needs a color")
        marker = _marker(header, ns, marker_id, Marker.TRIANGLE_LIST, lifetime_s)
        faces = np.asarray(model.faces)
        if len(faces) > max_triangles:
            faces = faces[:: int(np.ceil(len(faces) / max_triangles))]
        corners = np.asarray(model.vertices, np.float64)[faces.reshape(-1)]
        marker.points = [Point(x=x, y=y, z=z) for x, y, z in corners.tolist()]
        marker.scale = Vector3(x=1.0, y=1.0, z=1.0)
        marker.color = _color(color)
    marker.pose = pose_to_msg(T)
    return marker


def label_marker(header: Header, position_m: Sequence[float], text: str, *, ns: str = "labels", marker_id: int = 0,
                 height_m: float = 0.03, color: Sequence[float] = (1.0, 1.0, 1.0, 1.0), lifetime_s: float = 0.0) -> Marker:
    """A camera-facing text label (TEXT_VIEW_FACING) at ``position_m`` (3,), metres; ``height_m`` is the letter height."""
    position = np.asarray(position_m, np.float64).reshape(-1)
    if position.shape != (3,) or not np.all(np.isfinite(position)):
        raise InvalidInputError(f"label_marker.position_m: expected 3 finite numbers, got {position_m!r}")
    marker = _marker(header, ns, marker_id, Marker.TEXT_VIEW_FACING, lifetime_s)
    marker.pose = PoseMsg(position=Point(x=float(position[0]), y=float(position[1]), z=float(position[2])),
                          orientation=Quaternion(w=1.0))
    marker.scale = Vector3(x=0.0, y=0.0, z=float(height_m))
    marker.color = _color(color)
    marker.text = text
    return marker


__all__ = [
    "COLOR_ENCODINGS", "DEPTH_ENCODINGS", "camera_from_info", "covariance_ellipsoid_marker", "depth_from_image",
    "estimate_to_detection3d", "estimate_to_transform", "image_to_numpy", "label_marker", "make_header", "mesh_marker",
    "msg_to_matrix", "ns_to_stamp", "numpy_to_image", "pose_to_msg", "rgb_from_image", "stamp_to_ns",
]
