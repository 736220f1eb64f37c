"""Path-traced (Mitsuba 3) rendering of workcell views: materials, lights, cameras, render cache.

Mitsuba (``mitsuba==3.9.1``, CPU ``scalar_rgb`` variant) is imported on first render only, so the
node and the rasterized generator never load it. Scenes are built from numpy arrays in memory
(``mi.Mesh`` buffers, ``mi.Bitmap`` textures); nothing goes through files.

Camera convention. Mitsuba's perspective camera looks along +z with +x left and +y up; an OpenCV
optical frame has x right, y down, z forward, so the sensor's ``to_world`` is ``T_world_camera @
diag(-1, -1, 1, 1)``. Mitsuba pixel ``i`` covers ``[i, i + 1)`` (centre ``i + 0.5``) while OpenCV
and :mod:`pose_node.render` put pixel centres at integers, so ``u_mitsuba = u_opencv + 0.5``:
``fov`` (along x) comes from ``fx`` and the principal point offsets are
``((W - 1) / 2 - cx) / W`` and ``((H - 1) / 2 - cy) / H``
(both signs checked by ``test/scene/test_photoreal.py``). Mitsuba pixels are square (fy = fx):
when ``fy != fx`` the whole scene is stretched along the camera's y axis by ``fy / fx``
(:func:`anisotropy_warp`, a <= 1-2 % stretch for real cameras), which puts every point exactly
where ``K`` projects it, keeps depths and occlusions, and needs no resampling of the image; the
only approximation is that the lighting sees the slightly stretched scene.

Each view's linear image is cached on disk under a SHA-256 of everything that determines it
(geometry, poses, materials, lights, camera, quality, seed, Mitsuba version), stored as float16;
fresh renders go through the same float16 rounding, so a cache hit and a miss give identical bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.geometry import invert_rigid
from pose_node.core.types import Camera, ObjectModel
from pose_node.onboarding.cache import CACHE_ENV_VAR, DEFAULT_CACHE_ROOT, mesh_content_hash
from pose_node.scene.clutter import ClutterConfig
from pose_node.scene.sensor_model import (
    CameraModelConfig, DepthSensorConfig, blackbody_rgb, luminance, srgb_decode,
)

logger = logging.getLogger(__name__)

MITSUBA_VARIANT = "scalar_rgb"
#: Bump when the cached arrays or the key's meaning change.
RENDER_CACHE_VERSION = 2


@dataclass(frozen=True)
class RenderQuality:
    """Path tracer settings. spp: samples per pixel; max_depth: longest path (Mitsuba ``max_depth``)."""

    spp: int
    max_depth: int


QUALITY_PRESETS: dict[str, RenderQuality] = {
    "preview": RenderQuality(spp=4, max_depth=3),
    "default": RenderQuality(spp=16, max_depth=5),
    "high": RenderQuality(spp=128, max_depth=8),
}


@dataclass(frozen=True)
class LightingConfig:
    """Ranges of the randomized lights (one draw per scene, jittered per frame).

    Attributes:
        colour_temperature_k: (min, max) of every light's blackbody colour.
        num_area_lights, num_point_lights, num_spot_lights: (min, max) counts, both included.
        light_height_m: (min, max) height of area, point and spot lights above the table top.
        light_radius_m: (min, max) horizontal distance of point and spot lights from the table centre.
        area_light_size_m: (min, max) side of the rectangular area lights.
        irradiance_range: each light's irradiance at the table centre, in units of the sky's
            (an unoccluded sky of radiance 1 gives pi).
        environment_scale: (min, max) of the sky radiance.
        num_windows: (min, max) bright windows in the environment map.
        window_gain: (min, max) window radiance relative to the sky.
        per_frame_jitter_m: point and spot lights move by up to this between frames.
        environment_size_px: (width, height) of the lat-long environment map.
    """

    colour_temperature_k: tuple[float, float] = (2700.0, 6500.0)
    num_area_lights: tuple[int, int] = (1, 2)
    num_point_lights: tuple[int, int] = (0, 2)
    num_spot_lights: tuple[int, int] = (0, 1)
    light_height_m: tuple[float, float] = (1.0, 2.0)
    light_radius_m: tuple[float, float] = (0.3, 1.5)
    area_light_size_m: tuple[float, float] = (0.3, 1.0)
    irradiance_range: tuple[float, float] = (1.0, 5.0)
    environment_scale: tuple[float, float] = (0.3, 1.5)
    num_windows: tuple[int, int] = (1, 3)
    window_gain: tuple[float, float] = (4.0, 15.0)
    per_frame_jitter_m: float = 0.02
    environment_size_px: tuple[int, int] = (128, 64)


@dataclass(frozen=True)
class PhotorealConfig:
    """Photoreal rendering of :func:`pose_node.scene.generator.generate_workcell`.

    Attributes:
        quality: a key of :data:`QUALITY_PRESETS`.
        cache_dir: render cache (None: ``$POSE_NODE_CACHE/photoreal`` or ``~/.cache/pose_node/photoreal``).
        texture_size_px: side of the procedural textures of the walls and the floor.
        camera: colour camera model ranges. depth: depth camera model.
        lighting: light ranges. clutter: room and distractors.
    """

    quality: str = "default"
    cache_dir: Path | None = None
    texture_size_px: int = 512
    camera: CameraModelConfig = field(default_factory=CameraModelConfig)
    depth: DepthSensorConfig = field(default_factory=DepthSensorConfig)
    lighting: LightingConfig = field(default_factory=LightingConfig)
    clutter: ClutterConfig = field(default_factory=ClutterConfig)

    def __post_init__(self) -> None:
        if self.quality not in QUALITY_PRESETS:
            raise InvalidInputError(f"PhotorealConfig.quality: expected one of {sorted(QUALITY_PRESETS)}, got {self.quality!r}")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        if self.texture_size_px < 8:
            raise InvalidInputError(f"PhotorealConfig.texture_size_px: must be >= 8, got {self.texture_size_px}")

    @property
    def render_quality(self) -> RenderQuality:
        return QUALITY_PRESETS[self.quality]

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir.expanduser()
        return Path(os.environ.get(CACHE_ENV_VAR) or str(DEFAULT_CACHE_ROOT)).expanduser() / "photoreal"


# ---------------------------------------------------------------------------------------------
# Materials
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SurfaceMaterial:
    """A principled BSDF. The base colour is the model's texture, else its vertex colours, else ``colour``.

    Attributes:
        colour: (3,) linear RGB base colour of meshes with neither texture nor vertex colours.
        brightness: multiplies the base colour (< 1: dark objects).
        roughness, specular, metallic: Mitsuba ``principled`` parameters in [0, 1].
    """

    colour: tuple[float, float, float]
    brightness: float
    roughness: float
    specular: float
    metallic: float

    @property
    def glossy(self) -> bool:
        return self.roughness < 0.25 or self.metallic > 0.5


MATTE, GLOSSY, METAL, DARK = "matte", "glossy", "metal", "dark"
_FINISHES = (MATTE, GLOSSY, METAL, DARK)
_FINISH_PROBABILITIES = (0.45, 0.3, 0.1, 0.15)


def sample_material(rng: np.random.Generator, finish: str | None = None) -> SurfaceMaterial:
    """A random finish: matte, glossy (plastic, varnish), metal or dark (black plastic, rubber)."""
    finish = finish or _FINISHES[int(rng.choice(len(_FINISHES), p=_FINISH_PROBABILITIES))]
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(30, 220), rng.uniform(80, 240)]]])
    colour = tuple(float(c) for c in srgb_decode(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] / 255.0))
    if finish == MATTE:
        return SurfaceMaterial(colour, 1.0, float(rng.uniform(0.55, 0.95)), float(rng.uniform(0.2, 0.4)), 0.0)
    if finish == GLOSSY:
        return SurfaceMaterial(colour, 1.0, float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.5, 0.9)), 0.0)
    if finish == METAL:
        return SurfaceMaterial(colour, 1.0, float(rng.uniform(0.15, 0.4)), 0.5, float(rng.uniform(0.6, 1.0)))
    if finish == DARK:
        return SurfaceMaterial(colour, float(rng.uniform(0.05, 0.2)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.3, 0.7)), 0.0)
    raise InvalidInputError(f"sample_material: unknown finish {finish!r}, expected one of {_FINISHES}")


#: Vertex colours spanning fewer levels than this (per channel) count as "no colour" (a grey or
#: constant-colour export of an untextured CAD model).
UNIFORM_COLOUR_LEVELS = 8


def is_untextured(model: ObjectModel) -> bool:
    """Neither a usable texture nor varying vertex colours."""
    if model.texture is not None and model.uv is not None:
        return False
    colours = model.vertex_colors
    return colours is None or int(np.ptp(np.asarray(colours, np.int32), axis=0).max()) < UNIFORM_COLOUR_LEVELS


def procedural_vertex_colours(vertices_m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A solid (3D) two-colour pattern, stripes or blotches, sampled at the vertices (no uv needed).

    Args:
        vertices_m: (N, 3) object frame, metres.
    Returns:
        (N, 3) uint8 sRGB.
    """
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(40, 220), rng.uniform(60, 235)] for _ in range(2)]])
    a, b = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float64)
    p = np.asarray(vertices_m, np.float64)
    waves = 1 if rng.uniform() < 0.5 else 3  # stripes | blotches
    t = np.zeros(len(p))
    for _ in range(waves):
        direction = rng.normal(size=3)
        frequency = rng.uniform(8.0, 40.0)  # cycles per metre
        t += np.sin(2 * np.pi * frequency * p @ (direction / np.linalg.norm(direction)) + rng.uniform(0, 2 * np.pi))
    t = np.clip(0.5 + (2.0 if waves == 1 else 0.8) * t / waves, 0.0, 1.0)[:, None]
    return np.clip(np.rint(a * (1 - t) + b * t), 0, 255).astype(np.uint8)


def appearance_model(model: ObjectModel, rng: np.random.Generator, procedural_probability: float = 0.5) -> ObjectModel:
    """The model as the path tracer draws it: textured or coloured models unchanged; untextured ones
    (:func:`is_untextured`) get a procedural solid pattern with ``procedural_probability``, else no
    colours (their material's plain colour). Geometry is never changed.
    """
    if not is_untextured(model):
        return model
    if rng.uniform() < procedural_probability:
        return replace(model, vertex_colors=procedural_vertex_colours(model.vertices, rng))
    return replace(model, vertex_colors=None)


# ---------------------------------------------------------------------------------------------
# Lights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Light:
    """One light, world frame.

    Attributes:
        kind: "area" (a rectangle facing ``target``), "point" or "spot" (aimed at ``target``).
        position_m: (3,) centre. target_m: (3,) where it points (unused for points).
        rgb: (3,) linear colour x strength (area: radiance; point, spot: intensity, W/sr-like units).
        size_m: rectangle sides (area lights). cutoff_deg: cone half-angle (spots).
    """

    kind: str
    position_m: tuple[float, float, float]
    target_m: tuple[float, float, float]
    rgb: tuple[float, float, float]
    size_m: tuple[float, float] = (0.0, 0.0)
    cutoff_deg: float = 0.0


@dataclass(frozen=True)
class LightSetup:
    """All lights of one frame: a lat-long HDR environment (z up) plus local lights.

    Attributes:
        environment: (He, We, 3) float32 linear radiance, row 0 = zenith, columns = azimuth.
        environment_yaw_deg: rotation of the environment about the world z axis.
        lights: the local lights.
    """

    environment: np.ndarray
    environment_yaw_deg: float
    lights: tuple[Light, ...]


def environment_map(rng: np.random.Generator, config: LightingConfig) -> np.ndarray:
    """A procedural sky: zenith-to-horizon gradient, darker ground, a few bright windows.

    Returns:
        (He, We, 3) float32 linear radiance, row 0 = zenith (lat-long).
    """
    width, height = config.environment_size_px
    polar = (np.arange(height) + 0.5) / height * np.pi  # 0 = zenith
    azimuth = (np.arange(width) + 0.5) / width * 2.0 * np.pi
    zenith = blackbody_rgb(rng.uniform(7000.0, 15000.0)) * rng.uniform(0.6, 1.0)
    horizon = blackbody_rgb(rng.uniform(4500.0, 7000.0)) * rng.uniform(1.0, 1.6)
    ground = np.full(3, rng.uniform(0.05, 0.25)) * blackbody_rgb(rng.uniform(3000.0, 5000.0))
    t = np.clip(polar / (np.pi / 2.0), 0.0, 1.0)[:, None] ** 2
    sky = np.where((polar < np.pi / 2.0)[:, None], (1.0 - t) * zenith + t * horizon, ground)
    env = np.broadcast_to(sky[:, None, :], (height, width, 3)).copy()
    for _ in range(int(rng.integers(config.num_windows[0], config.num_windows[1] + 1))):
        az0, az_width = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.6)
        el0, el1 = sorted(rng.uniform(np.deg2rad(3.0), np.deg2rad(50.0), 2))
        elevation = np.pi / 2.0 - polar
        rows = (elevation >= el0) & (elevation <= max(el1, el0 + 0.1))
        cols = np.abs((azimuth - az0 + np.pi) % (2 * np.pi) - np.pi) < az_width / 2.0
        window = blackbody_rgb(rng.uniform(5000.0, 6500.0)) * rng.uniform(*config.window_gain)
        env[np.ix_(rows, cols)] = window
    return (env * rng.uniform(*config.environment_scale)).astype(np.float32)


def sample_lights(rng: np.random.Generator, config: LightingConfig, centre_m: np.ndarray | None = None) -> LightSetup:
    """Environment plus area, point and spot lights around ``centre_m`` (default: the table centre)."""
    centre = np.zeros(3) if centre_m is None else np.asarray(centre_m, float)
    lights = []
    counts = {kind: int(rng.integers(lo, hi + 1)) for kind, (lo, hi) in
              (("area", config.num_area_lights), ("point", config.num_point_lights), ("spot", config.num_spot_lights))}
    for kind, count in counts.items():
        for _ in range(count):
            angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(*config.light_radius_m)
            position = centre + [radius * np.cos(angle), radius * np.sin(angle), rng.uniform(*config.light_height_m)]
            if kind == "area":
                position[:2] = centre[:2] + rng.uniform(-0.4, 0.4, 2)  # ceiling panels: above the table
            target = centre + np.append(rng.uniform(-0.15, 0.15, 2), 0.0)
            distance2 = float(np.sum((position - target) ** 2))
            irradiance = rng.uniform(*config.irradiance_range)
            colour = blackbody_rgb(rng.uniform(*config.colour_temperature_k))
            size = (0.0, 0.0)
            cutoff = 0.0
            if kind == "area":
                size = tuple(float(s) for s in rng.uniform(*config.area_light_size_m, 2))
                strength = irradiance * distance2 / (size[0] * size[1])  # E ~ L A / d^2 near the axis
            else:
                strength = irradiance * distance2  # E = I / d^2
                if kind == "spot":
                    cutoff = float(rng.uniform(20.0, 40.0))
            lights.append(Light(kind, tuple(float(p) for p in position), tuple(float(t) for t in target),
                                tuple(float(c) for c in colour * strength), size, cutoff))
    return LightSetup(environment_map(rng, config), float(rng.uniform(0, 360)), tuple(lights))


def jitter_lights(setup: LightSetup, rng: np.random.Generator, config: LightingConfig) -> LightSetup:
    """The frame-to-frame change of a static scene: point and spot lights move slightly."""
    moved = []
    for light in setup.lights:
        if light.kind == "area":
            moved.append(light)
            continue
        position = np.asarray(light.position_m) + rng.uniform(-1, 1, 3) * config.per_frame_jitter_m
        moved.append(Light(light.kind, tuple(float(p) for p in position), light.target_m, light.rgb, light.size_m, light.cutoff_deg))
    return LightSetup(setup.environment, setup.environment_yaw_deg, tuple(moved))


# ---------------------------------------------------------------------------------------------
# Scene description and cache key
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotorealShape:
    """One mesh of a path-traced scene.

    Attributes:
        model: geometry and base colour source (texture: OpenGL uv, v = 0 at the bottom row).
        T_world_object: (4, 4) metres.
        material: its BSDF.
        label: the instance label this shape has in the rasterized geometry pass (> 0).
    """

    model: ObjectModel
    T_world_object: np.ndarray
    material: SurfaceMaterial
    label: int


@dataclass(frozen=True)
class PhotorealScene:
    """Everything the path tracer draws for one frame: shapes and lights."""

    shapes: tuple[PhotorealShape, ...]
    lights: LightSetup

    def glossy_labels(self, num_labels: int) -> np.ndarray:
        """(num_labels,) bool: the shape with that label is glossy (label 0 = nothing), for the depth model."""
        glossy = np.zeros(num_labels, bool)
        for shape in self.shapes:
            if shape.label < num_labels:
                glossy[shape.label] = shape.material.glossy
        return glossy


def _array_digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def view_cache_key(scene: PhotorealScene, camera: Camera, quality: RenderQuality, seed: int, mitsuba_version: str,
                   mesh_hashes: dict[int, tuple[ObjectModel, str]] | None = None) -> str:
    """Hex SHA-256 over everything that determines a view's linear render.

    Args:
        mesh_hashes: memo of :func:`mesh_content_hash` by ``id(model)`` (filled in; hashing large
            textures per view would be slow). It holds the model too, so an id is never reused.
    """
    memo = {} if mesh_hashes is None else mesh_hashes
    shapes = []
    for shape in scene.shapes:
        if id(shape.model) not in memo:
            memo[id(shape.model)] = (shape.model, mesh_content_hash(shape.model))
        shapes.append({"mesh": memo[id(shape.model)][1], "T": np.round(shape.T_world_object, 12).tolist(),
                       "material": asdict(shape.material), "label": shape.label})
    lights = scene.lights
    payload = {
        "version": RENDER_CACHE_VERSION, "mitsuba": mitsuba_version, "variant": MITSUBA_VARIANT, "quality": asdict(quality),
        "seed": int(seed), "shapes": shapes,
        "lights": {"environment": _array_digest(lights.environment), "yaw": lights.environment_yaw_deg,
                   "local": [asdict(light) for light in lights.lights]},
        "camera": {"K": np.round(camera.K, 12).tolist(), "size": [camera.width, camera.height],
                   "T_world_camera": np.round(camera.T_world_camera, 12).tolist()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class RenderCache:
    """One compressed ``<key>.npz`` per view (``linear`` float16 (H, W, 3), ``labels`` int16 (H, W),
    ``albedo`` float16 (H, W)); atomic writes (a killed run leaves no partial entry)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        path = self.directory / f"{key}.npz"
        if not path.is_file():
            self.misses += 1
            return None
        try:
            with np.load(path) as data:
                arrays = data["linear"], data["labels"], data["albedo"]
        except (OSError, ValueError, KeyError) as exc:  # a truncated or foreign file: render again
            logger.warning("render cache: ignoring unreadable %s (%s)", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return arrays

    def store(self, key: str, linear: np.ndarray, labels: np.ndarray, albedo: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez_compressed(f, linear=linear, labels=labels.astype(np.int16), albedo=albedo)
            os.replace(tmp, self.directory / f"{key}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# Mitsuba
# ---------------------------------------------------------------------------------------------


def _mitsuba():
    try:
        import mitsuba as mi
    except ImportError as exc:
        raise StageUnavailableError("photoreal rendering needs mitsuba (pip install mitsuba==3.9.1)") from exc
    if mi.variant() != MITSUBA_VARIANT:
        mi.set_variant(MITSUBA_VARIANT)
    return mi


#: OpenCV optical frame (x right, y down) -> Mitsuba camera frame (x left, y up); z is shared.
OPENCV_TO_MITSUBA_CAMERA = np.diag([-1.0, -1.0, 1.0, 1.0])


def anisotropy_warp(camera: Camera) -> np.ndarray:
    """(4, 4) world-space stretch that lets a square-pixel camera of focal fx render a camera with fy != fx.

    ``W = T_world_camera @ diag(1, fy / fx, 1, 1) @ T_camera_world``: a point at camera
    coordinates (x, y, z) moves to (x, y fy / fx, z) and projects with focal fx to row
    ``cy + fy y / z``, exactly where ``K`` puts it; depths and occlusions are unchanged. Identity
    when fx == fy.
    """
    fx, fy = camera.K[0, 0], camera.K[1, 1]
    if fx == fy:
        return np.eye(4)
    T = camera.T_world_camera
    return T @ np.diag([1.0, fy / fx, 1.0, 1.0]) @ invert_rigid(T)


def mitsuba_sensor_dict(camera: Camera, spp: int, *, jitter: bool = True) -> dict:
    """A Mitsuba ``perspective`` sensor matching ``camera`` (module docstring), square pixels of focal fx.

    Args:
        camera: OpenCV camera (K pixels, pixel centres at integers; ``T_world_camera`` metres).
            fy is taken into account by :func:`anisotropy_warp` of the scene, not here.
        spp: samples per pixel. jitter: False puts the samples at stratum centres (spp must be a
            power of 4; with spp = 1: exactly the pixel centre, as a rasterizer samples).
    """
    W, H = camera.width, camera.height
    K = camera.K
    return {
        "type": "perspective",
        "fov_axis": "x",
        "fov": float(np.degrees(2.0 * np.arctan(W / (2.0 * K[0, 0])))),
        "principal_point_offset_x": float(((W - 1) / 2.0 - K[0, 2]) / W),
        "principal_point_offset_y": float(((H - 1) / 2.0 - K[1, 2]) / H),
        "near_clip": 0.01,
        "far_clip": 100.0,
        "to_world": _mitsuba().ScalarTransform4f(camera.T_world_camera @ OPENCV_TO_MITSUBA_CAMERA),
        "film": {"type": "hdrfilm", "width": W, "height": H, "rfilter": {"type": "box"}, "pixel_format": "rgb"},
        # Pixel-centre sampling: a 1-sample stratified sampler without jitter; otherwise independent samples.
        "sampler": ({"type": "independent", "sample_count": int(spp)} if jitter else
                    {"type": "stratified", "sample_count": int(spp), "jitter": False}),
    }


def _base_colour(mi, model: ObjectModel, material: SurfaceMaterial) -> tuple[dict, np.ndarray | None]:
    """The ``base_color`` texture dict, and the (N, 3) linear vertex colours it reads (or None)."""
    if model.texture is not None and model.uv is not None:
        # Mitsuba's bitmap puts v = 0 at the first (top) image row; ObjectModel.uv has v = 0 at the bottom.
        linear = srgb_decode(np.asarray(model.texture)[::-1] / 255.0) * material.brightness
        return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(linear, np.float32)), "raw": True}, None
    if model.vertex_colors is not None:
        colours = srgb_decode(np.asarray(model.vertex_colors) / 255.0) * material.brightness
        return {"type": "mesh_attribute", "name": "vertex_color"}, np.ascontiguousarray(colours, np.float32)
    return {"type": "rgb", "value": [c * material.brightness for c in material.colour]}, None


class _MitsubaShape:
    """A ``mi.Mesh`` of one :class:`PhotorealShape` whose vertices can be re-posed by a world warp."""

    def __init__(self, mi, shape: PhotorealShape, name: str) -> None:
        model, m = shape.model, shape.material
        textured = model.texture is not None and model.uv is not None
        base_color, vertex_colours = _base_colour(mi, model, m)
        principled = {"type": "principled", "base_color": base_color, "roughness": m.roughness, "specular": m.specular,
                      "metallic": m.metallic}
        props = mi.Properties()
        # Two-sided: scanned meshes often have inconsistent winding; closed meshes never show their inside.
        props["bsdf"] = mi.load_dict({"type": "twosided", "material": principled})
        self.mesh = mi.Mesh(name, len(model.vertices), len(model.faces), props=props, has_vertex_normals=True,
                            has_vertex_texcoords=textured)
        self.label = shape.label
        T = np.asarray(shape.T_world_object, np.float64)
        # Vertices go in world coordinates: a Mesh built from Python has no to_world of its own.
        self._p_world = np.asarray(model.vertices, np.float64) @ T[:3, :3].T + T[:3, 3]
        self._n_world = np.asarray(model.normals, np.float64) @ T[:3, :3].T
        params = mi.traverse(self.mesh)
        params["faces"] = np.ascontiguousarray(model.faces, np.uint32).ravel()
        if textured:
            params["vertex_texcoords"] = np.ascontiguousarray(model.uv, np.float32).ravel()
        params.update()
        if vertex_colours is not None:
            self.mesh.add_attribute("vertex_color", 3, vertex_colours.ravel())
        self._warp = None
        self.set_warp(mi, np.eye(4))

    def set_warp(self, mi, warp: np.ndarray) -> None:
        """Place the vertices at ``warp @ p_world`` (normals by the inverse transpose)."""
        if self._warp is not None and np.array_equal(warp, self._warp):
            return
        A = warp[:3, :3]
        normals = self._n_world @ np.linalg.inv(A)  # rows: (A^-T n)^T
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        params = mi.traverse(self.mesh)
        params["vertex_positions"] = np.ascontiguousarray(self._p_world @ A.T + warp[:3, 3], np.float32).ravel()
        params["vertex_normals"] = np.ascontiguousarray(normals, np.float32).ravel()
        params.update()
        self._warp = warp.copy()


def _emitter_dicts(mi, lights: LightSetup, warp: np.ndarray) -> dict:
    """Mitsuba emitters of ``lights``, local lights moved by ``warp`` (see :func:`anisotropy_warp`)."""
    # Lat-long maps are +y up in Mitsuba: rotate local +y onto world +z, then about z.
    yaw = np.deg2rad(lights.environment_yaw_deg)
    Rz = np.array([[np.cos(yaw), -np.sin(yaw), 0, 0], [np.sin(yaw), np.cos(yaw), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    y_up_to_z_up = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    out = {"environment": {"type": "envmap", "bitmap": mi.Bitmap(np.ascontiguousarray(lights.environment, np.float32)),
                           "to_world": mi.ScalarTransform4f(Rz @ y_up_to_z_up)}}
    for i, light in enumerate(lights.lights):
        rgb = {"type": "rgb", "value": list(light.rgb)}
        position = warp[:3, :3] @ np.asarray(light.position_m, float) + warp[:3, 3]
        target = warp[:3, :3] @ np.asarray(light.target_m, float) + warp[:3, 3]
        if light.kind == "point":
            out[f"light_{i}"] = {"type": "point", "position": position.tolist(), "intensity": rgb}
            continue
        direction = target - position
        up = [0.0, 0.0, 1.0] if np.linalg.norm(np.cross(direction, [0.0, 0.0, 1.0])) > 1e-6 * np.linalg.norm(direction) else [1.0, 0.0, 0.0]
        look = np.asarray(mi.ScalarTransform4f().look_at(origin=position.tolist(), target=target.tolist(), up=up).matrix)
        if light.kind == "spot":
            out[f"light_{i}"] = {"type": "spot", "to_world": mi.ScalarTransform4f(look), "intensity": rgb,
                                 "cutoff_angle": light.cutoff_deg, "beam_width": 0.75 * light.cutoff_deg}
        elif light.kind == "area":
            # A rectangle is [-1, 1]^2 in its xy plane, emitting along +z: look_at points +z at the target.
            scale = np.diag([light.size_m[0] / 2.0, light.size_m[1] / 2.0, 1.0, 1.0])
            out[f"light_{i}"] = {"type": "rectangle", "to_world": mi.ScalarTransform4f(look @ scale),
                                 "emitter": {"type": "area", "radiance": rgb}}
        else:
            raise InvalidInputError(f"Light.kind: expected 'area', 'point' or 'spot', got {light.kind!r}")
    return out


@dataclass(frozen=True)
class PhotorealRender:
    """A path-traced view.

    Attributes:
        linear: (H, W, 3) float32 linear radiance (float16 precision).
        labels: (H, W) int32 label of the shape seen through each pixel centre (0 = none).
        albedo: (H, W) float32 diffuse albedo (luminance) at each pixel centre (float16 precision).
        cached: the render came from the cache.
        seconds: wall time of the render (0 for a cache hit).
    """

    linear: np.ndarray
    labels: np.ndarray
    albedo: np.ndarray
    cached: bool
    seconds: float


class PathTracer:
    """Renders views of :class:`PhotorealScene` s with Mitsuba, through the on-disk cache.

    Mitsuba meshes and textures of a scene are built once and reused while the same shapes are
    rendered (frames and views of a static scene); only their vertices move per camera when fx != fy.
    """

    def __init__(self, quality: RenderQuality, cache_dir: Path | None) -> None:
        self.quality = quality
        self.cache = None if cache_dir is None else RenderCache(cache_dir)
        self._mesh_hashes: dict[int, tuple[ObjectModel, str]] = {}
        self._shapes_key: tuple | None = None
        self._shapes_source: tuple[PhotorealShape, ...] = ()  # keeps the models of _shapes_key (their ids) alive
        self._shapes: dict[str, _MitsubaShape] = {}

    def _scene_shapes(self, mi, shapes: tuple[PhotorealShape, ...]) -> dict[str, _MitsubaShape]:
        key = tuple((id(s.model), s.label, s.material, np.asarray(s.T_world_object).tobytes()) for s in shapes)
        if key != self._shapes_key:
            self._shapes = {f"shape_{i}": _MitsubaShape(mi, shape, f"shape_{i}") for i, shape in enumerate(shapes)}
            self._shapes_key = key
            self._shapes_source = shapes
        return self._shapes

    def render(self, scene: PhotorealScene, camera: Camera, seed: int) -> PhotorealRender:
        """Path-trace one view (or load it from the cache).

        Args:
            scene: shapes and lights. camera: OpenCV camera (no skew). seed: Mitsuba sample seed.
        Raises:
            InvalidInputError: the camera has skew.
            StageUnavailableError: mitsuba is not installed.
        """
        mi = _mitsuba()
        if abs(camera.K[0, 1]) > 1e-12:
            raise InvalidInputError(f"photoreal: cameras with skew are not supported, got K[0, 1] = {camera.K[0, 1]}")
        current = {id(shape.model) for shape in scene.shapes}  # forget earlier scenes' models (memory)
        self._mesh_hashes = {k: v for k, v in self._mesh_hashes.items() if k in current}
        key = view_cache_key(scene, camera, self.quality, seed, mi.__version__, self._mesh_hashes)
        if self.cache is not None:
            hit = self.cache.load(key)
            if hit is not None:
                return PhotorealRender(hit[0].astype(np.float32), hit[1].astype(np.int32), hit[2].astype(np.float32), True, 0.0)
        started = time.perf_counter()
        shapes = self._scene_shapes(mi, scene.shapes)
        warp = anisotropy_warp(camera)
        for shape in shapes.values():
            shape.set_warp(mi, warp)
        scene_dict = {"type": "scene", **{name: shape.mesh for name, shape in shapes.items()},
                      **_emitter_dicts(mi, scene.lights, warp)}
        beauty = mi.load_dict({**scene_dict, "sensor": mitsuba_sensor_dict(camera, self.quality.spp),
                               "integrator": {"type": "path", "max_depth": self.quality.max_depth}})
        linear = np.array(mi.render(beauty, seed=int(seed)), dtype=np.float32)
        aov = mi.load_dict({**scene_dict, "sensor": mitsuba_sensor_dict(camera, 1, jitter=False),
                            "integrator": {"type": "aov", "aovs": "index:shape_index,albedo:albedo"}})
        aov_image = np.array(mi.render(aov), dtype=np.float32)
        index = np.rint(aov_image[..., 0]).astype(np.int64)
        albedo = luminance(aov_image[..., 1:4]).astype(np.float16)
        # shape_index is the position in scene.shapes() + 1 (0 = no hit); map it to the rasterizer's labels.
        lookup = np.zeros(len(aov.shapes()) + 1, np.int32)
        for i, s in enumerate(aov.shapes()):
            lookup[i + 1] = shapes[s.id()].label if s.id() in shapes else 0
        labels = lookup[np.clip(index, 0, len(lookup) - 1)]
        linear = linear.astype(np.float16)
        seconds = time.perf_counter() - started
        logger.debug("path-traced %dx%d at %d spp in %.1f s", camera.width, camera.height, self.quality.spp, seconds)
        if self.cache is not None:
            self.cache.store(key, linear, labels, albedo)
        return PhotorealRender(linear.astype(np.float32), labels, albedo.astype(np.float32), False, seconds)
