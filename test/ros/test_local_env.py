"""The local-only ROS environment (no ROS installation needed)."""
import xml.etree.ElementTree as ET

import pytest

from pose_node.ros.local_env import (
    MAX_DOMAIN_ID,
    MIN_DOMAIN_ID,
    PROFILE_FILE,
    apply_local_ros_environment,
    local_ros_environment,
    random_domain_id,
)

NS = {"dds": "http://www.eprosima.com"}


def test_environment_confines_discovery_to_localhost():
    env = local_ros_environment(domain_id=42)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["ROS_STATIC_PEERS"] == ""
    assert env["ROS_DOMAIN_ID"] == "42"
    assert env["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp"
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE_FILE)


def test_random_domain_is_never_the_default_domain():
    ids = {int(local_ros_environment()["ROS_DOMAIN_ID"]) for _ in range(500)}
    assert 0 not in ids
    assert min(ids) >= MIN_DOMAIN_ID and max(ids) <= MAX_DOMAIN_ID
    assert len(ids) > 50  # drawn, not fixed
    assert MIN_DOMAIN_ID <= random_domain_id() <= MAX_DOMAIN_ID


@pytest.mark.parametrize("bad", [0, -1, MAX_DOMAIN_ID + 1, 232])
def test_out_of_range_domain_is_rejected(bad):
    with pytest.raises(ValueError, match="domain_id"):
        local_ros_environment(domain_id=bad)


def test_apply_keeps_a_valid_domain_only_when_asked_and_overrides_discovery():
    environ = {"ROS_DOMAIN_ID": "7", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    written = apply_local_ros_environment(environ=environ, keep_existing_domain=True)
    assert environ["ROS_DOMAIN_ID"] == "7"
    assert environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert written["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE_FILE)
    # By default a run gets its own domain: a demo started in a robot's shell must not join it.
    domains = set()
    for _ in range(20):
        environ = {"ROS_DOMAIN_ID": "7"}
        apply_local_ros_environment(environ=environ)
        domains.add(environ["ROS_DOMAIN_ID"])
    assert domains != {"7"}


@pytest.mark.parametrize("existing", ["0", "abc", "500", ""])
def test_apply_replaces_an_unsafe_domain(existing):
    environ = {"ROS_DOMAIN_ID": existing}
    apply_local_ros_environment(environ=environ, keep_existing_domain=True)
    assert MIN_DOMAIN_ID <= int(environ["ROS_DOMAIN_ID"]) <= MAX_DOMAIN_ID


def test_session_runs_on_its_own_domain(local_ros_env):
    import os

    assert os.environ["ROS_DOMAIN_ID"] == local_ros_env["ROS_DOMAIN_ID"] != "0"
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_profile_is_shared_memory_only_with_large_segments():
    root = ET.parse(PROFILE_FILE).getroot()
    descriptors = root.findall(
        "dds:profiles/dds:transport_descriptors/dds:transport_descriptor", NS)
    assert [d.findtext("dds:type", namespaces=NS) for d in descriptors] == ["SHM"]
    shm = descriptors[0]
    assert int(shm.findtext("dds:segment_size", namespaces=NS)) == 16 * 1024 * 1024
    assert int(shm.findtext("dds:maxMessageSize", namespaces=NS)) == 4 * 1024 * 1024

    participant = root.find("dds:profiles/dds:participant", NS)
    assert participant.get("is_default_profile") == "true"
    assert participant.findtext("dds:rtps/dds:useBuiltinTransports", namespaces=NS) == "false"
    assert participant.findtext("dds:rtps/dds:userTransports/dds:transport_id", namespaces=NS) == \
        shm.findtext("dds:transport_id", namespaces=NS)


def test_command_line_runs_a_command_inside_the_environment(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "pose_node.ros.local_env", "--", sys.executable, "-c",
         "import os; e = os.environ; "
         "print(e['ROS_AUTOMATIC_DISCOVERY_RANGE'], e['ROS_DOMAIN_ID'])"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert out[0] == "LOCALHOST"
    assert MIN_DOMAIN_ID <= int(out[1]) <= MAX_DOMAIN_ID


def _run_local_env(env_domain: str | None, *command: str):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ROS_DOMAIN_ID"}
    if env_domain is not None:
        env["ROS_DOMAIN_ID"] = env_domain
    return subprocess.run([sys.executable, "-m", "pose_node.ros.local_env", *command], env=env,
                          capture_output=True, text=True)


def test_command_line_keeps_an_explicit_domain_and_rejects_a_bad_one():
    import sys

    show = ["--", sys.executable, "-c", "import os; print(os.environ['ROS_DOMAIN_ID'])"]
    assert _run_local_env("7", *show).stdout.split() == ["7"]
    assert "export ROS_DOMAIN_ID=7" in _run_local_env("7").stdout
    unset = _run_local_env(None, *show)
    assert MIN_DOMAIN_ID <= int(unset.stdout) <= MAX_DOMAIN_ID
    for bad in ("0", "150", "seven"):
        result = _run_local_env(bad, *show)
        assert result.returncode == 2 and f"ROS_DOMAIN_ID={bad!r} is set" in result.stderr and not result.stdout
