"""Randomized appearance: lighting, procedural textures, sensor noise (all from a seeded rng).

Depth noise follows the usual structured-light / stereo model: Gaussian noise along z with a
standard deviation growing with the square of the distance (``sigma = depth_noise_sigma_at_1m_m
* z^2``), plus missing pixels (value 0, as drivers publish them): random blobs and a share of the
pixels at depth discontinuities, where real sensors lose the match.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TEXTURE_KINDS: tuple[str, ...] = ("noise", "stripes", "checker", "colour")


@dataclass(frozen=True)
class AppearanceConfig:
    """Ranges of the randomized appearance.

    Attributes:
        ambient_range, diffuse_range: light intensities (renderer units, 1 = full).
        light_elevation_range_deg: direction of the light above the table plane (world frame).
        per_frame_light_jitter_deg: the light direction changes by up to this between frames.
        rgb_noise_sigma: Gaussian pixel noise, 8-bit intensity levels (0 = off).
        depth_noise: add depth noise and holes (off: depth is exact up to rasterization).
        depth_noise_sigma_at_1m_m: z-noise standard deviation at 1 m (scales with z^2).
        dropout_fraction: approximate share of pixels lost in random blobs.
        dropout_blob_px: typical blob size, pixels.
        edge_threshold_m: a pixel is at a discontinuity if its 3x3 depth range exceeds this.
        edge_dropout_probability: share of discontinuity pixels set to 0.
        table_texture_size_px: side of the square table textures (1024 px on a 1.2 m table: ~1 mm per texel).
    """

    ambient_range: tuple[float, float] = (0.25, 0.55)
    diffuse_range: tuple[float, float] = (0.45, 0.85)
    light_elevation_range_deg: tuple[float, float] = (35.0, 85.0)
    per_frame_light_jitter_deg: float = 3.0
    rgb_noise_sigma: float = 2.0
    depth_noise: bool = False
    depth_noise_sigma_at_1m_m: float = 1.5e-3
    dropout_fraction: float = 0.01
    dropout_blob_px: int = 6
    edge_threshold_m: float = 0.02
    edge_dropout_probability: float = 0.5
    table_texture_size_px: int = 1024


@dataclass(frozen=True)
class Lighting:
    """One directional light plus ambient term.

    Attributes:
        direction_world: (3,) unit vector from the scene toward the light, world frame.
        ambient, diffuse: intensities.
    """

    direction_world: np.ndarray
    ambient: float
    diffuse: float

    def direction_in_camera(self, T_world_camera: np.ndarray) -> np.ndarray:
        """(3,) the direction toward the light in a camera's optical frame. Args: T_world_camera (4, 4)."""
        return np.asarray(T_world_camera)[:3, :3].T @ self.direction_world

    def travel_direction_in_camera(self, T_world_camera: np.ndarray) -> np.ndarray:
        """(3,) the direction the light travels (the renderer's ``light_dir_cam``), camera frame."""
        return -self.direction_in_camera(T_world_camera)


def sample_lighting(rng: np.random.Generator, config: AppearanceConfig) -> Lighting:
    elevation = np.deg2rad(rng.uniform(*config.light_elevation_range_deg))
    azimuth = rng.uniform(0.0, 2.0 * np.pi)
    direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    return Lighting(direction, float(rng.uniform(*config.ambient_range)), float(rng.uniform(*config.diffuse_range)))


def jitter_lighting(lighting: Lighting, rng: np.random.Generator, config: AppearanceConfig) -> Lighting:
    """A slightly moved light (per frame of a static scene), intensities unchanged."""
    axis = rng.normal(size=3)
    angle = np.deg2rad(rng.uniform(0.0, config.per_frame_light_jitter_deg))
    R, _ = cv2.Rodrigues(axis / np.linalg.norm(axis) * angle)
    direction = R @ lighting.direction_world
    return Lighting(direction / np.linalg.norm(direction), lighting.ambient, lighting.diffuse)


def _random_colour(
    rng: np.random.Generator, saturation: tuple[float, float] = (40, 200), value: tuple[float, float] = (60, 230)
) -> np.ndarray:
    hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(*saturation), rng.uniform(*value)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _value_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    """(H, W) float32 in [0, 1]: sum of upsampled random grids (coarse to fine)."""
    out = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        cells = 4 * 2**octave
        grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
        weight = 0.5**octave
        out += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        weight_sum += weight
    out /= weight_sum
    return np.clip((out - out.min()) / max(float(out.max() - out.min()), 1e-6), 0, 1)


def procedural_texture(rng: np.random.Generator, height: int, width: int, kind: str | None = None) -> np.ndarray:
    """A random texture of one of :data:`TEXTURE_KINDS`.

    Args:
        rng: seeded generator. height, width: pixels. kind: default random.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    kind = kind or TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))]
    a, b = _random_colour(rng), _random_colour(rng)
    if kind == "noise":
        t = _value_noise(rng, height, width)[..., None]
    elif kind in ("stripes", "checker"):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.03, 0.25) * max(height, width)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        t = (np.floor(u) % 2).astype(np.float32)
        if kind == "checker":
            v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period
            t = np.abs(t - (np.floor(v) % 2))
        t = cv2.GaussianBlur(t, (0, 0), 1.0)[..., None]
    elif kind == "colour":
        t = np.zeros((height, width, 1), np.float32)
    else:
        raise ValueError(f"unknown texture kind {kind!r}; expected one of {TEXTURE_KINDS}")
    image = a * (1 - t) + b * t
    # Fine grain on every kind so that even uniform surfaces have some texture.
    image += (_value_noise(rng, height, width, octaves=3)[..., None] - 0.5) * rng.uniform(10, 40)
    return np.clip(image, 0, 255).astype(np.uint8)


def background_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8: what a camera sees beyond the table (a textured wall or floor)."""
    return procedural_texture(rng, height, width)


def add_rgb_noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian pixel noise. Args: rgb (..., 3) uint8; sigma in intensity levels. Returns uint8."""
    if sigma <= 0:
        return rgb
    noisy = rgb.astype(np.float32) + rng.normal(0.0, sigma, rgb.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def depth_discontinuities(depth_m: np.ndarray, threshold_m: float) -> np.ndarray:
    """(H, W) bool: valid pixels whose 3x3 neighbourhood (valid pixels only) spans more than the threshold."""
    valid = depth_m > 0
    big = np.float32(1e6)
    kernel = np.ones((3, 3), np.uint8)
    local_max = cv2.dilate(np.where(valid, depth_m, 0).astype(np.float32), kernel)
    local_min = cv2.erode(np.where(valid, depth_m, big).astype(np.float32), kernel)
    return valid & (local_max - local_min > threshold_m)


def add_depth_noise(depth_m: np.ndarray, rng: np.random.Generator, config: AppearanceConfig) -> np.ndarray:
    """Sensor-like depth: z^2 Gaussian noise, random hole blobs and dropouts at discontinuities.

    Args:
        depth_m: (H, W) float32 metres, 0 = no return.
    Returns:
        (H, W) float32 metres, 0 where the pixel is missing.
    """
    depth = np.asarray(depth_m, np.float32)
    height, width = depth.shape
    valid = depth > 0
    edges = depth_discontinuities(depth, config.edge_threshold_m)
    sigma = config.depth_noise_sigma_at_1m_m * depth.astype(np.float64) ** 2
    noisy = (depth + rng.normal(0.0, 1.0, depth.shape) * sigma).astype(np.float32)
    # Blobs: threshold smooth noise so that about dropout_fraction of the image falls below.
    cells = (max(1, height // config.dropout_blob_px), max(1, width // config.dropout_blob_px))
    field = cv2.resize(rng.uniform(0, 1, cells).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    holes = field < np.quantile(field, config.dropout_fraction) if config.dropout_fraction > 0 else np.zeros_like(valid)
    holes |= edges & (rng.uniform(0, 1, depth.shape) < config.edge_dropout_probability)
    return np.where(valid & ~holes & (noisy > 0), noisy, np.float32(0)).astype(np.float32)
