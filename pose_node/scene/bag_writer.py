"""Write a workcell recording as a rosbag2 (MCAP) with the topics a real RGB-D workcell publishes.

Per camera ``<cam>`` (RealSense-style names, depth registered to the colour camera):

- ``/<cam>/color/image_raw``      sensor_msgs/Image, rgb8
- ``/<cam>/color/camera_info``    sensor_msgs/CameraInfo, plumb_bob with zero distortion
- ``/<cam>/depth/image_rect_raw`` sensor_msgs/Image, 32FC1 (metres) or 16UC1 (millimetres); 0 = no return
- ``/<cam>/depth/camera_info``    the colour camera's info (same K, same optical frame)

plus ``/tf_static`` (``world`` -> each optical frame, once, transient-local) and ``/clock``.
Every message's bag log time equals its header stamp, so a replay with ``--clock`` / sim time
reproduces the recorded timing. The pure-Python ``rosbags`` library writes the bag; its Kilted
typestore matches the ROS 2 wheels' type hashes.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose
from pose_node.core.types import Camera

DEPTH_ENCODINGS: tuple[str, ...] = ("32FC1", "16UC1")

# The newest ROS 2 distribution this rosbags knows (the project's wheels are Kilted).
_STORE = next(getattr(Stores, name) for name in ("ROS2_KILTED", "ROS2_JAZZY", "LATEST") if hasattr(Stores, name))

_ZERO_TIME = QosTime(sec=0, nsec=0)
_TF_STATIC_QOS = Qos(
    history=QosHistory.KEEP_LAST, depth=1, reliability=QosReliability.RELIABLE, durability=QosDurability.TRANSIENT_LOCAL,
    deadline=_ZERO_TIME, lifespan=_ZERO_TIME, liveliness=QosLiveliness.AUTOMATIC,
    liveliness_lease_duration=_ZERO_TIME, avoid_ros_namespace_conventions=False,
)


def typestore():
    """The rosbags typestore used for writing (and reading back in tests)."""
    return get_typestore(_STORE)


def camera_topics(camera_name: str) -> dict[str, str]:
    """Topic names of one camera, keyed ``color``, ``color_info``, ``depth``, ``depth_info``."""
    return {
        "color": f"/{camera_name}/color/image_raw",
        "color_info": f"/{camera_name}/color/camera_info",
        "depth": f"/{camera_name}/depth/image_rect_raw",
        "depth_info": f"/{camera_name}/depth/camera_info",
    }


def depth_to_image_data(depth_m: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """Encode depth for a sensor_msgs/Image.

    Args:
        depth_m: (H, W) float32 metres, 0 = invalid.
        encoding: ``32FC1`` (metres) or ``16UC1`` (millimetres, rounded; beyond 65.535 m -> 0).
    Returns:
        (bytes as a uint8 array, row step in bytes).
    """
    if encoding == "32FC1":
        array = np.ascontiguousarray(depth_m, dtype="<f4")
    elif encoding == "16UC1":
        mm = np.rint(np.asarray(depth_m, np.float64) * 1000.0)
        array = np.where((mm > 0) & (mm <= 65535), mm, 0).astype("<u2")
    else:
        raise InvalidInputError(f"depth encoding: expected one of {DEPTH_ENCODINGS}, got {encoding!r}")
    return array.reshape(-1).view(np.uint8), array.shape[1] * array.itemsize


class WorkcellBagWriter:
    """Writes synchronized multi-camera RGB-D frames of a static workcell into a rosbag2 (MCAP).

    Use as a context manager. ``T_world_camera`` of every camera is published once on
    ``/tf_static`` with the first frame's stamp.

    Args:
        path: bag directory to create (must not exist).
        cameras: calibrated cameras (``frame_id`` = optical frame name).
        camera_names: topic namespace of each camera.
        depth_encoding: one of :data:`DEPTH_ENCODINGS`.
        world_frame: parent frame of the static transforms.
    """

    def __init__(
        self, path: str | Path, cameras: Sequence[Camera], camera_names: Sequence[str], *,
        depth_encoding: str = "32FC1", world_frame: str = "world",
    ) -> None:
        if depth_encoding not in DEPTH_ENCODINGS:
            raise InvalidInputError(f"depth_encoding: expected one of {DEPTH_ENCODINGS}, got {depth_encoding!r}")
        if len(cameras) != len(camera_names):
            raise InvalidInputError(f"WorkcellBagWriter: {len(cameras)} cameras but {len(camera_names)} names")
        self._store = typestore()
        self._cameras = list(cameras)
        self._names = list(camera_names)
        self._depth_encoding = depth_encoding
        self._world_frame = world_frame
        self._last_clock_ns: int | None = None
        self._writer = Writer(Path(path), version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        add = self._writer.add_connection
        self._conn_tf = add("/tf_static", "tf2_msgs/msg/TFMessage", typestore=self._store, offered_qos_profiles=[_TF_STATIC_QOS])
        self._conn_clock = add("/clock", "rosgraph_msgs/msg/Clock", typestore=self._store)
        self._conns = []
        for name in self._names:
            topics = camera_topics(name)
            self._conns.append({
                "color": add(topics["color"], "sensor_msgs/msg/Image", typestore=self._store),
                "color_info": add(topics["color_info"], "sensor_msgs/msg/CameraInfo", typestore=self._store),
                "depth": add(topics["depth"], "sensor_msgs/msg/Image", typestore=self._store),
                "depth_info": add(topics["depth_info"], "sensor_msgs/msg/CameraInfo", typestore=self._store),
            })
        self._tf_written = False

    def __enter__(self) -> "WorkcellBagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    # Message builders -------------------------------------------------------------------------
    def _header(self, stamp_ns: int, frame_id: str):
        t = self._store.types
        stamp = t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
        return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def _camera_info(self, camera: Camera, stamp_ns: int):
        t = self._store.types
        P = np.zeros((3, 4))
        P[:, :3] = camera.K
        return t["sensor_msgs/msg/CameraInfo"](
            header=self._header(stamp_ns, camera.frame_id), height=camera.height, width=camera.width,
            distortion_model="plumb_bob", d=np.zeros(5), k=camera.K.reshape(-1).astype(np.float64),
            r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
            roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def _image(self, data: np.ndarray, step: int, camera: Camera, encoding: str, stamp_ns: int):
        return self._store.types["sensor_msgs/msg/Image"](
            header=self._header(stamp_ns, camera.frame_id), height=camera.height, width=camera.width,
            encoding=encoding, is_bigendian=0, step=step, data=data,
        )

    def _write(self, connection, stamp_ns: int, message) -> None:
        self._writer.write(connection, int(stamp_ns), self._store.serialize_cdr(message, connection.msgtype))

    # Public writers ---------------------------------------------------------------------------
    def write_tf_static(self, stamp_ns: int) -> None:
        """One TFMessage with ``world -> <cam>_color_optical_frame`` for every camera."""
        t = self._store.types
        transforms = []
        for camera in self._cameras:
            pose = Pose.from_matrix(camera.T_world_camera)
            q = pose.quaternion_xyzw().numpy()
            transforms.append(t["geometry_msgs/msg/TransformStamped"](
                header=self._header(stamp_ns, self._world_frame), child_frame_id=camera.frame_id,
                transform=t["geometry_msgs/msg/Transform"](
                    translation=t["geometry_msgs/msg/Vector3"](*map(float, camera.T_world_camera[:3, 3])),
                    rotation=t["geometry_msgs/msg/Quaternion"](*map(float, q)),
                ),
            ))
        self._write(self._conn_tf, stamp_ns, t["tf2_msgs/msg/TFMessage"](transforms=transforms))
        self._tf_written = True

    def write_clock(self, stamp_ns: int) -> None:
        """A /clock message (skipped if not after the previous one: /clock never goes back)."""
        if self._last_clock_ns is not None and stamp_ns <= self._last_clock_ns:
            return
        t = self._store.types
        clock = t["rosgraph_msgs/msg/Clock"](clock=self._header(stamp_ns, "").stamp)
        self._write(self._conn_clock, stamp_ns, clock)
        self._last_clock_ns = int(stamp_ns)

    def write_frame(self, stamps_ns: Sequence[int], rgbs: Sequence[np.ndarray], depths_m: Sequence[np.ndarray | None]) -> None:
        """One synchronized frame: per camera an RGB image, camera infos and (optionally) depth.

        Args:
            stamps_ns: per camera acquisition stamp, nanoseconds.
            rgbs: per camera (H, W, 3) uint8 RGB.
            depths_m: per camera (H, W) float32 metres (0 = invalid) or None (no depth message).
        """
        if not (len(stamps_ns) == len(rgbs) == len(depths_m) == len(self._cameras)):
            raise InvalidInputError(
                f"write_frame: expected {len(self._cameras)} stamps/images/depths, got {len(stamps_ns)}/{len(rgbs)}/{len(depths_m)}"
            )
        if not self._tf_written:
            self.write_tf_static(min(stamps_ns))
        self.write_clock(min(stamps_ns))
        for camera, conns, stamp, rgb, depth in zip(self._cameras, self._conns, stamps_ns, rgbs, depths_m):
            if rgb.shape != (camera.height, camera.width, 3) or rgb.dtype != np.uint8:
                raise InvalidInputError(
                    f"write_frame[{camera.frame_id}]: rgb must be ({camera.height}, {camera.width}, 3) uint8, got {rgb.shape} {rgb.dtype}"
                )
            info = self._camera_info(camera, stamp)
            data = np.ascontiguousarray(rgb).reshape(-1)
            self._write(conns["color"], stamp, self._image(data, camera.width * 3, camera, "rgb8", stamp))
            self._write(conns["color_info"], stamp, info)
            if depth is not None:
                if depth.shape != (camera.height, camera.width):
                    raise InvalidInputError(
                        f"write_frame[{camera.frame_id}]: depth must be ({camera.height}, {camera.width}), got {depth.shape}"
                    )
                data, step = depth_to_image_data(depth, self._depth_encoding)
                self._write(conns["depth"], stamp, self._image(data, step, camera, self._depth_encoding, stamp))
                self._write(conns["depth_info"], stamp, info)
