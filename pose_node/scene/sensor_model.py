"""Camera and depth sensor models applied to path-traced renders (numpy / OpenCV, no renderer).

Colour camera (:func:`apply_camera_model`), in the order light meets the hardware:
linear scene radiance -> auto exposure (a high luminance percentile mapped to a target level of
the full well) -> vignetting -> optical blur -> shot noise (Poisson on electrons) + read noise
(Gaussian, electrons) and saturation -> white-balance error (per-channel gains of a wrong colour
temperature / tint estimate) -> sRGB encoding -> 8 bits -> JPEG compression.

Depth camera (:func:`simulate_depth_sensor`), a structured-light / ToF-like model: Gaussian z noise
with ``sigma = a + b z^2``, holes on the background side left of foreground edges (random width:
the projector or the second camera, to the right, does not see there), flying pixels at depth
edges (values between the foreground and background depth, as mixed returns give), holes in
blobs on dark surfaces (too little signal) and on glossy surfaces in specular highlights (they
saturate the pattern). The per-pixel material comes from the exact instance map of the
rasterizer, a per-label glossiness table and the path tracer's albedo and brightness. The noise
is drawn per frame from a seeded generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pose_node.core.errors import InvalidInputError, check_fields

#: Rec. 709 / sRGB luminance weights of linear RGB.
LUMINANCE_WEIGHTS = np.array([0.2126, 0.7152, 0.0722])
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314], [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])
#: Validity range of the Planckian-locus approximation used by :func:`blackbody_rgb`.
BLACKBODY_RANGE_K = (1667.0, 25000.0)


def luminance(rgb_linear: np.ndarray) -> np.ndarray:
    """(...) relative luminance of (..., 3) linear RGB."""
    return np.asarray(rgb_linear) @ LUMINANCE_WEIGHTS.astype(np.asarray(rgb_linear).dtype)


def blackbody_rgb(temperature_k: float) -> np.ndarray:
    """Linear sRGB colour of a black body, luminance 1.

    The chromaticity is the cubic-spline fit of the Planckian locus of Kim et al. (2002, US patent
    7024034), accurate to ~1e-3 in xy over 1667-25000 K; xyY -> XYZ -> linear sRGB (D65), with
    negative components (outside the sRGB gamut) clipped to 0.

    Args:
        temperature_k: colour temperature, kelvin, within :data:`BLACKBODY_RANGE_K`.
    Returns:
        (3,) float64 linear RGB.
    Raises:
        InvalidInputError: temperature outside the fit's range.
    """
    T = float(temperature_k)
    if not BLACKBODY_RANGE_K[0] <= T <= BLACKBODY_RANGE_K[1]:
        raise InvalidInputError(f"blackbody_rgb: temperature_k must be in {BLACKBODY_RANGE_K}, got {T}")
    if T <= 4000.0:
        x = -0.2661239e9 / T**3 - 0.2343589e6 / T**2 + 0.8776956e3 / T + 0.179910
    else:
        x = -3.0258469e9 / T**3 + 2.1070379e6 / T**2 + 0.2226347e3 / T + 0.240390
    if T <= 2222.0:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif T <= 4000.0:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    rgb = np.clip(_XYZ_TO_LINEAR_SRGB @ np.array([x / y, 1.0, (1.0 - x - y) / y]), 0.0, None)
    return rgb / float(rgb @ LUMINANCE_WEIGHTS)


# ---------------------------------------------------------------------------------------------
# Colour camera
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraModelConfig:
    """Ranges from which :func:`sample_camera_params` draws one frame's colour camera.

    Attributes:
        exposure_percentile: luminance percentile the auto exposure meters (0..100).
        exposure_target_range: level (fraction of the full well) that percentile is mapped to.
        vignetting_range: relative darkening at the image corners (0 = none).
        wb_temperature_error_mired_range: error of the white-balance illuminant estimate, mired
            (1e6 / kelvin; +-30 mired is a typical auto white balance error).
        wb_tint_error_range: relative error of the green gain.
        wb_reference_k: illuminant temperature the white-balance error is measured around.
        full_well_range_e: full-well capacity, electrons (small sensors: 4-12 ke-).
        read_noise_range_e: read noise standard deviation, electrons.
        blur_sigma_range_px: Gaussian optical blur, pixels.
        jpeg_quality_range: JPEG quality (integers, both ends included; 100 = no JPEG).
    """

    exposure_percentile: float = 97.0
    exposure_target_range: tuple[float, float] = (0.6, 0.9)
    vignetting_range: tuple[float, float] = (0.1, 0.35)
    wb_temperature_error_mired_range: tuple[float, float] = (-25.0, 25.0)
    wb_tint_error_range: tuple[float, float] = (-0.03, 0.03)
    wb_reference_k: float = 5000.0
    full_well_range_e: tuple[float, float] = (4000.0, 12000.0)
    read_noise_range_e: tuple[float, float] = (2.0, 6.0)
    blur_sigma_range_px: tuple[float, float] = (0.3, 1.0)
    jpeg_quality_range: tuple[int, int] = (80, 95)

    def __post_init__(self) -> None:
        checks = [
            ("exposure_percentile", 0.0 < self.exposure_percentile <= 100.0),
            ("exposure_target_range", 0.0 < self.exposure_target_range[0] <= self.exposure_target_range[1] <= 1.0),
            ("vignetting_range", 0.0 <= self.vignetting_range[0] <= self.vignetting_range[1] < 1.0),
            ("full_well_range_e", 0.0 < self.full_well_range_e[0] <= self.full_well_range_e[1]),
            ("read_noise_range_e", 0.0 <= self.read_noise_range_e[0] <= self.read_noise_range_e[1]),
            ("blur_sigma_range_px", 0.0 <= self.blur_sigma_range_px[0] <= self.blur_sigma_range_px[1]),
            ("jpeg_quality_range", 1 <= self.jpeg_quality_range[0] <= self.jpeg_quality_range[1] <= 100),
        ]
        check_fields(self, checks)


@dataclass(frozen=True)
class CameraParams:
    """One frame's colour camera (see :func:`apply_camera_model`).

    Attributes:
        exposure_percentile, exposure_target: auto exposure maps this luminance percentile to this level.
        vignetting: relative darkening at the corners.
        wb_gains: (3,) per-channel gains of the white-balance error (green = 1 + tint error).
        full_well_e, read_noise_e: electrons.
        blur_sigma_px: optical blur, pixels.
        jpeg_quality: 1..100 (100 = no compression).
    """

    exposure_percentile: float
    exposure_target: float
    vignetting: float
    wb_gains: tuple[float, float, float]
    full_well_e: float
    read_noise_e: float
    blur_sigma_px: float
    jpeg_quality: int


def white_balance_gains(temperature_error_mired: float, tint_error: float, reference_k: float = 5000.0) -> np.ndarray:
    """Gains a camera applies on top of a correct white balance when it misjudges the illuminant.

    The camera believes the light is ``1e6 / (1e6 / reference_k + error)`` kelvin: it divides by
    that light's colour instead of the true one, i.e. multiplies by ``rgb(true) / rgb(believed)``
    (normalized to green = 1), then scales green by ``1 + tint_error``.

    Returns:
        (3,) float64 gains.
    """
    believed_k = 1e6 / (1e6 / reference_k + temperature_error_mired)
    gains = blackbody_rgb(reference_k) / blackbody_rgb(float(np.clip(believed_k, *BLACKBODY_RANGE_K)))
    gains = gains / gains[1]
    gains[1] *= 1.0 + tint_error
    return gains


def sample_camera_params(rng: np.random.Generator, config: CameraModelConfig) -> CameraParams:
    """Draw one frame's colour camera from the config ranges."""
    gains = white_balance_gains(rng.uniform(*config.wb_temperature_error_mired_range), rng.uniform(*config.wb_tint_error_range),
                                config.wb_reference_k)
    return CameraParams(
        exposure_percentile=config.exposure_percentile,
        exposure_target=float(rng.uniform(*config.exposure_target_range)),
        vignetting=float(rng.uniform(*config.vignetting_range)),
        wb_gains=tuple(float(g) for g in gains),
        full_well_e=float(rng.uniform(*config.full_well_range_e)),
        read_noise_e=float(rng.uniform(*config.read_noise_range_e)),
        blur_sigma_px=float(rng.uniform(*config.blur_sigma_range_px)),
        jpeg_quality=int(rng.integers(config.jpeg_quality_range[0], config.jpeg_quality_range[1] + 1)),
    )


def auto_exposure_scale(rgb_linear: np.ndarray, percentile: float, target: float) -> float:
    """Scale that maps the ``percentile`` of luminance to ``target`` (1.0 for a black image).

    Args:
        rgb_linear: (H, W, 3) linear radiance, any unit.
    """
    level = float(np.percentile(luminance(rgb_linear), percentile))
    return target / level if level > 0 else 1.0


def vignetting_factor(height: int, width: int, strength: float) -> np.ndarray:
    """(H, W) float32 gain ``1 - strength * (r / r_corner)^2``, r from the image centre (corners: ``1 - strength``)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    r2 = ((xx - (width - 1) / 2.0) ** 2 + (yy - (height - 1) / 2.0) ** 2) / (((width - 1) / 2.0) ** 2 + ((height - 1) / 2.0) ** 2)
    return (1.0 - strength * r2).astype(np.float32)


def optical_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur (lens point spread) of an (H, W[, C]) float image; sigma 0 = unchanged."""
    if sigma_px <= 0:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def add_sensor_noise(signal: np.ndarray, rng: np.random.Generator, full_well_e: float, read_noise_e: float) -> np.ndarray:
    """Shot + read noise and saturation.

    Args:
        signal: (...) float, fraction of the full well (1 = saturated).
        full_well_e: electrons at saturation. read_noise_e: Gaussian read noise sigma, electrons.
    Returns:
        (...) float32 in [0, 1]: ``clip(Poisson(s * fw) + N(0, read), 0, fw) / fw``.
    """
    electrons = np.clip(np.asarray(signal, np.float64), 0.0, None) * full_well_e
    noisy = rng.poisson(electrons).astype(np.float64) + rng.normal(0.0, read_noise_e, electrons.shape)
    return (np.clip(noisy, 0.0, full_well_e) / full_well_e).astype(np.float32)


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 transfer function, [0, 1] linear -> [0, 1] encoded (input clipped)."""
    x = np.clip(np.asarray(linear, np.float64), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def srgb_decode(encoded: np.ndarray) -> np.ndarray:
    """Inverse of :func:`srgb_encode`."""
    x = np.clip(np.asarray(encoded, np.float64), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4))


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode an (H, W, 3) uint8 RGB image as JPEG (quality 1..100; 100 = unchanged)."""
    if quality >= 100:
        return rgb
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InvalidInputError(f"jpeg_roundtrip: OpenCV could not encode an image of shape {rgb.shape}")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def apply_camera_model(rgb_linear: np.ndarray, params: CameraParams, rng: np.random.Generator) -> np.ndarray:
    """Turn a linear HDR render into the 8-bit image a colour camera would deliver (module docstring).

    Args:
        rgb_linear: (H, W, 3) linear radiance (any scale: the auto exposure normalizes it).
        params: this frame's camera. rng: draws the noise.
    Returns:
        (H, W, 3) uint8 sRGB.
    Raises:
        InvalidInputError: ``rgb_linear`` is not (H, W, 3).
    """
    image = np.asarray(rgb_linear, np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"rgb_linear: expected (H, W, 3), got {image.shape}")
    image = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0).clip(0.0, None)
    exposed = image * np.float32(auto_exposure_scale(image, params.exposure_percentile, params.exposure_target))
    exposed *= vignetting_factor(*image.shape[:2], params.vignetting)[..., None]
    signal = add_sensor_noise(optical_blur(exposed, params.blur_sigma_px), rng, params.full_well_e, params.read_noise_e)
    balanced = signal * np.asarray(params.wb_gains, np.float32)
    encoded = np.rint(srgb_encode(balanced) * 255.0).astype(np.uint8)
    return jpeg_roundtrip(encoded, params.jpeg_quality)


# ---------------------------------------------------------------------------------------------
# Depth camera
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthSensorConfig:
    """Depth camera model (see the module docstring).

    Attributes:
        sigma_a_m, sigma_b_per_m: z noise ``sigma = a + b z^2`` (metres; b in 1/m). Defaults:
            about 1.1 mm at 0.5 m and 3 mm at 1 m, a structured-light camera like a RealSense D4xx.
        edge_threshold_m, edge_threshold_rel: a pixel is at a depth edge if its 3x3 depth range
            exceeds ``max(edge_threshold_m, edge_threshold_rel * z)`` (relative: a plane seen at a
            grazing angle far away has large steps between neighbouring pixels but no edge).
        shadow_width_px: (min, max) width of the holes on the background side left of foreground
            edges (the projector / second camera sits to the right of the reference camera and
            does not see there); the width varies smoothly along each edge.
        flying_pixel_probability: share of the remaining edge pixels replaced by a mixed return.
        dark_albedo: pixels whose albedo is below this ...
        dark_luminance: ... and whose image luminance (relative to the image's 97th percentile)
            is below this return too little signal: lost with ``dark_dropout_probability``.
        highlight_ratio: a pixel of a glossy label is in a specular highlight if its luminance per
            albedo exceeds this many times the image's median (diffuse shading) ...
        glossy_dropout_probability: ... and is then lost with this probability.
        dropout_blob_px: dropouts come in blobs of about this size (sensors lose patches, not
            isolated pixels).
        max_range_m: returns beyond this are missing.
    """

    sigma_a_m: float = 5e-4
    sigma_b_per_m: float = 2.5e-3
    edge_threshold_m: float = 0.02
    edge_threshold_rel: float = 0.05
    shadow_width_px: tuple[int, int] = (1, 5)
    flying_pixel_probability: float = 0.3
    dark_albedo: float = 0.05
    dark_luminance: float = 0.1
    dark_dropout_probability: float = 0.6
    highlight_ratio: float = 3.0
    glossy_dropout_probability: float = 0.8
    dropout_blob_px: int = 3
    max_range_m: float = 6.0

    def __post_init__(self) -> None:
        lo, hi = self.shadow_width_px
        checks = [
            ("sigma_a_m", self.sigma_a_m >= 0), ("sigma_b_per_m", self.sigma_b_per_m >= 0),
            ("edge_threshold_m", self.edge_threshold_m > 0), ("edge_threshold_rel", self.edge_threshold_rel >= 0),
            ("shadow_width_px", 0 <= lo <= hi), ("highlight_ratio", self.highlight_ratio > 0),
            ("dropout_blob_px", self.dropout_blob_px >= 1), ("max_range_m", self.max_range_m > 0),
        ] + [(name, 0.0 <= getattr(self, name) <= 1.0) for name in
             ("flying_pixel_probability", "dark_dropout_probability", "glossy_dropout_probability")]
        check_fields(self, checks)


def _smooth_uniform(rng: np.random.Generator, height: int, width: int, cell_px: float) -> np.ndarray:
    """(H, W) float32 random field varying over ~cell_px whose values are uniform on [0, 1) (rank transform)."""
    cells = (max(2, int(round(height / cell_px))), max(2, int(round(width / cell_px))))
    field = cv2.resize(rng.uniform(0, 1, cells).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    field += rng.uniform(0, 1e-4, field.shape).astype(np.float32)  # breaks ties between equal interpolated values
    ranks = np.empty(field.size, np.float32)
    ranks[np.argsort(field, axis=None)] = np.arange(field.size, dtype=np.float32) / field.size
    return ranks.reshape(height, width)


def depth_edges(depth_m: np.ndarray, threshold_m: float, threshold_rel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth discontinuities and the depths on either side.

    Args:
        depth_m: (H, W) float32 metres, 0 = nothing.
        threshold_m, threshold_rel: edge if the 3x3 range of valid depths exceeds
            ``max(threshold_m, threshold_rel * nearest)``.
    Returns:
        edges (H, W) bool (valid pixels only), near and far (H, W) float32: the smallest and
        largest valid depth of the 3x3 neighbourhood.
    """
    valid = depth_m > 0
    kernel = np.ones((3, 3), np.uint8)
    near = cv2.erode(np.where(valid, depth_m, np.float32(1e6)).astype(np.float32), kernel)
    far = cv2.dilate(np.where(valid, depth_m, 0).astype(np.float32), kernel)
    edges = valid & (far - near > np.maximum(threshold_m, threshold_rel * near))
    return edges, near, far


def simulate_depth_sensor(
    depth_m: np.ndarray, labels: np.ndarray, glossy_labels: np.ndarray, albedo: np.ndarray, luminance_map: np.ndarray,
    rng: np.random.Generator, config: DepthSensorConfig,
) -> np.ndarray:
    """Sensor-like depth from exact depth (see the module docstring).

    Args:
        depth_m: (H, W) float32 metres, exact, 0 = nothing.
        labels: (H, W) int instance labels of the same rasterization (index into ``glossy_labels``).
        glossy_labels: (L,) bool, the label's material is specular (metal, varnish, glossy plastic).
        albedo: (H, W) diffuse albedo (luminance) of the surface seen in each pixel, [0, 1].
        luminance_map: (H, W) luminance of the linear colour render (any scale).
        rng: seeded generator. config: the model.
    Returns:
        (H, W) float32 metres, 0 where the sensor returns nothing.
    Raises:
        InvalidInputError: the arrays disagree in shape or a label has no ``glossy_labels`` entry.
    """
    depth = np.asarray(depth_m, np.float32)
    labels = np.asarray(labels)
    if depth.ndim != 2 or any(np.shape(a) != depth.shape for a in (labels, albedo, luminance_map)):
        raise InvalidInputError(f"simulate_depth_sensor: depth {depth.shape}, labels {labels.shape}, albedo {np.shape(albedo)} "
                                f"and luminance {np.shape(luminance_map)} must be the same (H, W)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(glossy_labels)):
        raise InvalidInputError(f"simulate_depth_sensor: labels up to {labels.max()} but glossy_labels has {len(glossy_labels)} entries")
    height, width = depth.shape
    valid = depth > 0
    edges, fg, bg = depth_edges(depth, config.edge_threshold_m, config.edge_threshold_rel)
    out = depth.copy()
    shadow = np.zeros_like(valid)
    lo_w, hi_w = config.shadow_width_px
    if hi_w > 0:
        # A pixel is in the shadow of a foreground surface up to w pixels to its right.
        width_px = lo_w + _smooth_uniform(rng, height, width, 16.0) * (hi_w - lo_w)
        step = np.maximum(config.edge_threshold_m, config.edge_threshold_rel * depth)
        for k in range(1, hi_w + 1):
            right = np.zeros_like(depth)
            right[:, :-k] = depth[:, k:]
            shadow |= valid & (right > 0) & (right < depth - step) & (k <= width_px)
        out[shadow] = 0.0
    flying = edges & ~shadow & (rng.uniform(0, 1, depth.shape) < config.flying_pixel_probability)
    mix = rng.uniform(0.1, 0.9, depth.shape).astype(np.float32)
    out[flying] = (fg + mix * (bg - fg))[flying]
    albedo = np.asarray(albedo, np.float64)
    lum = np.asarray(luminance_map, np.float64)
    bright = float(np.percentile(lum, 97.0))
    relative = lum / bright if bright > 0 else lum
    shading = lum / np.maximum(albedo, 0.02)
    diffuse_level = float(np.median(shading[valid & (albedo > 0.02)])) if np.any(valid & (albedo > 0.02)) else 0.0
    draw = _smooth_uniform(rng, height, width, config.dropout_blob_px)
    dark_holes = (albedo < config.dark_albedo) & (relative < config.dark_luminance) & (draw < config.dark_dropout_probability)
    highlight = np.asarray(glossy_labels, bool)[labels] & (shading > config.highlight_ratio * diffuse_level)
    glossy_holes = highlight & (draw < config.glossy_dropout_probability)
    sigma = config.sigma_a_m + config.sigma_b_per_m * out.astype(np.float64) ** 2
    noisy = (out + rng.normal(0.0, 1.0, depth.shape) * sigma).astype(np.float32)
    keep = (out > 0) & ~dark_holes & ~glossy_holes & (noisy > 0) & (noisy <= config.max_range_m)
    return np.where(keep, noisy, np.float32(0)).astype(np.float32)
