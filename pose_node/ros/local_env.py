"""Keep pose_node's own ROS 2 processes (tests, demo, benchmarks) on this machine.

Kilted ignores ``ROS_LOCALHOST_ONLY`` and, by default, sends DDS discovery as multicast out of
every network interface. The environment built here confines discovery to localhost, puts
every run on its own domain, and selects a Fast DDS profile whose only transport is shared
memory (``fastdds_shm_only.xml``), so no DDS packet leaves the machine.

The variables are read when rclpy creates its context, so apply them before ``rclpy.init()``
(ideally before importing rclpy). The node itself never calls this: a deployed node follows
the robot's environment.

Command line (used by the Makefile)::

    python -m pose_node.ros.local_env                 # print ``export NAME=value`` lines
    python -m pose_node.ros.local_env -- CMD [ARGS]   # run CMD inside that environment

The command line keeps a ``ROS_DOMAIN_ID`` that is already set (``ROS_DOMAIN_ID=7 python -m
pose_node.ros.local_env -- pose_replay ...`` feeds a node started on domain 7) and draws a random
one only when it is unset or empty; a set value outside [1, 101] is an error (exit status 2), never
silently replaced.
"""
from __future__ import annotations

import os
import random
import shlex
import sys
from pathlib import Path

PROFILE_FILE = Path(__file__).resolve().with_name("fastdds_shm_only.xml")

# Domain ids that are safe on every host: Fast DDS maps domain d to UDP ports 7400 + 250 d, and
# ids above 101 collide with the Linux ephemeral port range (32768+). 0 is the default domain
# every stray ROS process uses, so it is never picked.
MIN_DOMAIN_ID = 1
MAX_DOMAIN_ID = 101


def random_domain_id(rng: random.Random | None = None) -> int:
    """Return a domain id drawn uniformly from [MIN_DOMAIN_ID, MAX_DOMAIN_ID]."""
    return (rng or random.SystemRandom()).randint(MIN_DOMAIN_ID, MAX_DOMAIN_ID)


def local_ros_environment(domain_id: int | None = None) -> dict[str, str]:
    """Return the environment variables that keep ROS 2 traffic on this machine.

    Args:
        domain_id: ROS_DOMAIN_ID to use, in [1, 101]; ``None`` draws a random one.

    Returns:
        ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, ``ROS_STATIC_PEERS`` empty,
        ``ROS_DOMAIN_ID``, ``RMW_IMPLEMENTATION=rmw_fastrtps_cpp`` and
        ``FASTDDS_DEFAULT_PROFILES_FILE`` (the shared-memory-only profile).

    Raises:
        ValueError: if ``domain_id`` is outside [1, 101].
        FileNotFoundError: if the Fast DDS profile is missing (Fast DDS would silently fall back
            to its default UDP transports).
    """
    if not PROFILE_FILE.is_file():
        raise FileNotFoundError(f"Fast DDS shared-memory profile missing: {PROFILE_FILE} (broken install?)")
    if domain_id is None:
        domain_id = random_domain_id()
    elif not MIN_DOMAIN_ID <= int(domain_id) <= MAX_DOMAIN_ID:
        raise ValueError(
            f"domain_id must be in [{MIN_DOMAIN_ID}, {MAX_DOMAIN_ID}], got {domain_id!r}"
        )
    return {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_STATIC_PEERS": "",
        "ROS_DOMAIN_ID": str(int(domain_id)),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(PROFILE_FILE),
    }


def _ament_prefix_path(environ: dict[str, str] | os._Environ) -> str | None:
    """AMENT_PREFIX_PATH with this venv prepended when the ROS wheels live in it."""
    prefix = sys.prefix
    if not Path(prefix, "share", "ament_index").is_dir():
        return None
    parts = [p for p in environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if prefix in parts:
        return None
    return os.pathsep.join([prefix, *parts])


def apply_local_ros_environment(
    domain_id: int | None = None,
    environ: dict[str, str] | os._Environ | None = None,
    *,
    keep_existing_domain: bool = False,
) -> dict[str, str]:
    """Put the local-only ROS environment into ``environ`` (default ``os.environ``).

    Every run gets its own domain (``domain_id`` or a random one), so a demo or test started in
    a robot's shell cannot talk to that robot's nodes. With ``keep_existing_domain`` a valid
    ``ROS_DOMAIN_ID`` that is already set is kept (``pose_replay``: feed a node running on this
    host in the user's domain). Discovery range, static peers, RMW and the
    Fast DDS profile are always overwritten. With the PyPI ROS wheels, the venv prefix is also
    added to ``AMENT_PREFIX_PATH`` so that ament_index finds the interface packages.

    Args:
        domain_id: domain to use (random when ``None``).
        environ: mapping to update; ``os.environ`` when ``None``.
        keep_existing_domain: keep a valid ``ROS_DOMAIN_ID`` already in ``environ``.

    Returns:
        The variables that were written.
    """
    target = os.environ if environ is None else environ
    existing = target.get("ROS_DOMAIN_ID", "")
    if keep_existing_domain and domain_id is None and existing.isdigit() and MIN_DOMAIN_ID <= int(existing) <= MAX_DOMAIN_ID:
        domain_id = int(existing)
    values = local_ros_environment(domain_id)
    ament = _ament_prefix_path(target)
    if ament is not None:
        values["AMENT_PREFIX_PATH"] = ament
    target.update(values)
    return values


def explicit_domain_id(environ: dict[str, str] | os._Environ) -> int | None:
    """The ``ROS_DOMAIN_ID`` set in ``environ`` (None when unset or empty).

    Raises:
        ValueError: it is set but not an integer in [MIN_DOMAIN_ID, MAX_DOMAIN_ID] (the message
            says why and what to do).
    """
    value = environ.get("ROS_DOMAIN_ID", "").strip()
    if not value:
        return None
    if not value.isdigit() or not MIN_DOMAIN_ID <= int(value) <= MAX_DOMAIN_ID:
        raise ValueError(
            f"ROS_DOMAIN_ID={value!r} is set but local runs use a domain in [{MIN_DOMAIN_ID}, {MAX_DOMAIN_ID}] "
            f"(0 is every stray ROS process's domain; above {MAX_DOMAIN_ID} the DDS ports collide with ephemeral "
            "ports): set one in that range, or unset it for a random one")
    return int(value)


def main(argv: list[str] | None = None) -> int:
    """Print the environment as shell exports, or run ``-- CMD ...`` inside it (module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m pose_node.ros.local_env [-- CMD [ARGS...]]"
    if (args and args[0] != "--") or args == ["--"]:
        print(usage, file=sys.stderr)
        return 2
    try:
        domain_id = explicit_domain_id(os.environ)
    except ValueError as exc:
        print(f"pose_node.ros.local_env: {exc}", file=sys.stderr)
        return 2
    if args:
        apply_local_ros_environment(domain_id)
        os.execvp(args[1], args[1:])
    environ = dict(os.environ)
    for name, value in apply_local_ros_environment(domain_id, environ=environ).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
