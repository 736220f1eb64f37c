"""The ROS side of the in-process benchmark: message decoding (``decode``) and output building (``publishing``).

Needs the ROS message packages (not a running graph): messages are built and decoded with the
node's own conversions, outputs with :func:`pose_node.ros.outputs.build_set_outputs` and then
serialized to CDR with ``rclpy.serialization`` as ``Publisher.publish`` does. DDS delivery is not
part of this figure; the replay throughput benchmark (``pose_bench --replay``) measures it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from geometry_msgs.msg import Transform, TransformStamped, Vector3
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from pose_node.benchmark.inputs import StreamKey, camera_streams
from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Camera, ObjectModel, PoseEstimate, View
from pose_node.ros import conversions as conv
from pose_node.ros.outputs import SetOutputBuilder
from pose_node.ros.sync import SyncedSet
from pose_node.ros.tf_buffer import TransformBuffer

DEPTH_ENCODING = "32FC1"  # what pose_scene bags carry by default


def camera_info_message(camera: Camera, stamp_ns: int) -> CameraInfo:
    """A plumb_bob ``CameraInfo`` of ``camera`` (K and P from ``camera.K``, zero distortion)."""
    K = np.asarray(camera.K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=conv.make_header(stamp_ns, camera.frame_id), width=int(camera.width),
                      height=int(camera.height), distortion_model="plumb_bob", d=[0.0] * 5, k=K.reshape(-1).tolist(),
                      r=np.eye(3).reshape(-1).tolist(), p=P.reshape(-1).tolist())


def view_messages(view: View, depth_encoding: str = DEPTH_ENCODING) -> list[tuple[StreamKey, Any]]:
    """A view's messages as its camera driver would send them: colour (rgb8), camera_info and, when
    the view has depth, depth (``depth_encoding``: 32FC1 metres or 16UC1 millimetres), unstamped."""
    frame_id = view.camera.frame_id
    messages: list[tuple[StreamKey, Any]] = [((view.name, "color"), conv.numpy_to_image(view.rgb, "rgb8", frame_id=frame_id)),
                                             ((view.name, "info"), camera_info_message(view.camera, 0))]
    if view.depth is not None:
        messages.append(((view.name, "depth"), conv.numpy_to_image(view.depth, depth_encoding, frame_id=frame_id)))
    return messages


def _stamped(messages: Sequence[tuple[StreamKey, Any]], stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
    out = []
    for key, msg in messages:
        msg.header.stamp = conv.ns_to_stamp(stamp_ns)
        out.append((key, stamp_ns, msg))
    return out


def _check_depth_encoding(encoding: str) -> str:
    if encoding not in conv.DEPTH_ENCODINGS:
        raise InvalidInputError(f"depth_encoding: expected one of {', '.join(conv.DEPTH_ENCODINGS)}, got {encoding!r}")
    return encoding


def _image_mb(messages: Sequence[tuple[StreamKey, Any]]) -> float:
    return sum(len(msg.data) for _, msg in messages if isinstance(msg, Image)) / 2**20


class RosMessageInput:
    """Frames as ``sensor_msgs`` messages, decoded as the node's callbacks decode them.

    ``decode`` mirrors ``PoseNode._on_color`` / ``_on_depth`` / ``_on_info`` (conversion, the
    non-finite depth check, the camera_info check); ``views`` mirrors ``PoseNode._views`` with the
    workcell's static extrinsics instead of a TF lookup.

    Args:
        frames: ``[frame][camera]`` views; their arrays are encoded once and released.
        depth_encoding: ``32FC1`` (metres) or ``16UC1`` (millimetres), as a camera's depth topic.
    """

    def __init__(self, frames: Sequence[Sequence[View]], depth_encoding: str = DEPTH_ENCODING) -> None:
        with_depth = frames[0][0].depth is not None
        self.depth_encoding = _check_depth_encoding(depth_encoding)
        self.streams = camera_streams([v.name for v in frames[0]], with_depth)
        self._T_world_camera = {v.name: np.asarray(v.camera.T_world_camera) for v in frames[0]}
        self._messages = [[m for v in views for m in view_messages(v, depth_encoding)] for views in frames]

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        return _stamped(self._messages[frame], stamp_ns)

    def decode(self, key: StreamKey, message: Any) -> Any:
        stream = key[1]
        if stream == "color":
            return conv.rgb_from_image(message)
        if stream == "depth":
            depth = conv.depth_from_image(message, self.depth_encoding)
            finite = np.isfinite(depth)
            if not np.any(finite & (depth > 0)):
                raise InvalidInputError(f"{key}: no finite depth > 0 in a benchmark frame")
            return depth if finite.all() else np.where(finite, depth, np.float32(0.0))
        conv.camera_from_info(message, np.eye(4))  # the node validates every camera_info on arrival
        return message

    def _T_world(self, name: str, info: CameraInfo, stamp_ns: int) -> np.ndarray:
        return self._T_world_camera[name]

    def views(self, synced: SyncedSet) -> list[View]:
        views = []
        for name, streams in synced.messages.items():
            rgb = streams["color"].payload
            height, width = rgb.shape[:2]
            info = streams["info"].payload
            T_world_camera = self._T_world(name, info, streams["color"].stamp_ns)
            camera = conv.camera_from_info(info, T_world_camera, image_size=(width, height))
            depth = streams["depth"].payload if "depth" in streams else None
            views.append(View(camera=camera, rgb=rgb, depth=depth, stamp_ns=streams["color"].stamp_ns, name=name))
        return views

    def size_mb(self) -> float:
        return sum(_image_mb(messages) for messages in self._messages)


#: The key of a frame's ``/tf`` message: decoded into the TF buffer (timed as ``decode``), not synchronized.
TF_KEY: StreamKey = ("/tf", "tf")


def camera_transforms(views: Sequence[View], stamp_ns: int, world_frame: str) -> TFMessage:
    """``/tf`` with ``T_world_camera`` of every view (``world_frame`` -> the camera's optical frame)."""
    transforms = []
    for view in views:
        pose = conv.pose_to_msg(np.asarray(view.camera.T_world_camera, np.float64))
        transforms.append(TransformStamped(
            header=conv.make_header(stamp_ns, world_frame), child_frame_id=view.camera.frame_id,
            transform=Transform(translation=Vector3(x=pose.position.x, y=pose.position.y, z=pose.position.z),
                                rotation=pose.orientation)))
    return TFMessage(transforms=transforms)


class DatasetMessageInput(RosMessageInput):
    """Dataset frames (:class:`~pose_node.benchmark.dataset.DatasetFrames`) of one kind as the node
    receives them: per camera colour, camera_info and (RGB-D) depth, and one ``/tf`` message with
    every camera's world pose at the frame's stamp (cameras move from scene to scene).

    A frame's images are read and encoded when its messages are asked for (not timed); ``decode``
    also fills a :class:`~pose_node.ros.tf_buffer.TransformBuffer` from ``/tf`` as the node's TF
    listener does, and ``views`` looks each camera up at the image stamp as ``PoseNode._views``
    does for cameras without static extrinsics.

    Args:
        frames: the dataset frames.
        kind: (cameras, with depth) of the frames this input serves.
        depth_encoding: ``32FC1`` or ``16UC1``.
        world_frame: the TF parent of the cameras.
    """

    def __init__(self, frames, kind: tuple[int, bool], depth_encoding: str = DEPTH_ENCODING,
                 world_frame: str = "world") -> None:
        from pose_node.benchmark.dataset import camera_name

        self._frames = frames
        self.depth_encoding = _check_depth_encoding(depth_encoding)
        self.streams = camera_streams([camera_name(k) for k in range(kind[0])], kind[1])
        self.world_frame = world_frame
        self.tf = TransformBuffer()
        self._size_mb = 0.0

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        views = self._frames.views(frame)
        encoded = [m for v in views for m in view_messages(v, self.depth_encoding)]
        self._size_mb = max(self._size_mb, _image_mb(encoded))
        # A TF publisher runs ahead of the cameras: the transforms are in the buffer before the set completes.
        return [(TF_KEY, stamp_ns, camera_transforms(views, stamp_ns, self.world_frame)), *_stamped(encoded, stamp_ns)]

    def decode(self, key: StreamKey, message: Any) -> Any:
        if key == TF_KEY:
            self.tf.set_tf_message(message)
            return None
        return super().decode(key, message)

    def _T_world(self, name: str, info: CameraInfo, stamp_ns: int) -> np.ndarray:
        return self.tf.lookup_transform(self.world_frame, info.header.frame_id, stamp_ns)

    def size_mb(self) -> float:
        """The largest frame's encoded images, MiB (one frame is held at a time)."""
        return self._size_mb


class OutputPublisher:
    """Builds the node's output messages for a set and serializes them (the ``publishing`` stage).

    Args:
        models: the pipeline's objects (names from the models, as procedural node configs use).
        world_frame: the estimates' frame.
    """

    def __init__(self, models: Sequence[ObjectModel], world_frame: str = "world") -> None:
        self._builder = SetOutputBuilder(world_frame, {m.object_id: m.name for m in models},
                                         {m.object_id: m for m in models})
        self.last_bytes = 0  # serialized size of the last set's outputs

    def warm_up(self) -> None:
        """Build and serialize one output per object once: the first use of a message type loads its
        type support (about 0.1 s), a one-time cost of the node's first output, not per-set latency."""
        estimates = [PoseEstimate(object_id=i, instance_id=0, T_world_object=np.eye(4), covariance=np.eye(6) * 1e-6,
                                  score=1.0) for i in self._builder.models]
        self(0, estimates)

    def __call__(self, stamp_ns: int, estimates: Sequence[PoseEstimate]) -> None:
        outputs = self._builder.build(stamp_ns, estimates)
        serialized = [serialize_message(outputs.detections), serialize_message(outputs.markers)]
        if outputs.transforms:  # the node's TfBroadcaster sends nothing for an empty list
            serialized.append(serialize_message(TFMessage(transforms=outputs.transforms)))
        self.last_bytes = sum(len(b) for b in serialized)


__all__ = ["DatasetMessageInput", "OutputPublisher", "RosMessageInput", "TF_KEY", "camera_info_message", "camera_transforms",
           "view_messages"]
