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
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from pose_node.benchmark.inputs import StreamKey, camera_streams
from pose_node.core.errors import InvalidInputError
from pose_node.core.types import Camera, ObjectModel, PoseEstimate, View
from pose_node.ros import conversions as conv
from pose_node.ros.outputs import SetOutputBuilder
from pose_node.ros.sync import SyncedSet

DEPTH_ENCODING = "32FC1"  # what pose_scene bags carry by default


def camera_info_message(camera: Camera, stamp_ns: int) -> CameraInfo:
    """A plumb_bob ``CameraInfo`` of ``camera`` (K and P from ``camera.K``, zero distortion)."""
    K = np.asarray(camera.K, np.float64)
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=conv.make_header(stamp_ns, camera.frame_id), width=int(camera.width),
                      height=int(camera.height), distortion_model="plumb_bob", d=[0.0] * 5, k=K.reshape(-1).tolist(),
                      r=np.eye(3).reshape(-1).tolist(), p=P.reshape(-1).tolist())


class RosMessageInput:
    """Frames as ``sensor_msgs`` messages, decoded as the node's callbacks decode them.

    ``decode`` mirrors ``PoseNode._on_color`` / ``_on_depth`` / ``_on_info`` (conversion, the
    non-finite depth check, the camera_info check); ``views`` mirrors ``PoseNode._views`` with the
    workcell's static extrinsics instead of a TF lookup.

    Args:
        frames: ``[frame][camera]`` views; their arrays are encoded once and released.
    """

    def __init__(self, frames: Sequence[Sequence[View]]) -> None:
        with_depth = frames[0][0].depth is not None
        self.streams = camera_streams([v.name for v in frames[0]], with_depth)
        self._T_world_camera = {v.name: np.asarray(v.camera.T_world_camera) for v in frames[0]}
        self._messages: list[list[tuple[StreamKey, Any]]] = []
        for views in frames:
            messages: list[tuple[StreamKey, Any]] = []
            for v in views:
                frame_id = v.camera.frame_id
                messages.append(((v.name, "color"), conv.numpy_to_image(v.rgb, "rgb8", frame_id=frame_id)))
                messages.append(((v.name, "info"), camera_info_message(v.camera, 0)))
                if v.depth is not None:
                    messages.append(((v.name, "depth"), conv.numpy_to_image(v.depth, DEPTH_ENCODING, frame_id=frame_id)))
            self._messages.append(messages)

    def messages(self, frame: int, stamp_ns: int) -> list[tuple[StreamKey, int, Any]]:
        out = []
        for key, msg in self._messages[frame]:
            msg.header.stamp = conv.ns_to_stamp(stamp_ns)
            out.append((key, stamp_ns, msg))
        return out

    def decode(self, key: StreamKey, message: Any) -> Any:
        stream = key[1]
        if stream == "color":
            return conv.rgb_from_image(message)
        if stream == "depth":
            depth = conv.depth_from_image(message, DEPTH_ENCODING)
            finite = np.isfinite(depth)
            if not np.any(finite & (depth > 0)):
                raise InvalidInputError(f"{key}: no finite depth > 0 in a benchmark frame")
            return depth if finite.all() else np.where(finite, depth, np.float32(0.0))
        conv.camera_from_info(message, np.eye(4))  # the node validates every camera_info on arrival
        return message

    def views(self, synced: SyncedSet) -> list[View]:
        views = []
        for name, streams in synced.messages.items():
            rgb = streams["color"].payload
            height, width = rgb.shape[:2]
            camera = conv.camera_from_info(streams["info"].payload, self._T_world_camera[name], image_size=(width, height))
            depth = streams["depth"].payload if "depth" in streams else None
            views.append(View(camera=camera, rgb=rgb, depth=depth, stamp_ns=streams["color"].stamp_ns, name=name))
        return views

    def size_mb(self) -> float:
        total = sum(len(msg.data) for messages in self._messages for _, msg in messages if isinstance(msg, Image))
        return total / 2**20


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


__all__ = ["OutputPublisher", "RosMessageInput", "camera_info_message"]
