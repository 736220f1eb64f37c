"""The ``pose_node`` managed lifecycle node: synchronized cameras in, object poses out.

- configure: read and validate ``config_file`` (errors name the key), load the object models,
  build the :class:`~pose_node.pipeline.PosePipeline` (onboarding from the cache, backend,
  warm-up: the first frame is as fast as the rest), the TF buffer (fed from ``/tf`` and
  ``/tf_static``) and the multi-camera synchronizer.
- activate: subscribe to every camera's image, camera_info (and depth); publish ``/tf``
  (``world_frame -> <object name>_<instance>``), ``~/detections`` (Detection3DArray, empty when
  nothing is found), ``~/markers`` and ``/diagnostics``; ``~/reset`` (std_msgs/Empty, since
  std_srvs is not available here) drops the tracked state.
- parameters ``thresholds.{detection_score,pose_score,max_position_std_m,max_rotation_std_deg}``
  (defaults: the file's ``pipeline.thresholds``) can be changed at runtime; a change applies to
  every object (replacing the file's per-object overrides).
- deactivate / cleanup release the subscriptions, publishers and then the pipeline.

Messages are checked in the subscription callbacks (encoding, sizes, non-finite depth,
calibration); a bad one is dropped with a throttled warning and counted in the diagnostics.
Synchronized sets are processed by one worker thread with a one-slot, latest-wins mailbox, so
callbacks never block and sets that arrive while the worker is busy replace the waiting one
(counted as dropped). Every output carries the images' header stamp.

TF goes through :mod:`pose_node.ros.tf_io` (``tf2_ros`` when importable, else the project's own
buffer fed from ``/tf`` and ``/tf_static``). Synchronization always uses the project's
:class:`~pose_node.ros.sync.ApproximateTimeSynchronizer`: ``message_filters`` (no wheel here
either) has no per-camera grouping, ``min_cameras`` or timeout, which the workcell needs.
"""
from __future__ import annotations

import gc
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from pose_node.core.errors import PoseNodeError
from pose_node.core.types import View
from pose_node.ros import conversions as conv
from pose_node.ros.node_config import Thresholds, load_node_config, load_object_models
from pose_node.ros.outputs import SetOutputBuilder
from pose_node.ros.sync import ApproximateTimeSynchronizer, SyncedSet
from pose_node.ros.tf_io import TfBroadcaster, TfListener

NODE_NAME = "pose_node"
WARN_THROTTLE_S = 2.0
DIAGNOSTICS_PERIOD_S = 1.0
RATE_WINDOW_S = 5.0
RUNTIME_THRESHOLDS = ("detection_score", "pose_score", "max_position_std_m", "max_rotation_std_deg")


@dataclass(frozen=True)
class ColorPayload:
    rgb: np.ndarray
    frame_id: str


class PoseNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.declare_parameter("config_file", "", ParameterDescriptor(description="pose_node YAML configuration"))
        self.declare_parameter("autostart", False, ParameterDescriptor(
            description="configure and activate at startup (instead of a lifecycle manager)"))
        self.config = self.pipeline = self.sync = None
        self.tf: TfListener | None = None
        self._subs: list = []
        self._pubs: dict = {}
        self._timers: list = []
        self._slot: SyncedSet | None = None
        self._slot_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = False
        self.counters: Counter = Counter()
        self._arrivals: dict[str, deque] = {}
        self._latency_ms: dict[str, float] = {}
        self._param_callback = None
        self._last_warning: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        from pose_node.pipeline import PosePipeline

        path = self.get_parameter("config_file").value
        try:
            if not path:
                raise PoseNodeError("config_file: parameter not set (path of the pose_node YAML)")
            self.config = load_node_config(path)
            models = self._load_models()
            self.models = {m.object_id: m for m in models}
            self.pipeline = PosePipeline.from_node_config(self.config, models)
        except PoseNodeError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.sync = ApproximateTimeSynchronizer(self.config.sync_streams(), self.config.sync)
        self.names = {o.object_id: o.name for o in self.config.objects}
        self.outputs = SetOutputBuilder(self.config.world_frame, self.names, self.models)
        self.tf = TfListener(self, on_error=lambda message: self._bad_input("tf", message))
        defaults = self.config.pipeline.thresholds
        for name in RUNTIME_THRESHOLDS:
            full = f"thresholds.{name}"
            if not self.has_parameter(full):
                self.declare_parameter(full, float(getattr(defaults, name)),
                                       ParameterDescriptor(description=f"runtime-changeable Thresholds.{name}"))
        if any(self.get_parameter(f"thresholds.{n}").value != getattr(defaults, n) for n in RUNTIME_THRESHOLDS):
            self._apply_thresholds({})  # overridden on the command line; otherwise keep per-object overrides
        if self._param_callback is None:
            self._param_callback = self.add_on_set_parameters_callback(self._on_set_parameters)
        self.get_logger().info(f"configured: {len(self.config.cameras)} cameras, {len(models)} objects, "
                               f"pipeline ready in {self.pipeline.build_s:.1f} s")
        # The models, templates and networks live as long as the node: moving them out of the
        # collector's reach saves the ~100 ms full collections that otherwise hit one set in several.
        gc.freeze()
        return TransitionCallbackReturn.SUCCESS

    def _load_models(self) -> list:
        """The configured objects' models; one that fails to load is skipped with an error (and
        counted in the diagnostics) so the other objects are still served.

        Raises:
            PoseNodeError: no object could be loaded.
        """
        from pose_node.core.errors import MeshLoadError

        procedural = [o for o in self.config.objects if o.procedural is not None]  # generated in one go, never fail
        loaded = {m.object_id: m for m in load_object_models(procedural)}
        for obj in self.config.objects:
            if obj.procedural is not None:
                continue
            try:
                loaded[obj.object_id] = load_object_models([obj])[0]
            except MeshLoadError as exc:
                self.counters["objects_failed_to_load"] += 1
                self.get_logger().error(f"{obj.key_path} ({obj.name}): skipped, the mesh failed to load: {exc}")
        if not loaded:
            raise PoseNodeError("objects: no object could be loaded")
        self.config = replace(self.config, objects=tuple(o for o in self.config.objects if o.object_id in loaded))
        return [loaded[o.object_id] for o in self.config.objects]

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for camera in self.config.cameras:
            self._arrivals[camera.name] = deque()
            self._subs.append(self.create_subscription(
                Image, camera.color_topic, lambda m, c=camera: self._guard(self._on_color, c, m), qos))
            self._subs.append(self.create_subscription(
                CameraInfo, camera.camera_info_topic, lambda m, c=camera: self._guard(self._on_info, c, m), qos))
            if camera.depth_topic:
                self._subs.append(self.create_subscription(
                    Image, camera.depth_topic, lambda m, c=camera: self._guard(self._on_depth, c, m), qos))
        self._subs.append(self.create_subscription(Empty, "~/reset", self._on_reset, 10))
        self._pubs = {
            "tf": TfBroadcaster(self),
            "detections": self.create_publisher(Detection3DArray, "~/detections", 10),
            "markers": self.create_publisher(MarkerArray, "~/markers", 10),
            "diagnostics": self.create_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        if self.config.sync.timeout_s is not None:
            self._timers.append(self.create_timer(self.config.sync.timeout_s / 2, lambda: self._guard(self._poll)))
        self._timers.append(self.create_timer(DIAGNOSTICS_PERIOD_S, lambda: self._guard(self._publish_diagnostics)))
        self._running = True
        self._worker = threading.Thread(target=self._work, name="pose_node_worker", daemon=True)
        self._worker.start()
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self._slot_cv:
            self._running = False
            self._slot = None
            self._slot_cv.notify_all()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        for timer in self._timers:
            self.destroy_timer(timer)
        for name, pub in self._pubs.items():
            if name == "tf":
                pub.close()
            else:
                self.destroy_publisher(pub)
        self._subs, self._timers, self._pubs = [], [], {}
        self.sync.reset()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        if self.tf is not None:
            self.tf.close()
        self.pipeline = self.sync = self.tf = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._running:
            self.on_deactivate(state)
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ parameters
    def _apply_thresholds(self, changed: dict) -> Thresholds:
        values = {n: self.get_parameter(f"thresholds.{n}").value for n in RUNTIME_THRESHOLDS}
        values.update(changed)
        thresholds = Thresholds(**{k: float(v) for k, v in values.items()})
        if self.pipeline is not None:
            self.pipeline.set_thresholds(thresholds)
        return thresholds

    def _on_set_parameters(self, params) -> SetParametersResult:
        changed = {}
        for p in params:
            if p.name.startswith("thresholds."):
                name = p.name.split(".", 1)[1]
                value = p.value
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    return SetParametersResult(successful=False, reason=f"{p.name}: expected a number, got {value!r}")
                if name in ("detection_score", "pose_score") and not 0.0 <= value <= 1.0:
                    return SetParametersResult(successful=False, reason=f"{p.name}: expected [0, 1], got {value}")
                if name.startswith("max_") and not value > 0:
                    return SetParametersResult(successful=False, reason=f"{p.name}: expected > 0, got {value}")
                changed[name] = value
            elif p.name in ("config_file",) and self.pipeline is not None:
                return SetParametersResult(successful=False, reason=f"{p.name}: only changeable when unconfigured")
        if changed:
            self._apply_thresholds(changed)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ inputs
    def _guard(self, callback, *args) -> None:
        """Run a callback; an unexpected error is logged and counted, never raised into the executor."""
        try:
            callback(*args)
        except PoseNodeError as exc:
            self._bad_input("invalid_input", str(exc))
        except Exception as exc:  # noqa: BLE001 - the executor must keep running; logged and counted
            self.counters["callback_errors"] += 1
            self.get_logger().error(f"{getattr(callback, '__name__', callback)}: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=WARN_THROTTLE_S)

    def _bad_input(self, kind: str, message: str) -> None:
        """Count a dropped input and warn, at most once per ``WARN_THROTTLE_S`` per kind."""
        self.counters[f"bad_input.{kind}"] += 1
        now = time.monotonic()
        if now - self._last_warning.get(kind, -np.inf) >= WARN_THROTTLE_S:
            self._last_warning[kind] = now
            self.get_logger().warning(f"dropped: {message}")

    def _add(self, camera, stream: str, header, payload) -> None:
        result = self.sync.add((camera.name, stream), conv.stamp_to_ns(header.stamp), payload)
        if result is not None:
            self._hand_over(result)

    def _on_color(self, camera, msg: Image) -> None:
        self._arrivals[camera.name].append(time.monotonic())
        try:
            rgb = conv.rgb_from_image(msg)
        except PoseNodeError as exc:
            return self._bad_input("color", f"{camera.name} colour image: {exc}")
        self._add(camera, "color", msg.header, ColorPayload(rgb, msg.header.frame_id))

    def _on_depth(self, camera, msg: Image) -> None:
        try:
            depth = conv.depth_from_image(msg, camera.depth_encoding)
        except PoseNodeError as exc:
            return self._bad_input("depth", f"{camera.name} depth image: {exc}")
        finite = np.isfinite(depth)
        if not np.any(finite & (depth > 0)):
            return self._bad_input("depth_nan", f"{camera.name} depth image: no finite depth > 0")
        if not finite.all():
            depth = np.where(finite, depth, np.float32(0.0))  # NaN/inf = no return, as 0 is
        self._add(camera, "depth", msg.header, depth)

    def _on_info(self, camera, msg: CameraInfo) -> None:
        try:
            conv.camera_from_info(msg, np.eye(4))
        except PoseNodeError as exc:
            return self._bad_input("camera_info", f"{camera.name} camera_info: {exc}")
        self._add(camera, "info", msg.header, msg)

    def _poll(self) -> None:
        result = self.sync.poll()
        if result is not None:
            self._hand_over(result)

    def _on_reset(self, _msg: Empty) -> None:
        if self.pipeline is not None:
            self.pipeline.reset()
            self.counters["resets"] += 1
            self.get_logger().info("tracked state dropped; re-detecting")

    def _hand_over(self, synced: SyncedSet) -> None:
        for name in synced.missing_cameras:
            self.counters[f"missing_camera.{name}"] += 1
        with self._slot_cv:
            if self._slot is not None:
                self.counters["dropped_sets"] += 1  # latest wins: the waiting set is stale
            self._slot = synced
            self._slot_cv.notify()

    # ------------------------------------------------------------------ processing (worker thread)
    def _work(self) -> None:
        while True:
            with self._slot_cv:
                while self._running and self._slot is None:
                    self._slot_cv.wait()
                if not self._running:
                    return
                synced, self._slot = self._slot, None
            self._guard(self._process, synced)

    def _views(self, synced: SyncedSet) -> list[View]:
        views = []
        for camera in self.config.cameras:
            streams = synced.messages.get(camera.name)
            if streams is None:
                continue
            color: ColorPayload = streams["color"].payload
            info: CameraInfo = streams["info"].payload
            depth = streams["depth"].payload if "depth" in streams else None
            height, width = color.rgb.shape[:2]
            try:
                if depth is not None and depth.shape != (height, width):
                    raise PoseNodeError(f"depth {depth.shape[1]}x{depth.shape[0]} != colour {width}x{height}")
                T = camera.T_world_camera
                if T is None:
                    T = self.tf.lookup(self.config.world_frame, info.header.frame_id, streams["color"].stamp_ns)
                cam = conv.camera_from_info(info, T, image_size=(width, height))
            except PoseNodeError as exc:
                self._bad_input("camera", f"{camera.name}: {exc}")
                continue
            views.append(View(camera=cam, rgb=color.rgb, depth=depth, stamp_ns=streams["color"].stamp_ns, name=camera.name))
        return views

    def _process(self, synced: SyncedSet) -> None:
        views = self._views(synced)
        if len(views) < self.config.sync.min_cameras:
            self.counters["dropped_sets"] += 1
            return
        estimates, timings = self.pipeline.estimate(views)
        self._latency_ms = dict(timings)
        self.counters["processed_sets"] += 1
        if self._running:
            self._publish(synced.stamp_ns, estimates)

    def _publish(self, stamp_ns: int, estimates) -> None:
        outputs = self.outputs.build(stamp_ns, estimates)
        self._pubs["tf"].send(outputs.transforms)
        self._pubs["detections"].publish(outputs.detections)
        self._pubs["markers"].publish(outputs.markers)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        values = []
        for name, arrivals in self._arrivals.items():
            while arrivals and arrivals[0] < now - RATE_WINDOW_S:
                arrivals.popleft()
            values.append(KeyValue(key=f"rate_hz.{name}", value=f"{len(arrivals) / RATE_WINDOW_S:.2f}"))
        stats = self.sync.stats
        counters = dict(self.counters)
        counters["sync.dropped_sets"] = stats.dropped_sets
        counters["sync.dropped_messages"] = stats.dropped_messages
        counters["sync.partial_sets"] = stats.partial_sets
        values += [KeyValue(key=k, value=str(v)) for k, v in sorted(counters.items())]
        values += [KeyValue(key=f"latency_ms.{k}", value=f"{v:.1f}") for k, v in sorted(self._latency_ms.items())]
        problems = ("bad_input", "missing_camera", "callback_errors", "objects_failed")
        bad = sum(v for k, v in counters.items() if k.startswith(problems))
        status = DiagnosticStatus(level=DiagnosticStatus.WARN if bad else DiagnosticStatus.OK, name=f"{self.get_name()}: pipeline",
                                  hardware_id=self.get_fully_qualified_name(),
                                  message=f"{bad} bad inputs or missing cameras so far" if bad else "ok", values=values)
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pubs["diagnostics"].publish(msg)


def main(argv: list[str] | None = None) -> int:
    """``pose_node`` executable: spin the node; SIGINT exits 0."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = PoseNode()
    code = 0
    try:
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: configure failed")
                return 1
            node.trigger_activate()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        with node._slot_cv:
            node._running = False
            node._slot_cv.notify_all()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
