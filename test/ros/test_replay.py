"""pose_replay: a rosbag2 written with rosbags is replayed into the graph unchanged."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pose_node.ros.replay import ReplayOptions, parse_args

T0_NS = 1_700_000_000 * 1_000_000_000  # bag start (record time)
FRAME_PERIOD_NS = 100_000_000  # 10 Hz
HEADER_LAG_NS = 5_000_000  # header stamps are 5 ms older than record time, as with real cameras
IMAGE_TOPIC = "/cam0/image_raw"
INFO_TOPIC = "/cam0/camera_info"


@dataclass
class RecordedBag:
    path: Path
    record_times_ns: list[int]  # every record, all topics, in order
    image_stamps_ns: list[int]  # header stamps of the images
    image_bytes: list[bytes]
    static_children: list[str]


def _time(typestore, ns: int):
    Time = typestore.types["builtin_interfaces/msg/Time"]
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def write_bag(path: Path, storage: str, n_frames: int = 3) -> RecordedBag:
    """Write /tf_static, then n_frames x (Image, CameraInfo) at 10 Hz, with rosbags."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    types = ts.types
    Header = types["std_msgs/msg/Header"]
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]

    record_times, image_stamps, image_bytes = [], [], []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        tf_conn = writer.add_connection("/tf_static", "tf2_msgs/msg/TFMessage", typestore=ts)
        img_conn = writer.add_connection(IMAGE_TOPIC, "sensor_msgs/msg/Image", typestore=ts)
        info_conn = writer.add_connection(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", typestore=ts)

        children = ["cam0_optical", "table"]
        transforms = []
        for i, child in enumerate(children):
            transforms.append(types["geometry_msgs/msg/TransformStamped"](
                header=Header(stamp=_time(ts, T0_NS), frame_id="world"),
                child_frame_id=child,
                transform=types["geometry_msgs/msg/Transform"](
                    translation=types["geometry_msgs/msg/Vector3"](x=0.1 * (i + 1), y=0.0, z=0.5),
                    rotation=types["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
                ),
            ))
        tf = types["tf2_msgs/msg/TFMessage"](transforms=transforms)
        writer.write(tf_conn, T0_NS, ts.serialize_cdr(tf, "tf2_msgs/msg/TFMessage"))
        record_times.append(T0_NS)

        for k in range(n_frames):
            t = T0_NS + (k + 1) * FRAME_PERIOD_NS
            stamp = t - HEADER_LAG_NS
            pixels = np.full((3, 4, 3), 10 * (k + 1), dtype=np.uint8)
            pixels[0, 0] = [k, 255 - k, 7]
            image = types["sensor_msgs/msg/Image"](
                header=Header(stamp=_time(ts, stamp), frame_id="cam0_optical"),
                height=3, width=4, encoding="rgb8", is_bigendian=0, step=12,
                data=pixels.reshape(-1),
            )
            info = types["sensor_msgs/msg/CameraInfo"](
                header=Header(stamp=_time(ts, stamp), frame_id="cam0_optical"),
                height=3, width=4, distortion_model="plumb_bob",
                d=np.zeros(5), k=np.array([500.0, 0, 2, 0, 500.0, 1.5, 0, 0, 1]),
                r=np.eye(3).reshape(-1), p=np.array([500.0, 0, 2, 0, 0, 500.0, 1.5, 0, 0, 0, 1, 0]),
                binning_x=0, binning_y=0,
                roi=types["sensor_msgs/msg/RegionOfInterest"](
                    x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
            )
            writer.write(img_conn, t, ts.serialize_cdr(image, "sensor_msgs/msg/Image"))
            writer.write(info_conn, t, ts.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            record_times += [t, t]
            image_stamps.append(stamp)
            image_bytes.append(pixels.tobytes())
    return RecordedBag(path, record_times, image_stamps, image_bytes, children)


@pytest.fixture(params=["mcap", "sqlite3"])
def recorded_bag(request, tmp_path) -> RecordedBag:
    return write_bag(tmp_path / f"bag_{request.param}", request.param)


def _stamp_ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def _reliable(depth=10, latched=False):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=depth, reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


def test_replay_keeps_stamps_frames_and_publishes_bag_clock(ros, recorded_bag):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    images = ros.collect(Image, IMAGE_TOPIC, _reliable())
    infos = ros.collect(CameraInfo, INFO_TOPIC, _reliable())
    statics = ros.collect(TFMessage, "/tf_static", _reliable(depth=100, latched=True))
    clocks = ros.collect(Clock, "/clock", _reliable(depth=1000))

    process = ros.start("pose_replay", str(recorded_bag.path), "--wait-for-subscribers", "1")
    n = len(recorded_bag.image_stamps_ns)
    ros.spin_until(lambda: len(images.messages) == n and len(infos.messages) == n
                   and len(statics.messages) == 1, what="every replayed message")
    assert process.wait() == 0, process.output()
    ros.spin_until(lambda: clocks.messages and _stamp_ns(clocks.messages[-1].clock)
                   == recorded_bag.record_times_ns[-1], what="the last /clock")

    assert [_stamp_ns(m.header.stamp) for m in images.messages] == recorded_bag.image_stamps_ns
    assert [_stamp_ns(m.header.stamp) for m in infos.messages] == recorded_bag.image_stamps_ns
    assert {m.header.frame_id for m in images.messages + infos.messages} == {"cam0_optical"}
    assert [bytes(m.data) for m in images.messages] == recorded_bag.image_bytes
    assert all((m.height, m.width, m.encoding, m.step) == (3, 4, "rgb8", 12)
               for m in images.messages)
    assert infos.messages[0].k[2] == 2.0 and infos.messages[0].distortion_model == "plumb_bob"

    (tf,) = statics.messages
    assert [t.child_frame_id for t in tf.transforms] == recorded_bag.static_children
    assert {t.header.frame_id for t in tf.transforms} == {"world"}
    assert tf.transforms[1].transform.translation.x == pytest.approx(0.2)

    clock_ns = [_stamp_ns(m.clock) for m in clocks.messages]
    assert clock_ns == sorted(clock_ns), "/clock went backwards"
    assert set(recorded_bag.record_times_ns[1:]) <= set(clock_ns)  # every record's time
    assert recorded_bag.record_times_ns[0] <= clock_ns[0]
    assert clock_ns[-1] == recorded_bag.record_times_ns[-1]


def test_late_subscriber_still_gets_tf_static(ros, recorded_bag):
    from tf2_msgs.msg import TFMessage

    process = ros.start("pose_replay", str(recorded_bag.path), "--loop", "--rate", "5")
    ros.wait_for_publishers("/tf_static")
    statics = ros.collect(TFMessage, "/tf_static", _reliable(depth=100, latched=True))
    ros.spin_until(lambda: len(statics.messages) >= 1, what="latched /tf_static")
    children = [t.child_frame_id for t in statics.messages[0].transforms]
    assert children == recorded_bag.static_children
    process.assert_clean_exit()


def test_topic_filter_and_remap(ros, tmp_path):
    from sensor_msgs.msg import CameraInfo, Image

    bag = write_bag(tmp_path / "bag", "mcap")
    images = ros.collect(Image, "/remapped/image", _reliable())
    infos = ros.collect(CameraInfo, INFO_TOPIC, _reliable())
    process = ros.start("pose_replay", str(bag.path), "--rate", "0", "--no-clock",
                        "--topics", IMAGE_TOPIC, "--wait-for-subscribers", "1",
                        remap={IMAGE_TOPIC: "/remapped/image"})
    ros.spin_until(lambda: len(images.messages) == len(bag.image_stamps_ns), what="all images")
    assert process.wait() == 0, process.output()
    assert [_stamp_ns(m.header.stamp) for m in images.messages] == bag.image_stamps_ns
    assert ros.node.count_publishers(INFO_TOPIC) == 0
    assert infos.messages == []


def test_loop_replays_until_sigint(ros, tmp_path):
    from sensor_msgs.msg import Image

    bag = write_bag(tmp_path / "bag", "sqlite3")
    images = ros.collect(Image, IMAGE_TOPIC, _reliable(depth=100))
    process = ros.start("pose_replay", str(bag.path), "--loop", "--rate", "10",
                        "--wait-for-subscribers", "1", "--no-clock", "--topics", IMAGE_TOPIC)
    n = len(bag.image_stamps_ns)
    ros.spin_until(lambda: len(images.messages) >= 2 * n + 1, what="a second pass of the bag")
    process.assert_clean_exit()
    stamps = [_stamp_ns(m.header.stamp) for m in images.messages]
    assert stamps[: 2 * n] == bag.image_stamps_ns * 2


def test_unknown_topic_is_an_error(ros, tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap")
    process = ros.start("pose_replay", str(bag.path), "--topics", "/does_not_exist")
    assert process.wait() == 1
    assert "/does_not_exist" in process.output() and IMAGE_TOPIC in process.output()


def test_missing_bag_is_an_error(ros, tmp_path):
    process = ros.start("pose_replay", str(tmp_path / "nothing.mcap"))
    assert process.wait() == 1
    assert "bag not found" in process.output()


def test_wait_timeout_without_subscribers_exits_2(ros, tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap")
    process = ros.start("pose_replay", str(bag.path), "--topics", INFO_TOPIC,
                        "--wait-for-subscribers", "1", "--wait-timeout", "0.5")
    assert process.wait() == 2
    assert "no 1 subscriber(s)" in process.output()


def test_wait_for_subscribers_ignores_topics_nobody_wants(ros, tmp_path):
    """A pose_scene bag has topics the node does not subscribe (depth camera_info, /clock): the
    wait covers the subscribed ones only, and every image of the first frame arrives."""
    from sensor_msgs.msg import Image

    bag = write_bag(tmp_path / "bag", "mcap")
    images = ros.collect(Image, IMAGE_TOPIC, _reliable())
    process = ros.start_module("pose_node.ros.replay", str(bag.path), "--rate", "0", "--wait-for-subscribers", "1",
                               "--wait-timeout", "20")
    assert process.wait(timeout_s=30) == 0, process.output()
    ros.spin_until(lambda: len(images.messages) == len(bag.image_stamps_ns), what="all images")
    assert [_stamp_ns(m.header.stamp) for m in images.messages] == bag.image_stamps_ns  # the first one too
    out = process.output()
    assert "played without waiting" in out and INFO_TOPIC in out.split("played without waiting")[1].splitlines()[0]


def test_nothing_subscribed_is_an_error(ros, tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap")
    process = ros.start_module("pose_node.ros.replay", str(bag.path), "--rate", "0", "--no-clock",
                               env={"ROS_DOMAIN_ID": "42"})
    assert process.wait() == 3
    assert "nothing subscribed" in process.output() and "ROS_DOMAIN_ID=42" in process.output()


def test_parse_args_defaults_and_validation():
    options = parse_args(["some.mcap"])
    assert options == ReplayOptions(bag=Path("some.mcap"))
    assert options.rate == 1.0 and not options.loop and options.clock
    with pytest.raises(SystemExit):
        parse_args(["some.mcap", "--rate", "-1"])
    with pytest.raises(SystemExit):
        parse_args(["some.mcap", "--wait-for-subscribers", "-2"])


def test_sigint_while_waiting_for_subscribers_exits_0(ros, tmp_path):
    bag = write_bag(tmp_path / "bag", "mcap")
    process = ros.start("pose_replay", str(bag.path), "--wait-for-subscribers", "3")
    process.wait_for_output("waiting for 3 subscriber(s)")
    process.assert_clean_exit()


def test_replay_defaults_to_the_local_only_environment(monkeypatch):
    from pose_node.ros import replay

    seen = {}
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    monkeypatch.setattr(replay, "run", lambda options, argv: seen.update(env=dict(os.environ), options=options) or 0)
    assert replay.main(["pose_replay", "some_bag"]) == 0
    assert seen["options"].local_only
    assert seen["env"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert seen["env"]["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_shm_only.xml")

    # An explicit domain is kept; one the local environment cannot use is an error, not replaced.
    monkeypatch.setenv("ROS_DOMAIN_ID", "9")
    assert replay.main(["pose_replay", "some_bag"]) == 0 and seen["env"]["ROS_DOMAIN_ID"] == "9"
    monkeypatch.setenv("ROS_DOMAIN_ID", "0")
    seen.clear()
    assert replay.main(["pose_replay", "some_bag"]) == 1 and not seen

    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "SUBNET")
    assert replay.main(["pose_replay", "some_bag", "--network"]) == 0
    assert not seen["options"].local_only
    assert seen["env"]["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"


# --------------------------------------------------------------------------------- --restamp
def test_restamp_patches_the_header_stamp_and_nothing_else():
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header

    from pose_node.ros.replay import read_header_stamp_ns, with_header_stamp

    image = Image(header=Header(frame_id="cam0_optical"), height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
    image.header.stamp.sec, image.header.stamp.nanosec = 1_700_000_000, 5
    info = CameraInfo(header=Header(frame_id="cam0_optical"), width=3, height=2, k=[1.0, 0, 1, 0, 1, 1, 0, 0, 1])
    for msg, msg_type in ((image, Image), (info, CameraInfo)):
        cdr = serialize_message(msg)
        assert read_header_stamp_ns(cdr) == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        patched = with_header_stamp(cdr, 1_800_000_000_123_456_789)
        assert len(patched) == len(cdr) and read_header_stamp_ns(patched) == 1_800_000_000_123_456_789
        back = deserialize_message(patched, msg_type)
        assert (back.header.stamp.sec, back.header.stamp.nanosec) == (1_800_000_000, 123_456_789)
        back.header.stamp = msg.header.stamp
        assert back == msg


def test_restamp_reads_big_endian_and_rejects_what_is_not_plain_cdr():
    import struct

    from pose_node.ros.replay import ReplayError, read_header_stamp_ns, with_header_stamp

    big = b"\x00\x00\x00\x00" + struct.pack(">iI", 12, 34) + b"\x00\x00\x00\x01x\x00"
    assert read_header_stamp_ns(big) == 12 * 10**9 + 34
    assert with_header_stamp(big, 56 * 10**9 + 78)[4:12] == struct.pack(">iI", 56, 78)
    with pytest.raises(ReplayError, match="not a plain CDR"):
        read_header_stamp_ns(b"\x00\x03\x00\x00" + bytes(12))  # PL_CDR (XCDR1 parameter list)
    with pytest.raises(ReplayError, match="not a plain CDR"):
        read_header_stamp_ns(b"\x00\x01\x00\x00")  # too short


def test_restamper_gives_one_new_stamp_per_recorded_stamp():
    import struct

    from pose_node.ros.replay import Restamper, read_header_stamp_ns

    def cdr(stamp_s: int) -> bytes:
        return b"\x00\x01\x00\x00" + struct.pack("<iI", stamp_s, 0) + bytes(8)

    now = iter(range(1000, 2000, 10))
    restamper = Restamper(clock=lambda: next(now))
    stamps = [read_header_stamp_ns(restamper.restamp(cdr(s))) for s in (1, 1, 1, 2, 2, 1)]
    assert stamps == [1000, 1000, 1000, 1010, 1010, 1000]  # the cameras of one frame share it
    restamper.reset()  # the next loop
    assert read_header_stamp_ns(restamper.restamp(cdr(1))) == 1020


def test_restamp_needs_no_clock():
    with pytest.raises(SystemExit):
        parse_args(["some.mcap", "--restamp"])
    assert parse_args(["some.mcap", "--restamp", "--no-clock"]).restamp
    assert not parse_args(["some.mcap"]).restamp


def test_replay_restamps_headers_to_publication_time(ros, tmp_path):
    import time

    from sensor_msgs.msg import CameraInfo, Image
    from tf2_msgs.msg import TFMessage

    from pose_node.ros.replay import starts_with_header

    assert starts_with_header(Image) and starts_with_header(CameraInfo) and not starts_with_header(TFMessage)
    bag = write_bag(tmp_path / "bag", "mcap")
    images = ros.collect(Image, IMAGE_TOPIC, _reliable())
    infos = ros.collect(CameraInfo, INFO_TOPIC, _reliable())
    statics = ros.collect(TFMessage, "/tf_static", _reliable(depth=100, latched=True))
    before = time.time_ns()
    process = ros.start("pose_replay", str(bag.path), "--restamp", "--no-clock", "--wait-for-subscribers", "1")
    n = len(bag.image_stamps_ns)
    ros.spin_until(lambda: len(images.messages) == n and len(infos.messages) == n and statics.messages,
                   what="every replayed message")
    assert process.wait() == 0, process.output()
    after = time.time_ns()
    image_stamps = [_stamp_ns(m.header.stamp) for m in images.messages]
    assert all(before <= s <= after for s in image_stamps)
    assert image_stamps == sorted(image_stamps) and len(set(image_stamps)) == n
    # 10 Hz recording at rate 1: new stamps about 100 ms apart, like the recorded ones.
    gaps_ms = [(b - a) / 1e6 for a, b in zip(image_stamps, image_stamps[1:])]
    assert all(80.0 <= g <= 200.0 for g in gaps_ms), gaps_ms
    assert [_stamp_ns(m.header.stamp) for m in infos.messages] == image_stamps  # same recorded stamp, same new one
    assert [bytes(m.data) for m in images.messages] == bag.image_bytes
    assert {_stamp_ns(t.header.stamp) for t in statics.messages[0].transforms} == {T0_NS}  # no header first: untouched
