"""Check that the project venv has what pose_node needs (run by scripts/setup.sh).

Exits non-zero with a message naming what is missing. Does not start any ROS node.
"""
from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path

# RIHS01 type hash of tf2_msgs/msg/TFMessage as real tf2 nodes (Humble..Rolling) announce it.
# Equal to rosbags' Jazzy/Kilted typestores and to upstream's generated type description.
OFFICIAL_TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"

CONSOLE_SCRIPTS = (
    "pose_scene", "pose_eval", "pose_render_bench", "pose_metrics_bench", "pose_onboard", "pose_demo", "pose_replay",
    "pose_detection_bench", "pose_train_rgb_proposals", "pose_train", "pose_export", "pose_correspondence_bench",
    "pose_node",
)


def type_hash_from_share(package: str, interface: str) -> str | None:
    """Return the RIHS01 hash that the rosidl build recorded for ``package/msg/interface``."""
    import ament_index_python

    try:
        share = Path(ament_index_python.get_package_share_directory(package))
    except ament_index_python.PackageNotFoundError:
        return None
    description = share / "msg" / f"{interface}.json"
    if not description.is_file():
        return None
    data = json.loads(description.read_text())
    wanted = f"{package}/msg/{interface}"
    for entry in data.get("type_hashes", []):
        if entry.get("type_name") == wanted:
            return entry.get("hash_string")
    return None


def main() -> int:
    problems: list[str] = []
    try:
        import rclpy  # noqa: F401
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401
        from geometry_msgs.msg import TransformStamped  # noqa: F401
        from rosgraph_msgs.msg import Clock  # noqa: F401
        from sensor_msgs.msg import CameraInfo, Image  # noqa: F401
        from tf2_msgs.msg import TFMessage  # noqa: F401
        from vision_msgs.msg import Detection3DArray  # noqa: F401
        from visualization_msgs.msg import MarkerArray  # noqa: F401
    except ImportError as exc:
        hint = ""
        if os.environ.get("ROS_DISTRO"):
            distro = os.environ["ROS_DISTRO"]
            hint = (f" (with the sourced ROS 2: sudo apt install ros-{distro}-tf2-msgs "
                    f"ros-{distro}-vision-msgs ros-{distro}-diagnostic-msgs)")
        problems.append(f"ROS 2 import failed: {exc}{hint}")

    for module in ("torch", "moderngl", "rosbags", "pose_node"):
        try:
            __import__(module)
        except ImportError as exc:
            problems.append(f"import {module} failed: {exc}")

    tf_hash = type_hash_from_share("tf2_msgs", "TFMessage")
    if tf_hash is not None and tf_hash != OFFICIAL_TFMESSAGE_HASH:
        problems.append(
            f"tf2_msgs/msg/TFMessage hash {tf_hash} != official {OFFICIAL_TFMESSAGE_HASH}")

    bin_dir = Path(sysconfig.get_path("scripts"))
    missing = [name for name in CONSOLE_SCRIPTS if not (bin_dir / name).exists()]
    if missing:
        problems.append(f"console scripts missing from {bin_dir}: {', '.join(missing)}")

    for problem in problems:
        print(f"[setup] verify: {problem}", file=sys.stderr)
    if not problems:
        print(f"[setup] verify: ok (TFMessage {tf_hash or 'from system ROS'})", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
