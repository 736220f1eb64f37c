"""Appearance randomization in linear light: normals, the crop footprint, determinism, bad input."""

import numpy as np
import pytest

from pose_node.core.crop import crop_cameras, crop_intrinsics
from pose_node.core.errors import InvalidInputError
from pose_node.training.domain_randomization import (
    DomainRandomizationConfig,
    crop_footprint,
    depth_normals,
    randomize_appearance,
)

K = np.array([[500.0, 0.0, 319.5], [0.0, 500.0, 239.5], [0.0, 0.0, 1.0]])


def plane_depth(height=480, width=640, slope=0.5, z0=1.0):
    """Depth of the plane z = z0 + slope * x (camera frame), seen through K."""
    cols = np.arange(width)[None].repeat(height, 0).astype(np.float64)
    x = (cols - K[0, 2]) / K[0, 0]
    return (z0 / (1.0 - slope * x)).astype(np.float32)


def test_depth_normals_of_a_tilted_plane_face_the_camera():
    depth = plane_depth()[100:160, 200:260]
    instance = np.ones(depth.shape, np.int32)
    p, n = depth_normals(depth, instance, K, (100, 200))
    expected = np.array([0.5, 0.0, -1.0]) / np.linalg.norm([0.5, 0.0, -1.0])
    inner = n[2:-2, 2:-2].reshape(-1, 3)
    assert np.degrees(np.arccos(np.clip(inner @ expected, -1, 1))).max() < 0.5
    np.testing.assert_allclose(p[..., 2], depth, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)


def test_depth_normals_without_object_face_the_viewer():
    depth = np.zeros((8, 8), np.float32)
    _, n = depth_normals(depth, np.zeros((8, 8), np.int32), K, (0, 0))
    view = np.array([(0 - K[0, 2]) / K[0, 0], (0 - K[1, 2]) / K[1, 1], 1.0])
    np.testing.assert_allclose(n[0, 0], -view / np.linalg.norm(view), atol=1e-5)


def test_crop_footprint_holds_the_outline_and_is_clipped():
    outline = np.array([[300.0, 200.0], [360.0, 200.0], [360.0, 280.0], [300.0, 280.0]])
    R, focal = crop_cameras(K, [outline], 128, 0.05)
    r0, r1, c0, c1 = crop_footprint(K, R[0], float(focal[0]), 128, (480, 640), margin_px=0)
    assert r0 <= 200 and r1 > 280 and c0 <= 300 and c1 > 360
    # Not much bigger than the outline's square (80 px + margins).
    assert r1 - r0 < 110 and c1 - c0 < 110
    corner = np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 30.0], [0.0, 30.0]])
    R, focal = crop_cameras(K, [corner], 128, 0.05)
    r0, r1, c0, c1 = crop_footprint(K, R[0], float(focal[0]), 128, (480, 640), margin_px=5)
    assert r0 == 0 and c0 == 0 and r1 <= 480 and c1 <= 640
    # Sanity of the crop intrinsics the footprint uses.
    assert crop_intrinsics(np.array([100.0]), 128)[0, 0, 2] == pytest.approx(63.5)


def scene(height=120, width=160):
    rng = np.random.default_rng(0)
    albedo = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    depth = np.zeros((height, width), np.float32)
    instance = np.zeros((height, width), np.int32)
    depth[30:90, 40:120] = 0.8
    instance[30:90, 40:120] = 1
    albedo[30:90, 40:120] = 178  # the rasterizer's grey of an untextured mesh
    return albedo, depth, instance


def test_randomize_appearance_is_seeded_and_stays_in_its_region():
    albedo, depth, instance = scene()
    Kc = K.copy()
    Kc[:2, 2] = [79.5, 59.5]
    region = (20, 100, 30, 130)
    config = DomainRandomizationConfig()
    a = randomize_appearance(albedo, depth, instance, Kc, region, {1}, np.random.default_rng(3), config)
    b = randomize_appearance(albedo, depth, instance, Kc, region, {1}, np.random.default_rng(3), config)
    c = randomize_appearance(albedo, depth, instance, Kc, region, {1}, np.random.default_rng(4), config)
    assert a.dtype == np.uint8 and a.shape == albedo.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    outside = np.ones(albedo.shape[:2], bool)
    outside[20:100, 30:130] = False
    np.testing.assert_array_equal(a[outside], albedo[outside])
    assert not np.array_equal(a[20:100, 30:130], albedo[20:100, 30:130])


def test_untextured_objects_are_recoloured():
    albedo, depth, instance = scene()
    Kc = K.copy()
    Kc[:2, 2] = [79.5, 59.5]
    config = DomainRandomizationConfig(untextured_saturation_range=(0.7, 0.8), untextured_value_range=(0.8, 0.9),
                                       specular_probability=0.0)
    chroma = []
    for seed in range(6):
        out = randomize_appearance(albedo, depth, instance, Kc, (0, 120, 0, 160), {1}, np.random.default_rng(seed), config)
        patch = out[40:80, 50:110].reshape(-1, 3).astype(float)
        chroma.append(np.median(patch.max(1) - patch.min(1)))
    # A saturated colour keeps clear chroma through lighting and the camera (grey would be ~0).
    assert min(chroma) > 25


def test_bad_input_raises():
    albedo, depth, instance = scene()
    config = DomainRandomizationConfig()
    with pytest.raises(InvalidInputError, match="share"):
        randomize_appearance(albedo[:10], depth, instance, K, (0, 10, 0, 10), set(), np.random.default_rng(0), config)
    with pytest.raises(InvalidInputError, match="region"):
        randomize_appearance(albedo, depth, instance, K, (50, 50, 0, 10), set(), np.random.default_rng(0), config)
    with pytest.raises(InvalidInputError, match="num_lights_range"):
        DomainRandomizationConfig(num_lights_range=(0, 2))
