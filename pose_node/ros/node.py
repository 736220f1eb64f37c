"""The ``pose_node`` managed lifecycle node: synchronized cameras in, object poses out.

- configure: read and validate ``config_file`` (errors name the key), load the object models,
  build the :class:`~pose_node.pipeline.PosePipeline` (onboarding from the cache, backend,
  warm-up: the first frame is as fast as the rest), the TF buffer (fed from ``/tf`` and
  ``/tf_static``) and the multi-camera synchronizer.
- activate: subscribe to every camera's image, camera_info (and depth); publish ``/tf``
  (``world_frame -> <object name>_<instance>``, instances numbered per object and kept while
  tracked), ``~/detections`` (Detection3DArray, empty when nothing is found), ``~/markers`` and
  ``/diagnostics`` (one status per camera and one for the pipeline, see
  :mod:`pose_node.ros.health`; a status that turns ERROR is logged once); with ``debug_images``,
  ``~/debug/<camera>/image`` (the camera's image with the estimates' outlines, axes, names and scores).
- reset: the ``~/reset`` service (``std_srvs/srv/Trigger``, when std_srvs is installed) and the
  ``~/reset`` topic (``std_msgs/Empty``, kept for compatibility) clear the synchronizer, the
  dynamic TF buffer and the tracked instances. The same happens by itself when time goes back
  (a looping bag, a sim-time reset): a header stamp earlier than its stream's previous one, or
  a backward jump of the node's clock, is logged once and the node carries on.
- parameters ``thresholds.{detection_score,pose_score,max_position_std_m,max_rotation_std_deg}``
  (defaults: the file's ``pipeline.thresholds``; ranges in their descriptors) can be changed at
  runtime; a change applies to every object (replacing the file's per-object overrides).
- deactivate / cleanup release the subscriptions, publishers and then the pipeline.

Messages are checked in the subscription callbacks (encoding, sizes, non-finite depth,
calibration); a bad one is dropped with a throttled warning and counted in the diagnostics.
Synchronized sets are processed by one worker thread with a one-slot, latest-wins mailbox, so
callbacks never block and sets that arrive while the worker is busy replace the waiting one
(counted as dropped). Every output carries the images' header stamp. Shutting down (SIGINT
included) waits for the set in progress, so no thread outlives the node.

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
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import Node, State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Empty
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from pose_node.core.errors import PoseNodeError
from pose_node.core.types import View
from pose_node.core.units import depth_distance_ratio, likely_units
from pose_node.onboarding.object_models import load_object_models
from pose_node.pipeline.config import THRESHOLD_RANGES, Thresholds
from pose_node.ros import conversions as conv
from pose_node.ros.diagnostics import DiagnosticsPublisher
from pose_node.ros.health import HealthMonitor
from pose_node.ros.node_config import load_node_config
from pose_node.ros.outputs import SetOutputBuilder
from pose_node.ros.sync import ApproximateTimeSynchronizer, BackwardStampDetector, SyncedSet
from pose_node.ros.tf_buffer import TransformError
from pose_node.ros.tf_io import TfBroadcaster, TfListener

try:  # std_srvs has a PyPI wheel (ros-std-srvs) that older setups did not install
    from std_srvs.srv import Trigger
except ImportError:
    Trigger = None

NODE_NAME = "pose_node"
WARN_THROTTLE_S = 2.0
TF_RETRY_S = 0.01
# Shutdown waits this long for the set in progress (one set takes < 2 s even on a busy CPU).
WORKER_JOIN_TIMEOUT_S = 30.0
# Runtime thresholds: their declared ranges are the config type's (THRESHOLD_RANGES); a range
# that excludes its low end (max_* > 0) is checked on set, as a descriptor cannot say it.
RUNTIME_THRESHOLDS = tuple(THRESHOLD_RANGES)
THRESHOLD_DESCRIPTIONS = {
    "detection_score": "template-matching score in [0, 1] below which a detection is dropped",
    "pose_score": "pose score in [0, 1] below which a pose is not published",
    "max_position_std_m": "poses whose largest position std (metres) exceeds this are not published (> 0, inf: no limit)",
    "max_rotation_std_deg": "poses whose largest rotation std (degrees) exceeds this are not published (> 0, inf: no limit)",
}


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
        self._services: list = []
        self._debug_pubs: dict = {}
        self._slot: SyncedSet | None = None
        self._slot_cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = False
        self.counters: Counter = Counter()  # lifetime totals (pose_bench reads some in /diagnostics)
        self.health: HealthMonitor | None = None
        self._stamps = BackwardStampDetector()
        self._jump_callback = None
        self._param_callback = None
        self._last_warning: dict[str, float] = {}
        self._units_checked: set[int] = set()
        self._tf_gave_up: set[str] = set()  # frames whose TF wait timed out (worker thread only)

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
                low, high, _ = THRESHOLD_RANGES[name]
                self.declare_parameter(full, float(getattr(defaults, name)), ParameterDescriptor(
                    description=THRESHOLD_DESCRIPTIONS[name],
                    floating_point_range=[FloatingPointRange(from_value=low, to_value=high, step=0.0)]))
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
        topics: dict[str, dict[str, str]] = {}
        for camera in self.config.cameras:
            streams = [("color", Image, camera.color_topic, self._on_color),
                       ("info", CameraInfo, camera.camera_info_topic, self._on_info)]
            if camera.depth_topic:
                streams.append(("depth", Image, camera.depth_topic, self._on_depth))
            for stream, msg_type, topic, callback in streams:
                sub = self.create_subscription(msg_type, topic, lambda m, c=camera, s=stream, f=callback: self._receive(f, c, s, m), qos)
                self._subs.append(sub)
                topics.setdefault(camera.name, {})[stream] = sub.topic_name  # resolved: namespace and remaps applied
        self.health = HealthMonitor(topics, self.config.diagnostics)
        self._stamps.reset()
        self._subs.append(self.create_subscription(Empty, "~/reset", lambda _msg: self._guard(self.reset, "reset topic"), 10))
        self._services = []
        if Trigger is not None:
            self._services.append(self.create_service(Trigger, "~/reset", self._on_reset_service))
        else:
            self.get_logger().warning("std_srvs is not installed: no ~/reset service (the ~/reset topic works); "
                                      "install ros-std-srvs (scripts/setup.sh)")
        self._jump_callback = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-1), on_clock_change=False),
            post_callback=lambda jump: self._guard(self._on_clock_jump, jump))
        self._pubs = {
            "tf": TfBroadcaster(self),
            "detections": self.create_publisher(Detection3DArray, "~/detections", 10),
            "markers": self.create_publisher(MarkerArray, "~/markers", 10),
            "diagnostics": DiagnosticsPublisher(self),
        }
        self._debug_pubs = {}
        if self.config.debug_images:
            for camera in self.config.cameras:
                self._debug_pubs[camera.name] = self.create_publisher(Image, f"~/debug/{camera.name}/image", 2)
        if self.config.sync.timeout_s is not None:
            self._timers.append(self.create_timer(self.config.sync.timeout_s / 2, lambda: self._guard(self._poll)))
        self._timers.append(self.create_timer(self.config.diagnostics.period_s, lambda: self._guard(self._publish_diagnostics)))
        self._running = True
        self._worker = threading.Thread(target=self._work, name="pose_node_worker", daemon=True)
        self._worker.start()
        self.get_logger().info("active")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.stop_worker()
        for sub in self._subs:
            self.destroy_subscription(sub)
        for service in self._services:
            self.destroy_service(service)
        self._services = []
        if self._jump_callback is not None:
            self._jump_callback.unregister()
            self._jump_callback = None
        for timer in self._timers:
            self.destroy_timer(timer)
        for pub in self._debug_pubs.values():
            self.destroy_publisher(pub)
        self._debug_pubs = {}
        for name, pub in self._pubs.items():
            if name in ("tf", "diagnostics"):
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

    def stop_worker(self, timeout_s: float | None = None) -> bool:
        """Stop the worker thread after the set it is processing; True when it has ended.

        Called on deactivate and at shutdown: a worker still inside torch when the interpreter
        exits aborts the process.
        """
        with self._slot_cv:
            self._running = False
            self._slot = None
            self._slot_cv.notify_all()
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                self.get_logger().error(f"the worker did not stop within {timeout_s} s")
                return False
            self._worker = None
        return True

    # ------------------------------------------------------------------ reset and time jumps
    def reset(self, reason: str) -> None:
        """Clear the synchronizer, the waiting set, the dynamic TF buffer and the tracked instances."""
        if self.sync is not None:
            self.sync.reset()
        self._stamps.reset()
        with self._slot_cv:
            self._slot = None
        if self.tf is not None:
            self.tf.clear_dynamic()
        self._tf_gave_up = set()
        if self.pipeline is not None:
            self.pipeline.reset()
        self.counters["resets"] += 1
        self.get_logger().info(f"{reason}: synchronizer, TF buffer and tracked instances cleared; re-detecting")

    def _on_reset_service(self, request, response):
        try:
            self.reset("reset service")
            response.success, response.message = True, "synchronizer, TF buffer and tracked instances cleared"
        except Exception as exc:  # noqa: BLE001 - reported to the caller instead of raised into the executor
            response.success, response.message = False, f"{type(exc).__name__}: {exc}"
        return response

    def _time_jumped(self, what: str) -> None:
        if self.health is not None:
            self.health.event("time_jumps")
        self.counters["time_jumps"] += 1
        self.get_logger().warning(f"time went back ({what})")
        self.reset("time went back")

    def _on_clock_jump(self, jump) -> None:
        self._time_jumped(f"the node's clock jumped by {jump.delta.nanoseconds / 1e9:.3f} s")

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
            if self.health is not None:
                self.health.event("callback_errors")
            self.get_logger().error(f"{getattr(callback, '__name__', callback)}: {type(exc).__name__}: {exc}",
                                    throttle_duration_sec=WARN_THROTTLE_S)

    def _bad_input(self, kind: str, message: str, camera: str | None = None) -> None:
        """Count a dropped input and warn, at most once per ``WARN_THROTTLE_S`` per kind."""
        self.counters[f"bad_input.{kind}"] += 1
        if self.health is not None:
            self.health.bad_input(kind, camera)
        now = time.monotonic()
        if now - self._last_warning.get(kind, -np.inf) >= WARN_THROTTLE_S:
            self._last_warning[kind] = now
            self.get_logger().warning(f"dropped: {message}")

    def _receive(self, callback, camera, stream: str, msg) -> None:
        if self.health is not None:
            self.health.message(camera.name, stream)
        self._guard(callback, camera, msg)

    def _add(self, camera, stream: str, header, payload) -> None:
        stamp_ns = conv.stamp_to_ns(header.stamp)
        previous = self._stamps.check((camera.name, stream), stamp_ns)
        if previous is not None:
            self._time_jumped(f"{camera.name} {stream} stamp {stamp_ns / 1e9:.3f} s after {previous / 1e9:.3f} s")
            self._stamps.check((camera.name, stream), stamp_ns)
        result = self.sync.add((camera.name, stream), stamp_ns, payload)
        if result is not None:
            self._hand_over(result)

    def _on_color(self, camera, msg: Image) -> None:
        try:
            rgb = conv.rgb_from_image(msg)
        except PoseNodeError as exc:
            return self._bad_input("color", f"{camera.name} colour image: {exc}", camera.name)
        self._add(camera, "color", msg.header, ColorPayload(rgb, msg.header.frame_id))

    def _on_depth(self, camera, msg: Image) -> None:
        try:
            depth = conv.depth_from_image(msg, camera.depth_encoding)
        except PoseNodeError as exc:
            return self._bad_input("depth", f"{camera.name} depth image: {exc}", camera.name)
        finite = np.isfinite(depth)
        if not np.any(finite & (depth > 0)):
            return self._bad_input("depth_nan", f"{camera.name} depth image: no finite depth > 0", camera.name)
        if not finite.all():
            depth = np.where(finite, depth, np.float32(0.0))  # NaN/inf = no return, as 0 is
        self._add(camera, "depth", msg.header, depth)

    def _on_info(self, camera, msg: CameraInfo) -> None:
        try:
            conv.camera_from_info(msg, np.eye(4))
        except PoseNodeError as exc:
            return self._bad_input("camera_info", f"{camera.name} camera_info: {exc}", camera.name)
        self._add(camera, "info", msg.header, msg)

    def _poll(self) -> None:
        result = self.sync.poll()
        if result is not None:
            self._hand_over(result)

    def _hand_over(self, synced: SyncedSet) -> None:
        for name in synced.missing_cameras:
            self.counters[f"missing_camera.{name}"] += 1
        self.health.set_missing(synced.missing_cameras)
        with self._slot_cv:
            if self._slot is not None:
                self.counters["dropped_sets"] += 1  # latest wins: the waiting set is stale
                self.health.event("dropped_sets")
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
            self.health.set_started()
            self._guard(self._process, synced)

    def _lookup(self, frame_id: str, stamp_ns: int, deadline: float):
        """``T_world_frame`` at the stamp, waiting until ``deadline`` (monotonic) for TF to have it:
        the first images can arrive before ``/tf_static`` (another topic, no ordering). A frame
        whose wait timed out is not waited for again until it has been found (a camera with a
        wrong frame id delays one set, not every set)."""
        wait = frame_id not in self._tf_gave_up
        while True:
            try:
                T = self.tf.lookup(self.config.world_frame, frame_id, stamp_ns)
                self._tf_gave_up.discard(frame_id)
                return T
            except TransformError:
                if not wait or not self._running or time.monotonic() >= deadline:
                    if wait:
                        self._tf_gave_up.add(frame_id)
                    raise
            time.sleep(TF_RETRY_S)

    def _views(self, synced: SyncedSet) -> list[View]:
        deadline = time.monotonic() + self.config.tf_timeout_s
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
                    T = self._lookup(info.header.frame_id, streams["color"].stamp_ns, deadline)
                cam = conv.camera_from_info(info, T, image_size=(width, height))
            except PoseNodeError as exc:
                self._bad_input("camera", f"{camera.name}: {exc}", camera.name)
                continue
            views.append(View(camera=cam, rgb=color.rgb, depth=depth, stamp_ns=streams["color"].stamp_ns, name=camera.name))
        return views

    def _process(self, synced: SyncedSet) -> None:
        views = self._views(synced)
        if len(views) < self.config.sync.min_cameras:
            self.counters["dropped_sets"] += 1
            self.health.event("unusable_sets")
            return
        estimates, timings = self.pipeline.estimate(views)
        self.health.set_processed([v.name for v in views], timings)
        self.counters["processed_sets"] += 1
        self._check_units(estimates, views)
        if self._running:
            self._publish(synced.stamp_ns, estimates)
            for view in views:
                if view.name in self._debug_pubs:
                    frame_id = synced.messages[view.name]["color"].payload.frame_id
                    self._debug_pubs[view.name].publish(conv.numpy_to_image(
                        self.outputs.debug_image(view, estimates), "rgb8", stamp_ns=view.stamp_ns, frame_id=frame_id))

    def _report_units(self, obj, found: str, likely: str) -> None:
        self.counters[f"units_suspect.{obj.name}"] += 1
        self.get_logger().error(
            f"{obj.name}: {found}: "
            + (f"its mesh is probably in {likely}, not the declared {obj.units} ({obj.key_path}.units)"
               if likely != "unknown" else f"check its declared units ({obj.units}, {obj.key_path}.units) and the depth"))

    def _check_units(self, estimates, views: list[View]) -> None:
        """Report a mesh whose declared units disagree with the observed depth by a unit factor
        (10, 1000, ...), naming the likely units, once per object: from the pipeline's check of
        its first RGB-D detection (size), else from its first estimate (distance)."""
        for report in self.pipeline.pop_unit_reports():
            self._units_checked.add(report.object_id)
            self._report_units(self.config.object(report.object_id), f"mesh diameter {report.size_ratio:.3g} times the "
                               f"extent of its detection's depth in {report.view_name}", report.likely_units)
        for e in estimates:
            if e.object_id in self._units_checked:
                continue
            found = depth_distance_ratio(e.T_world_object, views)
            if found is None:
                continue
            self._units_checked.add(e.object_id)
            ratio, view_name = found
            obj = self.config.object(e.object_id)
            units = likely_units(obj.units, ratio)
            if units is not None:
                self._report_units(obj, f"estimated {ratio:.3g} times as far as the depth at its centre in {view_name}", units)

    def _publish(self, stamp_ns: int, estimates) -> None:
        outputs = self.outputs.build(stamp_ns, estimates)
        self._pubs["tf"].send(outputs.transforms)
        self._pubs["detections"].publish(outputs.detections)
        self._pubs["markers"].publish(outputs.markers)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        stats = self.sync.stats
        totals = {  # lifetime totals, next to the recent counters (pose_bench reads these keys)
            "processed_sets": self.counters["processed_sets"], "dropped_sets": self.counters["dropped_sets"],
            "resets": self.counters["resets"], "sync.dropped_sets": stats.dropped_sets,
            "sync.dropped_messages": stats.dropped_messages, "sync.partial_sets": stats.partial_sets,
        }
        self._pubs["diagnostics"].publish(self.health.statuses(), {"pipeline": {k: str(v) for k, v in totals.items()}})


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
    except RCLError:
        # rclpy race (ros2/rclpy#398): SIGINT's deferred shutdown can invalidate the context while
        # spin builds its wait set. That is a normal stop; any other RCLError is not.
        if rclpy.ok():
            raise
    finally:
        if not node.stop_worker(WORKER_JOIN_TIMEOUT_S):
            code = 1
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
