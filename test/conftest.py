"""Shared pytest fixtures.

* ``local_ros_env`` (session, autouse): every test session runs ROS 2 local-only (localhost
  discovery, shared-memory transport) on a ROS_DOMAIN_ID of its own, drawn at random.
* ``device``: ``cpu``, plus ``cuda`` when a GPU is present, for tests of batched torch code.
* ``ros``: a harness for ROS tests. It starts nodes as subprocesses with ``--ros-args``
  (remaps, parameters, params files), captures their output, stops them with SIGINT and fails
  the test unless they exit 0; it gives an in-process rclpy node and waits for discovery and
  publisher/subscriber matching with a deadline instead of sleeping.

rclpy is imported only inside the ``ros`` fixture, so the core tests run without ROS.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

if TYPE_CHECKING:
    from pose_node.render.renderer import Renderer

DEFAULT_TIMEOUT_S = 20.0  # discovery usually takes < 0.1 s, but sometimes several seconds
STOP_TIMEOUT_S = 10.0


TEST_DIR = Path(__file__).resolve().parent
# The fast subset (``pytest -m fast``, ``make test-fast``): the ROS-free unit tests of the core, the
# pipeline's types and budget, PnP, association, fusion, metrics and the layering, about half a
# minute on 2 cores. Marked by path, so a test added to these files or folders joins it.
FAST_PATHS = (
    "core/", "pipeline/", "datasets/", "test_layering.py", "correspondence/test_pnp.py", "training/test_pnp_cost.py",
    "refinement/test_association.py",
    "refinement/test_fusion.py", "ros/test_node_config.py", "evaluation/test_metrics.py", "evaluation/test_calibration.py",
    "benchmark/test_stats.py",
)


# Devices for tests of batched torch code: cpu always, cuda where a GPU is present.
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """The torch device a batched-tensor test runs on (``cpu``, plus ``cuda`` when available)."""
    return request.param


def pytest_configure(config: pytest.Config) -> None:
    # lark (used by rosidl_parser, imported with rclpy) imports sre_parse, deprecated in 3.11.
    config.addinivalue_line("filterwarnings", "ignore:module 'sre_:DeprecationWarning")
    config.addinivalue_line("markers", "fast: the fast ROS-free core subset (conftest.FAST_PATHS), under a minute")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            path = item.path.resolve().relative_to(TEST_DIR).as_posix()
        except ValueError:  # a test outside this folder
            continue
        if path.startswith(FAST_PATHS):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Torch on one thread: two OpenMP threads on a CPU shared with other processes can be many
    times slower than one (CI and the dev machine have 2 cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def make_renderer():
    """``make_renderer(width, height, **settings)``: a cached Renderer (skips without EGL)."""
    cache: dict = {}

    from pose_node.core.errors import StageUnavailableError
    from pose_node.render.renderer import Renderer, RenderSettings

    def make(width: int, height: int, **settings) -> Renderer:
        key = (width, height, tuple(sorted(settings.items())))
        if key not in cache:
            renderer = Renderer(width, height, RenderSettings(**settings))
            try:
                renderer.gl_renderer  # creates the context
            except StageUnavailableError as exc:
                pytest.skip(f"headless OpenGL unavailable: {exc}")
            cache[key] = renderer
        return cache[key]

    yield make
    for renderer in cache.values():
        renderer.release()


@pytest.fixture(scope="session")
def make_workcell():
    """``make_workcell(config) -> BopDataset``: generate a workcell (skips without EGL)."""
    from pose_node.core.errors import StageUnavailableError
    from pose_node.datasets.bop import BopDataset
    from pose_node.scene.generator import generate_workcell

    def make(config) -> BopDataset:
        try:
            generate_workcell(config)
        except StageUnavailableError as exc:
            pytest.skip(f"headless OpenGL unavailable: {exc}")
        return BopDataset(config.out_dir)

    return make


@pytest.fixture(scope="session", autouse=True)
def local_ros_env() -> dict[str, str]:
    """Apply the local-only ROS environment with a fresh random domain for this session."""
    from pose_node.ros.local_env import apply_local_ros_environment, random_domain_id

    return apply_local_ros_environment(domain_id=random_domain_id())


def _format_param(value: Any) -> str:
    """Format a parameter value for ``-p name:=value`` (rcl parses it as YAML; JSON is YAML)."""
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)


def _resolve_executable(executable: str) -> str:
    """Find ``executable`` in this interpreter's scripts folder first, then on PATH."""
    if os.sep in executable:
        return executable
    candidate = Path(sysconfig.get_path("scripts")) / executable
    if candidate.exists():
        return str(candidate)
    found = shutil.which(executable)
    if found is None:
        raise FileNotFoundError(
            f"executable {executable!r} not found in {candidate.parent} or PATH")
    return found


def ros_arguments(
    *,
    node_name: str | None = None,
    namespace: str | None = None,
    remap: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
    params_file: str | Path | None = None,
    log_level: str | None = None,
) -> list[str]:
    """Build the ``--ros-args ...`` tail of a node command line (empty if nothing is set)."""
    args: list[str] = []
    if node_name:
        args += ["-r", f"__node:={node_name}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    for source, target in (remap or {}).items():
        args += ["-r", f"{source}:={target}"]
    for name, value in (params or {}).items():
        args += ["-p", f"{name}:={_format_param(value)}"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    if log_level:
        args += ["--log-level", log_level]
    return ["--ros-args", *args] if args else []


class RosProcess:
    """A node running as a subprocess; output goes to a log file read with ``output()``."""

    def __init__(self, argv: list[str], log_path: Path, env: Mapping[str, str], cwd: Path | None):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(env), cwd=cwd,
        )
        self.checked = False  # True once the test looked at the exit status

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def environ(self) -> dict[str, str]:
        """The environment the running process was started with (from /proc/<pid>/environ)."""
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}

    def wait_for_output(self, text: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
        """Wait until ``text`` appears in the output; returns the output."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.output()
            if text in out:
                return out
            if not self.running():
                raise AssertionError(f"{self.argv[0]} exited ({self.returncode}) before printing "
                                     f"{text!r}; output:\n{out}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not printed within {timeout_s} s; output:\n{out}")
            time.sleep(0.02)

    def wait(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
        """Wait for the process to exit by itself; returns its exit status."""
        try:
            code = self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv} still running after {timeout_s} s; output:\n"
                                 f"{self.output()}") from None
        self.checked = True
        self._log.close()
        return code

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Send SIGINT (as Ctrl-C does) and wait; returns the exit status.

        SIGKILL would leave Fast DDS shared-memory segments in /dev/shm, so it is only used
        when the process ignores SIGINT, and then the test fails.
        """
        if self.running():
            self.popen.send_signal(signal.SIGINT)
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.running():
            self.popen.kill()
            self.popen.wait()
        self._log.close()

    def assert_clean_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop with SIGINT and assert exit status 0."""
        code = self.stop(timeout_s)
        assert code == 0, f"{self.argv} exited with {code} after SIGINT; output:\n{self.output()}"


class Inbox:
    """Messages received by a subscription of the harness node (see ``RosHarness.collect``)."""

    def __init__(self) -> None:
        self.messages: list = []
        self.subscription = None


class RosHarness:
    """Subprocess nodes plus one in-process node, all cleaned up after the test.

    Args:
        workdir: folder for the process logs (the test's ``tmp_path``).
    """

    def __init__(self, workdir: Path):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self._rclpy = rclpy
        self.workdir = workdir
        self.processes: list[RosProcess] = []
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self._node = None

    # --- subprocesses -------------------------------------------------------------------------
    def start(
        self,
        command: str | Sequence[str],
        *args: str,
        node_name: str | None = None,
        namespace: str | None = None,
        remap: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        params_file: str | Path | None = None,
        log_level: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> RosProcess:
        """Start a node: ``command`` (console script name, path, or argv list) + ``args``.

        ROS arguments are appended after ``--ros-args``. The process inherits this session's
        local-only ROS environment, plus ``env``.
        """
        argv = [command] if isinstance(command, str) else list(command)
        argv[0] = _resolve_executable(argv[0])
        argv += list(args)
        argv += ros_arguments(node_name=node_name, namespace=namespace, remap=remap,
                              params=params, params_file=params_file, log_level=log_level)
        full_env = dict(os.environ)
        full_env.update({"PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0"})
        full_env.update(env or {})
        log_path = self.workdir / f"{Path(argv[0]).name}-{len(self.processes)}.log"
        process = RosProcess(argv, log_path, full_env, cwd)
        self.processes.append(process)
        return process

    def start_module(self, module: str, *args: str, **kwargs: Any) -> RosProcess:
        """Start ``python -m module args`` with this interpreter (see ``start``)."""
        return self.start([sys.executable, "-m", module], *args, **kwargs)

    # --- in-process node ----------------------------------------------------------------------
    @property
    def node(self):
        """An rclpy node in this test's own context, created on first use."""
        if self._node is None:
            self._node = self._rclpy.create_node("pose_node_test_harness", context=self.context)
            self.executor.add_node(self._node)
        return self._node

    def collect(self, msg_type: type, topic: str, qos: Any = 10) -> Inbox:
        """Subscribe ``topic`` on ``node``; received messages are appended to ``.messages``."""
        inbox = Inbox()
        inbox.subscription = self.node.create_subscription(
            msg_type, topic, inbox.messages.append, qos)
        return inbox

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float = DEFAULT_TIMEOUT_S,
                   what: str = "condition") -> None:
        """Spin the in-process node until ``predicate()`` is true; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout_s} s"
                                     f"{self._process_report()}")
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, duration_s: float) -> None:
        """Spin the in-process node for ``duration_s`` (to drain queues, not to wait for peers)."""
        deadline = time.monotonic() + duration_s
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=min(0.02, max(0.0, deadline - time.monotonic())))

    def wait_for_publishers(self, topic: str, count: int = 1,
                            timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the graph shows ``count`` publishers on ``topic`` (discovery)."""
        self.spin_until(lambda: self.node.count_publishers(topic) >= count, timeout_s,
                        f"{count} publisher(s) on {topic}")

    def wait_for_subscribers(self, topic: str, count: int = 1,
                             timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until the graph shows ``count`` subscribers on ``topic`` (discovery)."""
        self.spin_until(lambda: self.node.count_subscribers(topic) >= count, timeout_s,
                        f"{count} subscriber(s) on {topic}")

    def wait_for_match(self, entity, count: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until a local publisher/subscription is matched (QoS-compatible) ``count`` times."""
        if hasattr(entity, "get_subscription_count"):
            current = entity.get_subscription_count
            what = f"subscription(s) for {entity.topic_name}"
        else:
            current = entity.get_publisher_count
            what = f"publisher(s) for {entity.topic_name}"
        self.spin_until(lambda: current() >= count, timeout_s, f"{count} matched {what}")

    def wait_for_node(self, name: str, namespace: str = "/",
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until node ``namespace/name`` is visible in the graph."""
        self.spin_until(lambda: (name, namespace) in self.node.get_node_names_and_namespaces(),
                        timeout_s, f"node {namespace.rstrip('/')}/{name}")

    # --- cleanup ------------------------------------------------------------------------------
    def _process_report(self) -> str:
        lines = []
        for process in self.processes:
            state = "running" if process.running() else f"exited {process.returncode}"
            lines.append(f"\n--- {' '.join(process.argv)} ({state}):\n{process.output()}")
        return "".join(lines)

    def close(self) -> None:
        """Stop every process with SIGINT, then fail if any did not exit 0."""
        failures = []
        try:
            for process in self.processes:
                if process.running() or not process.checked:
                    try:
                        code = process.stop()
                    except AssertionError as exc:  # ignored SIGINT: killed; keep stopping the rest
                        failures.append(str(exc))
                        continue
                    if code != 0:
                        failures.append(f"{' '.join(process.argv)} exited with {code}:\n"
                                        f"{process.output()}")
        finally:
            if self._node is not None:
                self.executor.remove_node(self._node)
                self._node.destroy_node()
            self.executor.shutdown()
            self._rclpy.try_shutdown(context=self.context)
        if failures:
            pytest.fail("node(s) did not exit cleanly:\n" + "\n".join(failures))


@pytest.fixture
def ros(tmp_path: Path):
    """ROS test harness (see ``RosHarness``); skips when rclpy is not installed."""
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; run `make setup`")
    harness = RosHarness(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
