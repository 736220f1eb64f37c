"""``pose_replay``: play a rosbag2 (mcap or sqlite3) into the ROS graph.

rosbag2_py and ``ros2 bag`` are not available with the PyPI ROS 2 wheels, so this reads bags
with ``rosbags`` and republishes each record's serialized CDR bytes unchanged: header stamps,
frame ids and payloads are exactly what was recorded. ``/clock`` (rosgraph_msgs/Clock) carries
the bag's receive time, so nodes started with ``use_sim_time:=true`` see the recorded timeline.

``--restamp`` (for latency measurements, with ``--no-clock``) rewrites the header stamp of every
message that starts with a ``std_msgs/Header`` (images, camera infos, ...) to the wall-clock time
it is published at; the records of one recorded stamp (the cameras of one frame) all get the time
the first of them went out, so they still synchronize, and a looped bag keeps moving forward in
time. The rest of each message is unchanged (the stamp is patched in the CDR bytes).

QoS: ``/tf_static`` is reliable + transient local (late joiners still get every static
transform of the bag); every other topic and ``/clock`` are reliable with depth 10.

Examples::

    pose_replay demo.mcap
    pose_replay demo_bag/ --rate 0.5 --loop --topics /cam0/image_raw /cam0/camera_info /tf_static
    pose_replay demo.mcap --wait-for-subscribers 1 --ros-args -r /cam0/image_raw:=/image
    pose_replay demo_bag/ --rate 3 --loop --restamp --no-clock   # stamps = publication time

``--wait-for-subscribers N`` waits until every played topic that N subscribers in the graph want
has N matched subscriptions, and that has held for ``SETTLE_S`` (a node's subscriptions are
discovered one by one within milliseconds; without the pause the first frame could go out
before the last camera's topic matched). Topics nobody subscribes (a bag's ``depth_info`` or
``/clock`` for a node without sim time) are played but not waited for.

Exit status: 0 after the last message (or on Ctrl-C), 1 on a bad bag or argument, 2 on a
``--wait-timeout`` that expired before the subscribers matched, 3 when the whole bag was played
and no subscriber ever matched any of its topics (wrong ROS_DOMAIN_ID or topic names: nothing
arrived anywhere).
"""
from __future__ import annotations

import argparse
import importlib
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pose_node.ros.local_env import apply_local_ros_environment, explicit_domain_id

TF_STATIC_TOPIC = "/tf_static"
CLOCK_TOPIC = "/clock"
DEFAULT_DEPTH = 10
TF_STATIC_MIN_DEPTH = 100
# Longest single sleep while pacing, so Ctrl-C and /clock publishing stay responsive.
MAX_SLEEP_S = 0.05
# --wait-for-subscribers: the matched topics must stay the same this long before playing starts.
SETTLE_S = 0.5
EXIT_NOTHING_SUBSCRIBED = 3
HEADER_TYPE = "std_msgs/Header"
# CDR encapsulation identifiers (first two bytes of a serialized message) -> struct byte order.
_CDR_BYTE_ORDER = {b"\x00\x00": ">", b"\x00\x01": "<"}
_ENCAPSULATION_BYTES = 4  # identifier + options; the message's first field starts here
NS_PER_S = 1_000_000_000


class ReplayError(RuntimeError):
    """A bag or argument problem that stops the replay (message names the cause)."""


@dataclass(frozen=True)
class ReplayOptions:
    """What to play and how.

    Attributes:
        bag: rosbag2 directory, or a single ``.mcap`` / ``.db3`` file.
        rate: playback speed factor; 0 plays as fast as possible.
        loop: start over after the last message.
        topics: topics to play; empty plays every topic of the bag.
        wait_for_subscribers: before playing, wait until every played topic (``/clock``
            included unless disabled) that this many subscribers want has them matched
            (module docstring).
        wait_timeout_s: give up waiting after this many seconds; 0 waits forever.
        clock: publish ``/clock`` from bag time.
        clock_hz: how often ``/clock`` advances while waiting between messages (0: only
            with each message).
        ack_timeout_s: after the last message, wait up to this long for subscribers to
            acknowledge everything published.
        local_only: apply :func:`pose_node.ros.local_env.apply_local_ros_environment` before
            joining the graph (the default; ``--network`` turns it off).
        restamp: rewrite header stamps to the publication time (module docstring).
    """

    bag: Path
    rate: float = 1.0
    loop: bool = False
    topics: tuple[str, ...] = ()
    wait_for_subscribers: int = 0
    wait_timeout_s: float = 0.0
    clock: bool = True
    clock_hz: float = 100.0
    ack_timeout_s: float = 5.0
    local_only: bool = True
    restamp: bool = False


def parse_args(argv: Sequence[str]) -> ReplayOptions:
    """Parse command-line arguments (ROS arguments already removed)."""
    parser = argparse.ArgumentParser(
        prog="pose_replay", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory or .mcap/.db3 file")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="playback speed factor (default 1.0; 0 = as fast as possible)")
    parser.add_argument("--loop", action="store_true", help="play the bag over and over")
    parser.add_argument("--topics", nargs="+", default=[], metavar="TOPIC",
                        help="play only these topics (default: all)")
    parser.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                        help="wait until every topic that N subscribers in the graph want has them matched "
                             "(topics nobody subscribes are played without waiting)")
    parser.add_argument("--wait-timeout", type=float, default=0.0, metavar="S",
                        help="fail if subscribers have not matched after S seconds "
                             "(0 = wait forever)")
    parser.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    parser.add_argument("--clock-hz", type=float, default=100.0,
                        help="/clock rate between messages (default 100; 0 = only with messages)")
    parser.add_argument("--network", action="store_true",
                        help="use the ROS environment as it is (default: localhost discovery and the "
                             "shared-memory profile, see pose_node.ros.local_env; a set ROS_DOMAIN_ID is kept)")
    parser.add_argument("--ack-timeout", type=float, default=5.0, metavar="S",
                        help="at the end, wait up to S seconds for subscribers to acknowledge")
    parser.add_argument("--restamp", action="store_true",
                        help="set header stamps to the wall-clock publication time (latency measurements; "
                             "needs --no-clock)")
    args = parser.parse_args(list(argv))
    if args.restamp and not args.no_clock:
        parser.error("--restamp sets stamps to wall-clock time while /clock would carry bag time: add --no-clock")
    for name in ("rate", "wait_timeout", "clock_hz", "ack_timeout"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.wait_for_subscribers < 0:
        parser.error(f"--wait-for-subscribers must be >= 0, got {args.wait_for_subscribers}")
    return ReplayOptions(
        bag=args.bag, rate=args.rate, loop=args.loop, topics=tuple(args.topics),
        wait_for_subscribers=args.wait_for_subscribers, wait_timeout_s=args.wait_timeout,
        clock=not args.no_clock, clock_hz=args.clock_hz, ack_timeout_s=args.ack_timeout, local_only=not args.network,
        restamp=args.restamp,
    )


def message_class(msgtype: str) -> type:
    """Import the Python class of a ROS type name such as ``sensor_msgs/msg/Image``.

    Raises:
        ReplayError: if the type name is malformed or its package is not installed.
    """
    parts = msgtype.split("/")
    if len(parts) == 2:  # ROS 1 style "pkg/Type"
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise ReplayError(f"cannot interpret message type {msgtype!r}")
    package, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise ReplayError(f"message type {msgtype} is not installed ({exc})") from exc


def starts_with_header(msg_class: type) -> bool:
    """Whether a ROS message class's first field is a ``std_msgs/Header``."""
    fields = msg_class.get_fields_and_field_types()
    return bool(fields) and next(iter(fields.values())) == HEADER_TYPE


def _byte_order(cdr: bytes) -> str:
    order = _CDR_BYTE_ORDER.get(bytes(cdr[:2]))
    if order is None or len(cdr) < _ENCAPSULATION_BYTES + 8:
        raise ReplayError(f"not a plain CDR message (encapsulation {bytes(cdr[:4]).hex()}, {len(cdr)} bytes)")
    return order


def read_header_stamp_ns(cdr: bytes) -> int:
    """The header stamp (nanoseconds) of a CDR-serialized message whose first field is a Header.

    Raises:
        ReplayError: not plain CDR (the encapsulation is not CDR_LE / CDR_BE) or too short.
    """
    sec, nanosec = struct.unpack_from(_byte_order(cdr) + "iI", cdr, _ENCAPSULATION_BYTES)
    return sec * NS_PER_S + nanosec


def with_header_stamp(cdr: bytes, stamp_ns: int) -> bytes:
    """A copy of a CDR-serialized message (first field a Header) with its stamp set to ``stamp_ns`` (>= 0).

    The stamp (int32 sec, uint32 nanosec) is the first thing after the 4-byte encapsulation in
    either byte order, so patching it leaves every other byte (and the CDR alignment) as it was.

    Raises:
        ReplayError: not plain CDR, or a negative stamp.
    """
    if stamp_ns < 0:
        raise ReplayError(f"with_header_stamp: negative stamp {stamp_ns}")
    out = bytearray(cdr)
    struct.pack_into(_byte_order(cdr) + "iI", out, _ENCAPSULATION_BYTES, *divmod(int(stamp_ns), NS_PER_S))
    return bytes(out)


class Restamper:
    """Maps each recorded header stamp to the time its first record is published (module docstring).

    Args:
        clock: wall-clock time in nanoseconds (``time.time_ns``: what DDS source timestamps and
            ROS system time use).
    """

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock
        self._new_stamps: dict[int, int] = {}

    def reset(self) -> None:
        """Forget the mapping (a loop starts over with the bag's first stamps)."""
        self._new_stamps.clear()

    def restamp(self, cdr: bytes) -> bytes:
        recorded = read_header_stamp_ns(cdr)
        new = self._new_stamps.get(recorded)
        if new is None:
            new = self._new_stamps[recorded] = self._clock()
        return with_header_stamp(cdr, new)


def _open_reader(bag: Path):
    from rosbags.rosbag2 import Reader

    if not bag.exists():
        raise ReplayError(f"bag not found: {bag}")
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        raise ReplayError(f"cannot open bag {bag}: {exc}") from exc
    return reader


class BagPlayer:
    """Publishes a bag's records on ``node`` with the bag's timing.

    Args:
        node: rclpy node that owns the publishers.
        options: what to play.
    """

    def __init__(self, node, options: ReplayOptions) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self._node = node
        self._options = options
        self._reader = _open_reader(options.bag)
        wanted = set(options.topics)
        connections = [c for c in self._reader.connections if not wanted or c.topic in wanted]
        missing = wanted - {c.topic for c in connections}
        if missing:
            available = ", ".join(sorted({c.topic for c in self._reader.connections}))
            raise ReplayError(f"topics not in {options.bag}: {', '.join(sorted(missing))} "
                              f"(bag has: {available})")
        if not connections:
            raise ReplayError(f"{options.bag} has no topics to play")
        non_cdr = sorted({c.topic for c in connections
                          if getattr(c.ext, "serialization_format", "cdr") != "cdr"})
        if non_cdr:
            raise ReplayError(f"only CDR-serialized topics can be replayed, not: {non_cdr}")
        self._connections = connections

        self._publishers = {}
        self._subscribed: set[str] = set()
        self._restamp_topics: set[str] = set()
        self._restamper = Restamper()
        for topic in sorted({c.topic for c in connections}):
            types = {c.msgtype for c in connections if c.topic == topic}
            if len(types) != 1:
                raise ReplayError(f"topic {topic} has several types in the bag: {sorted(types)}")
            if topic == TF_STATIC_TOPIC:
                count = sum(c.msgcount for c in connections if c.topic == topic)
                qos = QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=max(TF_STATIC_MIN_DEPTH, count),
                    reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.TRANSIENT_LOCAL,
                )
            else:
                qos = QoSProfile(
                    history=HistoryPolicy.KEEP_LAST, depth=DEFAULT_DEPTH,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                )
            msg_class = message_class(types.pop())
            self._publishers[topic] = node.create_publisher(msg_class, topic, qos)
            if options.restamp and starts_with_header(msg_class):
                self._restamp_topics.add(topic)
        self._clock_type = Clock
        self._clock_publisher = (
            node.create_publisher(Clock, CLOCK_TOPIC, DEFAULT_DEPTH) if options.clock else None
        )

    @property
    def message_count(self) -> int:
        return sum(c.msgcount for c in self._connections)

    def close(self) -> None:
        self._reader.close()

    def wait_for_subscribers(self) -> bool:
        """Block until each publisher has enough matched subscriptions.

        Returns:
            True when matched, False when ``wait_timeout_s`` expired or the context shut down.
        """
        import rclpy

        needed = self._options.wait_for_subscribers
        if needed <= 0:
            return True
        publishers = dict(self._publishers)
        if self._clock_publisher is not None:
            publishers[CLOCK_TOPIC] = self._clock_publisher
        deadline = (time.monotonic() + self._options.wait_timeout_s
                    if self._options.wait_timeout_s > 0 else None)
        self._node.get_logger().info(
            f"waiting for {needed} subscriber(s) on the topics they want of {', '.join(sorted(publishers))}")
        state, since = None, time.monotonic()
        while rclpy.ok(context=self._node.context):
            # count_subscribers takes the resolved name: a remapped topic is counted where it is published.
            wanted = frozenset(t for t in publishers if self._node.count_subscribers(publishers[t].topic_name) >= needed)
            unmatched = frozenset(t for t in wanted if publishers[t].get_subscription_count() < needed)
            now = time.monotonic()
            if (wanted, unmatched) != state:
                state, since = (wanted, unmatched), now
            if wanted and not unmatched and now - since >= SETTLE_S:
                ignored = sorted(set(publishers) - wanted)
                if ignored:
                    self._node.get_logger().info(f"not subscribed, played without waiting: {', '.join(ignored)}")
                return True
            if deadline is not None and now > deadline:
                self._node.get_logger().error(
                    f"no {needed} subscriber(s) after {self._options.wait_timeout_s} s on: "
                    f"{', '.join(sorted(unmatched or set(publishers)))}")
                return False
            time.sleep(0.01)
        return False

    @property
    def subscribed_topics(self) -> frozenset[str]:
        """Topics that had at least one matched subscription when a message was published on them."""
        return frozenset(self._subscribed)

    def _records(self) -> Iterator[tuple[str, int, bytes]]:
        for connection, timestamp_ns, data in self._reader.messages(connections=self._connections):
            yield connection.topic, timestamp_ns, bytes(data)

    def _publish_clock(self, bag_time_ns: int) -> None:
        if self._clock_publisher is None:
            return
        msg = self._clock_type()
        msg.clock.sec, msg.clock.nanosec = divmod(int(bag_time_ns), 1_000_000_000)
        self._clock_publisher.publish(msg)

    def _sleep_until(self, wall_deadline: float, bag_start_ns: int, wall_start: float) -> bool:
        """Sleep until ``wall_deadline``, advancing /clock; False if shut down meanwhile."""
        import rclpy

        clock_period = 1.0 / self._options.clock_hz if self._options.clock_hz > 0 else None
        next_clock = time.monotonic() + clock_period if clock_period else float("inf")
        while True:
            if not rclpy.ok(context=self._node.context):
                return False
            now = time.monotonic()
            if now >= wall_deadline:
                return True
            if now >= next_clock:
                elapsed_bag_ns = (now - wall_start) * self._options.rate * 1e9
                self._publish_clock(bag_start_ns + int(elapsed_bag_ns))
                next_clock = now + clock_period
            time.sleep(min(MAX_SLEEP_S, wall_deadline - now, max(0.0, next_clock - now)))

    def play_once(self) -> int:
        """Play every selected record once with the bag's timing.

        Returns:
            Number of records published (fewer than the bag holds if shut down early).
        """
        import rclpy

        published = 0
        wall_start = None
        bag_start_ns = 0
        self._restamper.reset()
        for topic, timestamp_ns, data in self._records():
            if wall_start is None:
                wall_start, bag_start_ns = time.monotonic(), timestamp_ns
            elif self._options.rate > 0:
                offset_s = (timestamp_ns - bag_start_ns) / 1e9 / self._options.rate
                if not self._sleep_until(wall_start + offset_s, bag_start_ns, wall_start):
                    break
            if not rclpy.ok(context=self._node.context):
                break
            self._publish_clock(timestamp_ns)
            if topic in self._restamp_topics:
                data = self._restamper.restamp(data)
            publisher = self._publishers[topic]
            if topic not in self._subscribed and publisher.get_subscription_count() > 0:
                self._subscribed.add(topic)
            publisher.publish(data)
            published += 1
        return published

    def wait_for_acks(self) -> bool:
        """Wait until reliable subscribers acknowledged what was published."""
        from rclpy.duration import Duration

        timeout = Duration(seconds=self._options.ack_timeout_s)
        publishers = list(self._publishers.values())
        if self._clock_publisher is not None:
            publishers.append(self._clock_publisher)
        return all(p.wait_for_all_acked(timeout) for p in publishers)


def run(options: ReplayOptions, ros_args: Sequence[str] | None = None) -> int:
    """Initialize rclpy, play the bag as configured, and shut down.

    Args:
        options: what to play.
        ros_args: full argv including ``--ros-args ...`` (for remaps, node name, logging).

    Returns:
        Process exit status (see module docstring).
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=list(ros_args) if ros_args is not None else None)
    node = None
    player = None
    try:
        node = rclpy.create_node("pose_replay")
        player = BagPlayer(node, options)
        node.get_logger().info(
            f"playing {player.message_count} messages from {options.bag} "
            f"at rate {options.rate if options.rate > 0 else 'max'}"
            f"{' (looping)' if options.loop else ''}")
        if not player.wait_for_subscribers():
            return 2 if rclpy.ok(context=node.context) else 0
        while True:
            count = player.play_once()
            if not rclpy.ok(context=node.context):
                break
            node.get_logger().info(f"published {count} messages")
            if options.loop and not player.subscribed_topics:
                node.get_logger().error(
                    f"nothing subscribed to any played topic (ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0 (unset)')}); "
                    "looping anyway", throttle_duration_sec=60.0)
            if not options.loop:
                if not player.subscribed_topics:
                    domain = os.environ.get("ROS_DOMAIN_ID", "0 (unset)")
                    node.get_logger().error(
                        f"nothing subscribed to any of the {count} messages' topics: no node received anything "
                        f"(ROS_DOMAIN_ID={domain}; check the domain, the topic names and remaps, or use "
                        "--wait-for-subscribers)")
                    return EXIT_NOTHING_SUBSCRIBED
                if not player.wait_for_acks():
                    node.get_logger().warning(
                        f"not every subscriber acknowledged within {options.ack_timeout_s} s")
                break
        return 0
    except ReplayError as exc:
        if node is not None:
            node.get_logger().error(str(exc))
        else:
            print(f"pose_replay: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if player is not None:
            player.close()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``pose_replay``."""
    from rclpy.utilities import remove_ros_args

    full_argv = list(sys.argv if argv is None else argv)
    try:
        options = parse_args(remove_ros_args(full_argv)[1:])
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0) if exc.code in (0, None) else 1
    if options.local_only:
        # Safe by default: a replay must not flood a shared network with camera traffic unless
        # asked to. Applied before rclpy.init(), which is when the RMW reads these variables. The
        # user's domain is kept so that a node on this host can be fed; one the local environment
        # cannot use is an error (replacing it would feed nobody).
        try:
            domain_id = explicit_domain_id(os.environ)
        except ValueError as exc:
            print(f"pose_replay: {exc} (or pass --network to use the environment as it is)", file=sys.stderr)
            return 1
        apply_local_ros_environment(domain_id)
    return run(options, full_argv)


if __name__ == "__main__":
    sys.exit(main())
