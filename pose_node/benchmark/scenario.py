"""Benchmark scenarios: a synthetic workcell per configuration, generated once and cached.

A scenario is a ``pose_scene`` workcell (procedural objects, one arrangement of ``frames`` frames
that differ by light and sensor noise) with ``cameras`` cameras at one resolution. It is written
under ``<root>/<key>`` where the key hashes everything the workcell depends on, so a second
benchmark of the same configuration reuses it (``.bench_scenario.json`` records the
configuration; a folder without it, or with another one, is generated anew).

Generation runs ``pose_scene`` in a child process: it renders with OpenGL and holds every image
at once, and the benchmark's peak-memory figure must not include that.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from pose_node.core.errors import InvalidInputError, PoseNodeError
from pose_node.core.types import View

logger = logging.getLogger(__name__)

#: Resolution name -> (width, height), pixels.
RESOLUTIONS: dict[str, tuple[int, int]] = {"vga": (640, 480), "720p": (1280, 720)}
DEFAULT_ROOT = Path("out/bench_perf")
SIGNATURE_FILE = ".bench_scenario.json"
#: Bump when the generated content changes for the same configuration.
SCENARIO_VERSION = 1
MAX_CAMERAS = 8  # LayoutConfig's limit


@dataclass(frozen=True)
class ScenarioConfig:
    """What the benchmark's workcell contains.

    Attributes:
        cameras: calibrated cameras around the table (1..8; the issue's range is 1-6).
        objects: distinct procedural objects on the table, one instance each.
        resolution: a key of :data:`RESOLUTIONS`.
        frames: frames recorded (the benchmark cycles through them).
        seed: workcell seed (layout, objects ``make_procedural_objects(objects, seed)``, noise).
        frame_rate_hz: frame rate of the recorded stamps (the bag's rate for replays).
        bag: also write the rosbag2 (replay throughput needs it).
    """

    cameras: int = 3
    objects: int = 5
    resolution: str = "vga"
    frames: int = 3
    seed: int = 0
    frame_rate_hz: float = 10.0
    bag: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.cameras, bool) or not isinstance(self.cameras, int) or not 1 <= self.cameras <= MAX_CAMERAS:
            raise InvalidInputError(f"ScenarioConfig.cameras: expected an integer in 1..{MAX_CAMERAS}, got {self.cameras!r}")
        if isinstance(self.objects, bool) or not isinstance(self.objects, int) or self.objects < 1:
            raise InvalidInputError(f"ScenarioConfig.objects: expected an integer >= 1, got {self.objects!r}")
        if self.resolution not in RESOLUTIONS:
            raise InvalidInputError(f"ScenarioConfig.resolution: expected one of {', '.join(RESOLUTIONS)}, "
                                    f"got {self.resolution!r}")
        if isinstance(self.frames, bool) or not isinstance(self.frames, int) or self.frames < 1:
            raise InvalidInputError(f"ScenarioConfig.frames: expected an integer >= 1, got {self.frames!r}")
        if not self.frame_rate_hz > 0:
            raise InvalidInputError(f"ScenarioConfig.frame_rate_hz: expected > 0 Hz, got {self.frame_rate_hz!r}")

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) of every camera, pixels."""
        return RESOLUTIONS[self.resolution]

    def to_json(self) -> dict:
        return {**asdict(self), "version": SCENARIO_VERSION}

    def key(self) -> str:
        """Folder name under the cache root: a short hash of :meth:`to_json`."""
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]
        return f"c{self.cameras}_o{self.objects}_{self.resolution}_{digest}"

    def pose_scene_args(self, out_dir: Path) -> list[str]:
        """``pose_scene`` arguments that generate this scenario into ``out_dir``."""
        width, height = self.size_px
        return ["--out", str(out_dir), "--objects", "procedural", "--num-objects", str(self.objects), "--max-instances", "1",
                "--scenes", "1", "--frames-per-scene", str(self.frames), "--cameras", str(self.cameras),
                "--width", str(width), "--height", str(height), "--frame-rate", repr(float(self.frame_rate_hz)),
                "--seed", str(self.seed), "--bag" if self.bag else "--no-bag", "--overwrite"]


class ScenarioGenerationError(PoseNodeError):
    """``pose_scene`` failed (no headless OpenGL, objects that do not fit the table, ...); the
    message carries its output."""


def scenario_dir(config: ScenarioConfig, root: Path = DEFAULT_ROOT, out_dir: Path | None = None) -> Path:
    """Where the scenario lives: ``out_dir`` if given, else ``root / config.key()``."""
    return Path(out_dir) if out_dir is not None else Path(root) / config.key()


def ensure_scenario(config: ScenarioConfig, root: Path = DEFAULT_ROOT, out_dir: Path | None = None) -> Path:
    """The scenario's folder, generated (in a child process) unless it already holds this configuration.

    Raises:
        ScenarioGenerationError: ``pose_scene`` failed (no headless OpenGL, too many objects for the table, ...).
    """
    directory = scenario_dir(config, root, out_dir)
    signature = directory / SIGNATURE_FILE
    wanted = json.dumps(config.to_json(), sort_keys=True)
    if signature.is_file() and signature.read_text() == wanted:
        return directory
    if signature.exists():
        signature.unlink()  # a half-overwritten folder must never look valid
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pose_node.scene.cli", *config.pose_scene_args(directory)]
    logger.info("generating scenario %s", directory)
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ScenarioGenerationError(f"pose_scene exited with {done.returncode} for {directory}:\n"
                                      f"{done.stdout[-2000:]}{done.stderr[-4000:]}")
    signature.write_text(wanted)
    return directory


def load_frames(directory: Path, config: ScenarioConfig, *, with_depth: bool) -> list[list[View]]:
    """The scenario's frames as views, ``[frame][camera]``, cameras named as in the workcell (``cam0`` ...).

    Args:
        with_depth: attach depth (float32 metres) to every view (RGB-D mode).
    Returns:
        ``frames`` lists of ``cameras`` views each; ``camera.T_world_camera`` is set.
    Raises:
        InvalidInputError: the folder holds another number of cameras or frames than ``config``.
    """
    from pose_node.datasets.bop import BopDataset
    from pose_node.scene.generator import read_scene_world

    world = read_scene_world(directory / "scene_world.json")
    names = [c["name"] for c in world["cameras"]]
    frames = world["scenes"][0]["frames"]
    if len(names) != config.cameras or len(frames) != config.frames:
        raise InvalidInputError(f"load_frames: {directory} has {len(names)} cameras and {len(frames)} frames, "
                                f"expected {config.cameras} and {config.frames}")
    dataset = BopDataset(directory)
    scene_id = world["scenes"][0]["scene_id"]
    out = []
    for frame in frames:
        out.append([dataset.view(scene_id, im_id, with_depth=with_depth, name=name)
                    for name, im_id in zip(names, frame["im_ids"])])
    return out


__all__ = ["DEFAULT_ROOT", "RESOLUTIONS", "ScenarioConfig", "ScenarioGenerationError", "ensure_scenario", "load_frames", "scenario_dir"]
