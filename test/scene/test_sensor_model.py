"""Camera and depth sensor models: each stage against the property it must have."""
import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.scene.sensor_model import (
    CameraModelConfig, CameraParams, DepthSensorConfig, add_sensor_noise, apply_camera_model,
    auto_exposure_scale, blackbody_rgb, depth_edges, jpeg_roundtrip, luminance, optical_blur, sample_camera_params,
    simulate_depth_sensor, srgb_decode, srgb_encode, vignetting_factor, white_balance_gains,
)


def test_blackbody_colours():
    warm, neutral, cool = blackbody_rgb(2700.0), blackbody_rgb(6504.0), blackbody_rgb(10000.0)
    for rgb in (warm, neutral, cool):
        assert luminance(rgb) == pytest.approx(1.0)
    assert warm[0] > warm[1] > warm[2]  # incandescent: orange
    assert cool[2] > cool[0]
    np.testing.assert_allclose(neutral / neutral.max(), 1.0, atol=0.06)  # ~D65 white
    with pytest.raises(InvalidInputError, match="temperature"):
        blackbody_rgb(500.0)


def test_auto_exposure_hits_target_percentile():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 3.0, (60, 80, 3)).astype(np.float32)
    scale = auto_exposure_scale(image, 97.0, 0.8)
    assert np.percentile(luminance(image * scale), 97.0) == pytest.approx(0.8, rel=1e-5)
    assert auto_exposure_scale(np.zeros((4, 4, 3)), 97.0, 0.8) == 1.0


def test_vignetting_darkens_corners_by_strength():
    v = vignetting_factor(61, 81, 0.3)
    assert v[30, 40] == pytest.approx(1.0)
    for corner in (v[0, 0], v[0, -1], v[-1, 0], v[-1, -1]):
        assert corner == pytest.approx(0.7, abs=1e-6)
    assert np.all(np.diff(v[30, 40:]) < 0)  # falls off monotonically toward the border


def test_sensor_noise_shot_and_read():
    rng = np.random.default_rng(1)
    full_well, read = 5000.0, 4.0
    dark = add_sensor_noise(np.zeros(200_000), rng, full_well, read)
    # In the dark only read noise (clipped at 0: half the samples are 0, the rest a half-normal).
    assert np.std(np.where(dark > 0, dark, -dark) * full_well) == pytest.approx(read * np.sqrt(1 - 2 / np.pi), rel=0.05)
    for level in (0.1, 0.5):
        noisy = add_sensor_noise(np.full(200_000, level), rng, full_well, read)
        expected = np.sqrt(level * full_well + read**2) / full_well
        assert np.std(noisy) == pytest.approx(expected, rel=0.03)
        assert np.mean(noisy) == pytest.approx(level, rel=1e-2)
    assert add_sensor_noise(np.full(10, 3.0), rng, full_well, read).max() == 1.0  # saturation


def test_srgb_round_trip_and_known_values():
    x = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(srgb_decode(srgb_encode(x)), x, atol=1e-12)
    assert srgb_encode(np.array([0.0, 0.18, 1.0])) == pytest.approx([0.0, 0.4613561, 1.0], abs=1e-6)


def test_blur_keeps_mean_and_spreads_a_point():
    image = np.zeros((31, 31), np.float32)
    image[15, 15] = 1.0
    blurred = optical_blur(image, 1.0)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-4)
    assert blurred[15, 15] == pytest.approx(1 / (2 * np.pi), rel=0.05)
    assert optical_blur(image, 0.0) is image


def test_jpeg_quality_controls_the_error():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:64, 0:96]
    image = np.clip(np.stack([xx * 2.5, yy * 3.5, 128 + 60 * np.sin(xx / 5.0)], -1) + rng.normal(0, 8, (64, 96, 3)), 0, 255)
    image = image.astype(np.uint8)
    errors = [np.abs(jpeg_roundtrip(image, q).astype(float) - image).mean() for q in (50, 80, 95)]
    assert errors[0] > errors[1] > errors[2] > 0.0
    assert jpeg_roundtrip(image, 100) is image


def test_white_balance_error_direction():
    np.testing.assert_allclose(white_balance_gains(0.0, 0.0), [1.0, 1.0, 1.0], atol=1e-12)
    warmer_believed = white_balance_gains(+30.0, 0.0)  # camera thinks the light is warmer: image turns blue
    assert warmer_believed[2] > 1.0 > warmer_believed[0]
    assert white_balance_gains(0.0, 0.05)[1] == pytest.approx(1.05)


def test_camera_model_is_seeded_and_exposes_correctly():
    config = CameraModelConfig()
    p1 = sample_camera_params(np.random.default_rng(3), config)
    assert p1 == sample_camera_params(np.random.default_rng(3), config)
    assert config.jpeg_quality_range[0] <= p1.jpeg_quality <= config.jpeg_quality_range[1]
    flat = np.full((48, 64, 3), 7.3, np.float32)  # any radiance scale
    params = CameraParams(97.0, 0.5, 0.0, (1.0, 1.0, 1.0), 1e6, 0.0, 0.0, 100)
    out = apply_camera_model(flat, params, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.abs(out.astype(float) - 255 * srgb_encode(0.5)).max() <= 1.0
    a = apply_camera_model(flat, p1, np.random.default_rng(9))
    assert np.array_equal(a, apply_camera_model(flat, p1, np.random.default_rng(9)))
    with pytest.raises(InvalidInputError, match="rgb_linear"):
        apply_camera_model(flat[..., 0], params, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ depth


def _quiet(**kwargs) -> DepthSensorConfig:
    """No holes or flying pixels unless asked for."""
    base = dict(shadow_width_px=(0, 0), flying_pixel_probability=0.0, dark_dropout_probability=0.0,
                glossy_dropout_probability=0.0)
    return DepthSensorConfig(**{**base, **kwargs})


_GLOSSY = np.array([False, False, True])  # label 0 nothing, 1 matte, 2 glossy


def _simulate(depth, labels, config, seed, albedo=None, lum=None):
    albedo = np.full(depth.shape, 0.5) if albedo is None else albedo
    lum = np.full(depth.shape, 0.5) if lum is None else lum
    return simulate_depth_sensor(depth, labels, _GLOSSY, albedo, lum, np.random.default_rng(seed), config)


def test_depth_noise_grows_with_distance_as_configured():
    config = _quiet(sigma_a_m=1e-3, sigma_b_per_m=2e-3)
    labels = np.ones((100, 200), np.int32)
    for seed, z in enumerate((0.5, 2.0)):
        plane = np.full((100, 200), z, np.float32)
        noisy = _simulate(plane, labels, config, seed)
        assert np.all(noisy > 0)
        assert np.std(noisy - z) == pytest.approx(1e-3 + 2e-3 * z**2, rel=0.05)
        assert np.mean(noisy - z) == pytest.approx(0.0, abs=3e-4)


def _step_scene():
    """A box at 0.6 m in front of a wall at 1.0 m (one matte label)."""
    depth = np.full((60, 80), 1.0, np.float32)
    depth[20:40, 30:50] = 0.6
    return depth, np.ones(depth.shape, np.int32)


def test_silhouette_holes_left_of_foreground_edges():
    depth, labels = _step_scene()
    out = _simulate(depth, labels, _quiet(shadow_width_px=(3, 3), sigma_a_m=0.0, sigma_b_per_m=0.0), 5)
    assert np.all(out[20:40, 27:30] == 0)  # background just left of the box: shadowed
    assert np.all(out[20:40, 30:50] == pytest.approx(0.6))  # the foreground keeps its depth
    assert np.all(out[20:40, 50:] == pytest.approx(1.0)) and np.all(out[:20] == pytest.approx(1.0))
    assert np.all(out[20:40, :27] == pytest.approx(1.0))
    widths = []
    for seed in range(3):  # random widths within the configured range
        out = _simulate(depth, labels, _quiet(shadow_width_px=(1, 4), sigma_a_m=0.0, sigma_b_per_m=0.0), seed)
        widths += list((out[20:40, 20:30] == 0).sum(1))
    assert min(widths) >= 1 and max(widths) <= 4 and len(set(widths)) > 1


def test_flying_pixels_lie_between_foreground_and_background():
    depth, labels = _step_scene()
    config = _quiet(flying_pixel_probability=1.0, sigma_a_m=0.0, sigma_b_per_m=0.0)
    out = _simulate(depth, labels, config, 6)
    edges, _, _ = depth_edges(depth, config.edge_threshold_m, config.edge_threshold_rel)
    flying = edges & (out != depth)
    assert flying.sum() > 0.8 * edges.sum()
    assert np.all((out[flying] > 0.6) & (out[flying] < 1.0))
    assert np.array_equal(out[~edges], depth[~edges])


def test_dark_and_glossy_surfaces_lose_pixels():
    cols = np.arange(600)
    depth = np.full((200, 600), 0.8, np.float32)
    labels = np.where(cols < 450, 1, 2)[None].repeat(200, 0).astype(np.int32)  # matte | glossy
    albedo = np.where((cols >= 300) & (cols < 450), 0.02, 0.5)[None].repeat(200, 0)  # normal | dark | normal
    lum = albedo.copy()  # diffuse shading: luminance proportional to albedo
    lum[:, 450:] *= 10.0  # the glossy band is in a highlight
    config = _quiet(dark_dropout_probability=0.6, glossy_dropout_probability=0.8, sigma_a_m=0.0, sigma_b_per_m=0.0)
    out = _simulate(depth, labels, config, 7, albedo, lum)
    missing = [float((out[:, band] == 0).mean()) for band in (slice(0, 300), slice(300, 450), slice(450, 600))]
    assert missing[0] == 0.0
    assert missing[1] == pytest.approx(0.6, abs=0.06) and missing[2] == pytest.approx(0.8, abs=0.06)
    holes = (out[:, 300:450] == 0).astype(np.uint8)
    assert (holes[:, 1:] == holes[:, :-1]).mean() > 0.8  # in blobs, not isolated pixels (independent: ~0.5)
    # The same glossy surface without a highlight, and a dark surface in bright light: kept.
    out = _simulate(depth, labels, config, 7, albedo, np.where(albedo < 0.05, 10.0, albedo))
    assert np.all(out > 0)


def test_depth_model_leaves_input_untouched_and_checks_shapes():
    depth, labels = _step_scene()
    before = depth.copy()
    _simulate(depth, labels, DepthSensorConfig(), 8)
    assert np.array_equal(depth, before)
    with pytest.raises(InvalidInputError, match="same"):
        _simulate(depth, labels[:10], DepthSensorConfig(), 8)
    with pytest.raises(InvalidInputError, match="glossy_labels"):
        _simulate(depth, labels + 10, DepthSensorConfig(), 8)
    with pytest.raises(InvalidInputError, match="shadow_width_px"):
        DepthSensorConfig(shadow_width_px=(3, 1))
