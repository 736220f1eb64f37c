"""Photoreal workcell scenes: configuration, physically based materials, lights, scene description.

What a path-traced view shows is described here as plain frozen dataclasses (no renderer):
principled materials per object (:func:`sample_material`; untextured meshes get a plain colour or
a procedural solid pattern, :func:`appearance_model`), an HDR sky with bright windows plus area,
point and spot lights with blackbody colours (:func:`sample_lights`), and the shapes with their
rasterizer labels (:class:`PhotorealScene`). :mod:`pose_node.scene.path_tracer` renders it with
Mitsuba; :mod:`pose_node.scene.sensor_model` turns renders into camera images and sensor depth.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.types import ObjectModel, is_untextured
from pose_node.onboarding.cache import CACHE_ENV_VAR, DEFAULT_CACHE_ROOT
from pose_node.scene.clutter import ClutterConfig
from pose_node.scene.sensor_model import (
    CameraModelConfig, DepthSensorConfig, blackbody_rgb, srgb_decode,
)


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
