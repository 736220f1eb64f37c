import numpy as np
import pytest

from pose_node.scene.appearance import (
    TEXTURE_KINDS, AppearanceConfig, add_depth_noise, add_rgb_noise, depth_discontinuities, jitter_lighting,
    procedural_texture, sample_lighting,
)


@pytest.mark.parametrize("kind", TEXTURE_KINDS)
def test_textures(kind):
    a = procedural_texture(np.random.default_rng(1), 64, 96, kind)
    b = procedural_texture(np.random.default_rng(1), 64, 96, kind)
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.std() > 1.0  # never flat
    with pytest.raises(ValueError, match="unknown texture kind"):
        procedural_texture(np.random.default_rng(1), 8, 8, "marble")


def test_lighting_direction():
    config = AppearanceConfig()
    rng = np.random.default_rng(0)
    for _ in range(20):
        light = sample_lighting(rng, config)
        assert np.linalg.norm(light.direction_world) == pytest.approx(1.0)
        elevation = np.rad2deg(np.arcsin(light.direction_world[2]))
        assert config.light_elevation_range_deg[0] - 1e-9 <= elevation <= config.light_elevation_range_deg[1] + 1e-9
        assert config.ambient_range[0] <= light.ambient <= config.ambient_range[1]
        moved = jitter_lighting(light, rng, config)
        angle = np.rad2deg(np.arccos(np.clip(moved.direction_world @ light.direction_world, -1, 1)))
        assert angle <= config.per_frame_light_jitter_deg + 1e-6
    # A camera looking straight down (optical z = world -z): a light overhead points to -z in the camera.
    T_world_camera = np.diag([1.0, -1.0, -1.0, 1.0])
    light = sample_lighting(rng, config)
    np.testing.assert_allclose(light.direction_in_camera(T_world_camera), light.direction_world * [1, -1, -1])


def test_depth_noise_scales_with_z_squared():
    config = AppearanceConfig(depth_noise=True, dropout_fraction=0.0)
    for z in (0.5, 1.0, 2.0):
        depth = np.full((200, 200), z, np.float32)
        noisy = add_depth_noise(depth, np.random.default_rng(0), config)
        assert np.all(noisy > 0)
        assert noisy.std() == pytest.approx(1.5e-3 * z**2, rel=0.05)
        assert abs(noisy.mean() - z) < 1e-4


def test_depth_holes_random_and_at_edges():
    depth = np.full((120, 160), 0.8, np.float32)
    depth[:, 80:] = 1.0  # a 20 cm step
    depth[:10] = 0.0  # no return
    config = AppearanceConfig(depth_noise=True, dropout_fraction=0.05, edge_dropout_probability=1.0)
    noisy = add_depth_noise(depth, np.random.default_rng(0), config)
    assert np.all(noisy[:10] == 0)
    edges = depth_discontinuities(depth, config.edge_threshold_m)
    assert edges[10:, 79:81].all() and edges.sum() == 2 * 110
    assert np.all(noisy[edges] == 0)
    holes = (noisy == 0) & (depth > 0) & ~edges
    assert 0.02 < holes.mean() < 0.08
    assert np.array_equal(noisy, add_depth_noise(depth, np.random.default_rng(0), config))


def test_rgb_noise():
    rgb = np.full((50, 50, 3), 128, np.uint8)
    noisy = add_rgb_noise(rgb, np.random.default_rng(0), 2.0)
    assert noisy.dtype == np.uint8 and noisy.std() == pytest.approx(2.0, rel=0.1)
    assert add_rgb_noise(rgb, np.random.default_rng(0), 0.0) is rgb
