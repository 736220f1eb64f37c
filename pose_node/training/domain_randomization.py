"""Strong appearance randomization of a rasterized training image, in linear light.

The rasterizer gives the albedo (rendered with ambient 1, diffuse 0), the depth and the instance
map. :func:`randomize_appearance` relights a region of that image in linear light and passes it
through the project's colour camera model (:func:`pose_node.scene.sensor_model.apply_camera_model`):

1. albedo: the 8-bit render decoded from sRGB; meshes without texture or vertex colours (the
   rasterizer paints them one grey) get a random colour, as a real untextured object has some.
2. normals: from the depth map (cross product of the neighbours' camera-frame points, a 3 x 3
   box filter against the facets, then flipped to face the camera). They cost about as much as
   one more readback pass would and need no shader change.
3. light: an environment term (a sky / ground hemisphere light of random colours around a random
   "up"), plus 1-3 directional lights of black-body colours, each with a Lambert and a Blinn-Phong
   specular term (random strength and shininess per object: matte to glossy plastic). No shadows:
   the rasterizer has no shadow maps; occluders still darken by hiding.
4. the background texture (already in the render), decoded and lit by a random fraction of the mean light.
5. camera: vignetting from the pixel's place in the *full* image, then auto exposure, blur,
   shot and read noise, white-balance error, sRGB and JPEG from :func:`apply_camera_model`.

Only the pixels a crop will read are processed (:func:`crop_footprint`): a 640 x 480 frame would
cost ~10 times more for pixels the network never sees. Auto exposure therefore meters that
region, as a spot meter would.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from pose_node.core.crop import crop_intrinsics
from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.scene.sensor_model import (
    CameraModelConfig,
    apply_camera_model,
    blackbody_rgb,
    sample_camera_params,
    srgb_decode,
    vignetting_factor,
)

#: sRGB byte -> linear value (a table: decoding with np.power per pixel costs more than the lighting).
_SRGB_BYTE_TO_LINEAR = srgb_decode(np.arange(256) / 255.0).astype(np.float32)


@dataclass(frozen=True)
class DomainRandomizationConfig:
    """Ranges of the appearance randomization (module docstring).

    Attributes:
        num_lights_range: directional lights, both ends included.
        light_temperature_range_k: colour temperature of each light and of the sky.
        light_intensity_range: irradiance of each directional light (the environment is 1 at most).
        environment_intensity_range: sky irradiance.
        ground_to_sky_range: ground irradiance as a fraction of the sky's.
        specular_probability: chance that an object is glossy at all.
        specular_strength_range: Blinn-Phong coefficient of a glossy object.
        shininess_range: Blinn-Phong exponent, drawn log-uniformly.
        untextured_saturation_range, untextured_value_range: HSV of the random colour of an
            untextured mesh (hue uniform).
        background_gain_range: background radiance relative to the mean light on the objects.
        camera: colour camera ranges (wider than a single real camera's: white balance, blur,
            noise and JPEG vary between robots).
        footprint_margin_px: pixels added around a crop's footprint (blur and bilinear reads).
    """

    num_lights_range: tuple[int, int] = (1, 3)
    light_temperature_range_k: tuple[float, float] = (2700.0, 7500.0)
    light_intensity_range: tuple[float, float] = (0.3, 1.5)
    environment_intensity_range: tuple[float, float] = (0.1, 0.8)
    ground_to_sky_range: tuple[float, float] = (0.1, 0.8)
    specular_probability: float = 0.7
    specular_strength_range: tuple[float, float] = (0.05, 0.8)
    shininess_range: tuple[float, float] = (8.0, 256.0)
    untextured_saturation_range: tuple[float, float] = (0.0, 0.8)
    untextured_value_range: tuple[float, float] = (0.15, 0.95)
    background_gain_range: tuple[float, float] = (0.3, 1.5)
    camera: CameraModelConfig = CameraModelConfig(
        exposure_target_range=(0.35, 0.95), vignetting_range=(0.0, 0.4), wb_temperature_error_mired_range=(-60.0, 60.0),
        wb_tint_error_range=(-0.06, 0.06), full_well_range_e=(1500.0, 15000.0), read_noise_range_e=(1.0, 10.0),
        blur_sigma_range_px=(0.0, 1.6), jpeg_quality_range=(50, 98),
    )
    footprint_margin_px: int = 6

    def __post_init__(self) -> None:
        check_fields(self, [
            ("num_lights_range", 1 <= self.num_lights_range[0] <= self.num_lights_range[1]),
            ("light_temperature_range_k", 1667.0 <= self.light_temperature_range_k[0] <= self.light_temperature_range_k[1] <= 25000.0),
            ("specular_probability", 0.0 <= self.specular_probability <= 1.0),
            ("shininess_range", 0.0 < self.shininess_range[0] <= self.shininess_range[1]),
            ("untextured_value_range", 0.0 <= self.untextured_value_range[0] <= self.untextured_value_range[1] <= 1.0),
            ("footprint_margin_px", self.footprint_margin_px >= 0),
        ])


def crop_footprint(K: np.ndarray, R_camera_crop: np.ndarray, focal_px: float, crop_size_px: int, image_hw: tuple[int, int],
                   margin_px: int) -> tuple[int, int, int, int]:
    """The image rows and columns a crop reads (its four corners' rays, projected, plus a margin).

    Args:
        K: (3, 3) image intrinsics. R_camera_crop: (3, 3) rotation of the crop camera in the
            image camera (``p_cam = R p_crop``, as :func:`pose_node.core.crop.crop_cameras` gives).
        focal_px: the crop camera's focal length. crop_size_px: S.
        image_hw: (H, W). margin_px: added on every side.
    Returns:
        ``(row0, row1, col0, col1)``, half-open, clipped to the image.
    """
    S = crop_size_px
    K_crop = crop_intrinsics(np.array([focal_px]), S)[0]
    corners = np.array([[-0.5, -0.5, 1.0], [S - 0.5, -0.5, 1.0], [-0.5, S - 0.5, 1.0], [S - 0.5, S - 0.5, 1.0]])
    rays = (R_camera_crop @ np.linalg.solve(K_crop, corners.T)).T
    uv = (K @ rays.T).T
    uv = uv[:, :2] / uv[:, 2:3]
    H, W = image_hw
    c0, r0 = np.floor(uv.min(0)).astype(int) - margin_px
    c1, r1 = np.ceil(uv.max(0)).astype(int) + margin_px + 1
    return max(0, int(r0)), min(H, int(r1)), max(0, int(c0)), min(W, int(c1))


@lru_cache(maxsize=4)
def _vignetting_r2(height: int, width: int) -> np.ndarray:
    """(H, W) squared relative radius: vignetting is ``1 - strength * r2`` (cached, it is the same every frame)."""
    return (1.0 - vignetting_factor(height, width, 1.0)).astype(np.float32)


def _random_colour(rng: np.random.Generator, config: DomainRandomizationConfig) -> np.ndarray:
    """(3,) linear RGB of a random HSV colour."""
    hsv = np.array([[[rng.uniform(0.0, 180.0), 255.0 * rng.uniform(*config.untextured_saturation_range),
                      255.0 * rng.uniform(*config.untextured_value_range)]]], np.float32)
    srgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return _SRGB_BYTE_TO_LINEAR[srgb]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def depth_normals(depth_m: np.ndarray, instance: np.ndarray, K: np.ndarray, offset_rc: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points and unit normals facing the camera, from a depth map.

    Args:
        depth_m: (h, w) metres (0 = no object). instance: (h, w) labels; differences are only
            taken between pixels of the same label. K: (3, 3) of the full image.
        offset_rc: (row, col) of the region's first pixel in the full image.
    Returns:
        ``(p_cam (h, w, 3) metres, n_cam (h, w, 3))``; where no neighbour of the same object
        exists the normal faces the viewer.
    """
    h, w = depth_m.shape
    rows, cols = np.mgrid[offset_rc[0]:offset_rc[0] + h, offset_rc[1]:offset_rc[1] + w].astype(np.float32)
    x = (cols - np.float32(K[0, 2])) / np.float32(K[0, 0])
    y = (rows - np.float32(K[1, 2])) / np.float32(K[1, 1])
    p = np.stack([x * depth_m, y * depth_m, depth_m], -1).astype(np.float32)
    view = _unit(np.stack([x, y, np.ones_like(x)], -1))
    same_x = np.zeros((h, w), bool)
    same_y = np.zeros((h, w), bool)
    dx = np.zeros_like(p)
    dy = np.zeros_like(p)
    dx[:, :-1] = p[:, 1:] - p[:, :-1]
    dy[:-1] = p[1:] - p[:-1]
    same_x[:, :-1] = (instance[:, 1:] == instance[:, :-1]) & (instance[:, :-1] > 0)
    same_y[:-1] = (instance[1:] == instance[:-1]) & (instance[:-1] > 0)
    n = np.cross(dx, dy)
    n[~(same_x & same_y)] = 0.0
    n = cv2.blur(_unit(n), (3, 3))
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(length > 1e-3, n / length.clip(1e-12), -view)
    facing_away = (n * view).sum(-1) > 0
    n[facing_away] *= -1.0
    return p, n.astype(np.float32)


def randomize_appearance(albedo_rgb: np.ndarray, depth_m: np.ndarray, instance: np.ndarray, K: np.ndarray,
                         region: tuple[int, int, int, int], untextured_labels: set[int], rng: np.random.Generator,
                         config: DomainRandomizationConfig) -> np.ndarray:
    """Relight ``region`` of a rasterized image and pass it through a random colour camera.

    Args:
        albedo_rgb: (H, W, 3) uint8 render with ambient 1 and no directional light, over the
            background texture.
        depth_m: (H, W) float32 metres, 0 = background. instance: (H, W) int labels, 0 = background.
        K: (3, 3) intrinsics. region: ``(row0, row1, col0, col1)`` to process (:func:`crop_footprint`).
        untextured_labels: instance labels of meshes without texture or vertex colours.
        rng: the sampler's generator (the result is deterministic given its state).
    Returns:
        (H, W, 3) uint8: a copy of ``albedo_rgb`` whose region is replaced by the camera's image.
    Raises:
        InvalidInputError: mismatched shapes or an empty region.
    """
    H, W = depth_m.shape
    if albedo_rgb.shape != (H, W, 3) or instance.shape != (H, W):
        raise InvalidInputError(f"randomize_appearance: albedo {albedo_rgb.shape}, depth {depth_m.shape} and instance {instance.shape} "
                                "must share (H, W)")
    r0, r1, c0, c1 = region
    if not (0 <= r0 < r1 <= H and 0 <= c0 < c1 <= W):
        raise InvalidInputError(f"randomize_appearance: empty or out-of-image region {region} for an image of {H} x {W}")
    inst = instance[r0:r1, c0:c1]
    albedo = _SRGB_BYTE_TO_LINEAR[albedo_rgb[r0:r1, c0:c1]]
    labels = [int(v) for v in np.unique(inst) if v > 0]
    for label in labels:
        if label in untextured_labels:
            # The rasterizer's grey carries the mesh's shading-free albedo only: replace it.
            albedo[inst == label] = _random_colour(rng, config)
    p, n = depth_normals(depth_m[r0:r1, c0:c1], inst, K, (r0, c0))
    view = -_unit(p)

    # Environment: a hemisphere light around a random "up", mostly the image's up (-y).
    up = _unit(np.array([0.0, -1.0, 0.0]) + 0.6 * rng.normal(size=3))
    sky = blackbody_rgb(rng.uniform(*config.light_temperature_range_k)) * rng.uniform(*config.environment_intensity_range)
    ground = sky * rng.uniform(*config.ground_to_sky_range) * rng.uniform(0.6, 1.4, size=3)
    t = (0.5 * (1.0 + n @ up.astype(np.float32)))[..., None]
    irradiance = (ground.astype(np.float32) * (1.0 - t) + sky.astype(np.float32) * t)
    specular = np.zeros_like(irradiance)
    glossy = {label: (rng.uniform(*config.specular_strength_range) if rng.random() < config.specular_probability else 0.0,
                      float(np.exp(rng.uniform(*np.log(config.shininess_range))))) for label in labels}
    strength = np.zeros(inst.shape, np.float32)
    shininess = np.ones(inst.shape, np.float32)
    for label, (ks, s) in glossy.items():
        strength[inst == label] = ks
        shininess[inst == label] = s
    mean_light = float(sky.mean() * 0.75 + ground.mean() * 0.25)
    num_lights = int(rng.integers(config.num_lights_range[0], config.num_lights_range[1] + 1))
    for _ in range(num_lights):
        # Towards the light: in front of the scene (camera side), from a random direction.
        to_light = _unit(rng.normal(size=3) + np.array([0.0, -0.3, -1.2]))
        colour = (blackbody_rgb(rng.uniform(*config.light_temperature_range_k)) * rng.uniform(*config.light_intensity_range)).astype(np.float32)
        n_dot_l = np.clip(n @ to_light.astype(np.float32), 0.0, None)[..., None]
        half = _unit(view + to_light.astype(np.float32))
        n_dot_h = np.clip((n * half).sum(-1), 0.0, 1.0)
        irradiance = irradiance + colour * n_dot_l
        specular = specular + colour * (strength * n_dot_h ** shininess)[..., None] * (n_dot_l > 0)
        mean_light += float(colour.mean()) * 0.5
    radiance = albedo * irradiance + specular
    is_background = (inst == 0)[..., None]
    background = albedo * np.float32(mean_light * rng.uniform(*config.background_gain_range))
    radiance = np.where(is_background, background, radiance).astype(np.float32)

    params = sample_camera_params(rng, config.camera)
    radiance *= (1.0 - np.float32(params.vignetting) * _vignetting_r2(H, W)[r0:r1, c0:c1])[..., None]
    out = albedo_rgb.copy()
    out[r0:r1, c0:c1] = apply_camera_model(radiance, dataclasses.replace(params, vignetting=0.0), rng)
    return out
