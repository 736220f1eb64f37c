"""TF in and out for a node: ``tf2_ros`` when it is importable, the project's own pieces otherwise.

- :class:`TfListener`: ``lookup(target, source, stamp_ns) -> T_target_source`` (4, 4). With
  ``tf2_ros``: its Buffer + TransformListener. Without (no wheel here): a
  :class:`~pose_node.ros.tf_buffer.TransformBuffer` fed by subscriptions to ``/tf`` and
  ``/tf_static`` (reliable, transient local: late joiners still get the static transforms).
- :class:`TfBroadcaster`: ``send(transforms)``. ``tf2_ros.TransformBroadcaster`` or a plain
  ``tf2_msgs/TFMessage`` publisher on ``/tf``.

Both take the node and create their entities on it (as tf2_ros does), and ``close()`` destroys them.
Lookup failures of either kind come out as :class:`~pose_node.ros.tf_buffer.TransformError`.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from tf2_msgs.msg import TFMessage

from pose_node.core.errors import PoseNodeError
from pose_node.ros.tf_buffer import TransformBuffer, TransformError, transform_from_message

logger = logging.getLogger(__name__)

TF_QOS_DEPTH = 100
TF_STATIC_QOS = QoSProfile(depth=TF_QOS_DEPTH, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                           reliability=ReliabilityPolicy.RELIABLE)


def import_tf2_ros():
    """The ``tf2_ros`` module, or None when it is not installed."""
    try:
        return importlib.import_module("tf2_ros")
    except ImportError:
        return None


class TfListener:
    """Transform lookups at a stamp (see the module docstring).

    Args:
        node: the node that owns the subscriptions.
        on_error: ``on_error(message)`` for a malformed /tf message (own buffer only).
    Attributes:
        backend: ``"tf2_ros"`` or ``"pose_node"``.
    """

    def __init__(self, node, on_error=None) -> None:
        self._node = node
        self._on_error = on_error or (lambda message: logger.warning("%s", message))
        tf2_ros = import_tf2_ros()
        self._subscriptions = []
        if tf2_ros is not None:
            self.backend = "tf2_ros"
            self._tf2_ros = tf2_ros
            self.buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self.buffer, node)
        else:
            self.backend = "pose_node"
            self.buffer = TransformBuffer()
            self._subscriptions = [
                node.create_subscription(TFMessage, "/tf", lambda m: self._add(m, False), TF_QOS_DEPTH),
                node.create_subscription(TFMessage, "/tf_static", lambda m: self._add(m, True), TF_STATIC_QOS),
            ]

    def _add(self, msg: TFMessage, static: bool) -> None:
        try:
            self.buffer.set_tf_message(msg, static=static)
        except PoseNodeError as exc:
            self._on_error(f"/tf{'_static' if static else ''}: {exc}")

    def frames(self) -> frozenset[str]:
        """Known frames (own buffer only; empty with tf2_ros)."""
        return self.buffer.frames if self.backend == "pose_node" else frozenset()

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """(4, 4) float64 ``T_target_source`` at ``stamp_ns``.

        Raises:
            TransformError: unknown frame, no path, or extrapolation.
        """
        if self.backend == "pose_node":
            return self.buffer.lookup_transform(target, source, stamp_ns)
        try:
            stamped = self.buffer.lookup_transform(target, source, Time(nanoseconds=int(stamp_ns)))
        except self._tf2_ros.TransformException as exc:
            raise TransformError(f"{target} <- {source}: {exc}") from exc
        return transform_from_message(stamped.transform)

    def clear_dynamic(self) -> None:
        """Forget the dynamic transforms, keep the static ones (time went back: the buffered
        samples belong to a timeline that no longer exists)."""
        if self.backend == "pose_node":
            self.buffer.clear(keep_static=True)
        else:
            self.buffer.clear()  # tf2 keeps /tf_static through clear()

    def close(self) -> None:
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        if self.backend == "tf2_ros":
            self._listener.unregister()
        else:
            self.buffer.clear()


class TfBroadcaster:
    """Publishes ``geometry_msgs/TransformStamped`` s on ``/tf`` (see the module docstring)."""

    def __init__(self, node) -> None:
        self._node = node
        tf2_ros = import_tf2_ros()
        self._broadcaster = tf2_ros.TransformBroadcaster(node) if tf2_ros is not None else None
        self._publisher = None if tf2_ros is not None else node.create_publisher(TFMessage, "/tf", TF_QOS_DEPTH)

    def send(self, transforms: Sequence) -> None:
        if not transforms:
            return
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(list(transforms))
        else:
            self._publisher.publish(TFMessage(transforms=list(transforms)))

    def close(self) -> None:
        if self._publisher is not None:
            self._node.destroy_publisher(self._publisher)
            self._publisher = None
