"""``/diagnostics`` for a node: :class:`~pose_node.ros.health.HealthStatus` es as a
``diagnostic_msgs/DiagnosticArray``, and a log line when a status turns ERROR (once; again at
most every ``ERROR_LOG_THROTTLE_S`` if it flaps) or recovers.

Like tf2_ros' broadcaster, :class:`DiagnosticsPublisher` takes the node and creates its publisher
on it; ``close()`` destroys it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from pose_node.ros.health import HealthStatus, Level

DIAGNOSTICS_TOPIC = "/diagnostics"
# A status that keeps flapping into ERROR is logged at most this often.
ERROR_LOG_THROTTLE_S = 30.0


class DiagnosticsPublisher:
    """Publishes statuses named ``<node name>: <status name>`` (hardware id: the node's full name).

    Args:
        node: the rclpy node (publisher, clock, logger, names).
    """

    def __init__(self, node) -> None:
        self._node = node
        self._publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._logged: dict[str, tuple[Level, float]] = {}

    def publish(self, statuses: Sequence[HealthStatus], extra_values: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Publish one array with every status; ``extra_values``: status name -> more key/values."""
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        extra_values = extra_values or {}
        for status in statuses:
            values = list(status.values) + list(extra_values.get(status.name, {}).items())
            msg.status.append(DiagnosticStatus(
                level=bytes([int(status.level)]), name=f"{self._node.get_name()}: {status.name}",
                hardware_id=self._node.get_fully_qualified_name(), message=status.message,
                values=[KeyValue(key=k, value=v) for k, v in values]))
            self._log_level_change(status)
        self._publisher.publish(msg)

    def _log_level_change(self, status: HealthStatus) -> None:
        now = time.monotonic()
        previous, logged_at = self._logged.get(status.name, (Level.OK, -float("inf")))
        if status.level == Level.ERROR and previous != Level.ERROR:
            if now - logged_at >= ERROR_LOG_THROTTLE_S:
                self._node.get_logger().error(f"{status.name}: {status.message}")
                logged_at = now
        elif status.level != Level.ERROR and previous == Level.ERROR:
            self._node.get_logger().info(f"{status.name}: recovered ({status.message})")
        self._logged[status.name] = (status.level, logged_at)

    def close(self) -> None:
        if self._publisher is not None:
            self._node.destroy_publisher(self._publisher)
            self._publisher = None


__all__ = ["DIAGNOSTICS_TOPIC", "DiagnosticsPublisher", "ERROR_LOG_THROTTLE_S"]
