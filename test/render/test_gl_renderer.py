"""The GL renderer against geometry known in closed form: pixel convention, metric depth, object
coordinates, occlusion, textures, lighting, batching and input validation."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers.scene import box_model
from render_scenes import K_matrix, quad_model, rotation, sphere_model, translation, unproject

import pose_node.render.context as context_module
from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.render import OUTPUT_NAMES, Renderer, opengl_projection_from_K
from pose_node.render.renderer import RenderSettings, _cull_side


def _identity_poses(n_views: int, n_objects: int) -> np.ndarray:
    return np.tile(np.eye(4), (n_views, n_objects, 1, 1))


def _assert_same_images(a, b, view_a=slice(None), view_b=slice(None)):
    """Equal coverage and colours; depth and xyz up to float rounding (views sit at other rows)."""
    np.testing.assert_array_equal(a.instance[view_a], b.instance[view_b])
    np.testing.assert_allclose(a.rgb[view_a], b.rgb[view_b], atol=1)
    np.testing.assert_allclose(a.depth[view_a], b.depth[view_b], atol=1e-6)
    np.testing.assert_allclose(a.xyz[view_a], b.xyz[view_b], atol=1e-6)


def _pixel_quad(K: np.ndarray, u_range, v_range, z: float, **kwargs):
    """A quad at depth z (camera frame = object frame) spanning the given pixel ranges."""
    (u0, u1), (v0, v1) = u_range, v_range
    corners = unproject(K, np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]]), z)  # TL TR BR BL in the image
    return quad_model(corners, **kwargs)


def test_projection_from_K_maps_K_projection_to_gl_window_coordinates():
    rng = np.random.default_rng(0)
    W, H, near, far = 640, 480, 0.05, 7.0
    K = K_matrix(510.0, 495.0, 301.3, 250.7, skew=1.5)
    p_cam = np.column_stack([rng.uniform(-0.5, 0.5, (50, 2)), rng.uniform(0.2, 5.0, 50)])
    clip = np.column_stack([p_cam, np.ones(50)]) @ opengl_projection_from_K(K, W, H, near, far).T
    ndc = clip[:, :3] / clip[:, 3:]
    window = (ndc[:, :2] + 1.0) / 2.0 * [W, H]  # GL: pixel centres at half-integers
    uv = (p_cam @ K.T)[:, :2] / p_cam[:, 2:]
    np.testing.assert_allclose(window - 0.5, uv, atol=1e-9)
    assert np.allclose(clip[:, 3], p_cam[:, 2])
    z_ndc = (opengl_projection_from_K(K, W, H, near, far) @ [[0, 0], [0, 0], [near, far], [1, 1]])
    np.testing.assert_allclose(z_ndc[2] / z_ndc[3], [-1.0, 1.0], atol=1e-12)


def test_quad_covers_exactly_the_pixel_centres_K_predicts(make_renderer):
    """Edges at fractional pixel positions: a half-pixel offset or a y flip changes the set."""
    W, H = 64, 48
    x_range, y_range = (-0.1, 0.1), (-0.05, 0.08)
    corners = np.array([[x_range[0], y_range[0], 1.0], [x_range[1], y_range[0], 1.0],
                        [x_range[1], y_range[1], 1.0], [x_range[0], y_range[1], 1.0]])
    Ks = np.stack([K_matrix(52.0, 56.0, 15.5, 8.2), K_matrix(103.0, 90.0, 30.2, 20.3)])
    renderer = make_renderer(W, H)
    handle = renderer.add_object(quad_model(corners))
    out = renderer.render(Ks, _identity_poses(2, 1), [handle], outputs=("instance",))
    for K, instance in zip(Ks, out.instance):
        u_edges = K[0, 0] * np.array(x_range) + K[0, 2]
        v_edges = K[1, 1] * np.array(y_range) + K[1, 2]
        cols = (np.arange(W) > u_edges[0]) & (np.arange(W) < u_edges[1])
        rows = (np.arange(H) > v_edges[0]) & (np.arange(H) < v_edges[1])
        np.testing.assert_array_equal(instance, (rows[:, None] & cols[None, :]).astype(np.int32))


def test_small_quad_around_a_point_lands_in_the_rounded_pixel(make_renderer):
    W, H = 80, 60
    K = K_matrix(70.0, 75.0, 39.2, 28.9)
    rng = np.random.default_rng(1)
    renderer = make_renderer(W, H)
    pixels = np.column_stack([rng.choice(np.arange(3, W - 3), 6, replace=False), rng.integers(3, H - 3, 6)])
    handles = []
    for (cu, cv) in pixels:
        u, v = cu + rng.uniform(-0.15, 0.15), cv + rng.uniform(-0.15, 0.15)  # projection of the point
        handles.append(renderer.add_object(_pixel_quad(K, (u - 0.2, u + 0.2), (v - 0.2, v + 0.2), rng.uniform(0.3, 2.0))))
    instance = renderer.render(K[None], _identity_poses(1, len(handles)), handles, outputs=("instance",)).instance[0]
    for m, (cu, cv) in enumerate(pixels):
        rows, cols = np.nonzero(instance == m + 1)
        assert (rows.tolist(), cols.tolist()) == ([cv], [cu]), f"point {m}"


def test_depth_is_metric_z(make_renderer):
    W, H = 48, 36
    K = K_matrix(40.0, 42.0, 23.5, 17.5)
    renderer = make_renderer(W, H)
    plane = renderer.add_object(_pixel_quad(K, (-5, W + 5), (-5, H + 5), 0.5))
    depth = renderer.render(K[None], _identity_poses(1, 1), [plane], outputs=("depth",)).depth[0]
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, 0.5, atol=1e-6)

    # A tilted plane: depth is where each pixel's ray meets it (perspective-correct interpolation).
    big = renderer.add_object(quad_model(4.0 * np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)))
    T = translation(0.05, -0.02, 0.8) @ rotation([0, 1, 0], np.deg2rad(35)) @ rotation([1, 0, 0], np.deg2rad(-20))
    depth = renderer.render(K[None], T[None, None], [big], outputs=("depth",)).depth[0]
    n, q = T[:3, 2], T[:3, 3]
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    expected = (n @ q) / (rays @ n)
    np.testing.assert_allclose(depth, expected, rtol=2e-6)


def test_xyz_maps_back_onto_the_pixel_ray_at_the_rendered_depth(make_renderer):
    W, H = 96, 72
    K = K_matrix(90.0, 88.0, 47.3, 35.6)
    renderer = make_renderer(W, H)
    handles = [renderer.add_object(sphere_model(0.06)), renderer.add_object(box_model([0.05, 0.08, 0.04]))]
    T = np.stack([translation(-0.04, 0.01, 0.45) @ rotation([1, 2, 3], 0.7),
                  translation(0.05, -0.02, 0.5) @ rotation([0, 1, 1], 1.1)])[None]
    out = renderer.render(K[None], T, handles, outputs=("xyz", "depth", "instance"))
    xyz, depth, instance = out.xyz[0], out.depth[0], out.instance[0]
    assert set(np.unique(instance)) == {0, 1, 2}
    assert np.all(xyz[instance == 0] == 0) and np.all(depth[instance == 0] == 0)
    for m in range(2):
        rows, cols = np.nonzero(instance == m + 1)
        p_cam = xyz[rows, cols].astype(np.float64) @ T[0, m, :3, :3].T + T[0, m, :3, 3]
        np.testing.assert_allclose(p_cam[:, 2], depth[rows, cols], atol=2e-6)
        uv = (p_cam @ K.T)[:, :2] / p_cam[:, 2:]
        np.testing.assert_allclose(uv, np.column_stack([cols, rows]), atol=2e-3)


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_object_wins_whatever_the_draw_order(make_renderer, near_first):
    W, H = 64, 48
    K = K_matrix(60.0, 60.0, 31.5, 23.5)
    renderer = make_renderer(W, H)
    small, large = renderer.add_object(box_model([0.04, 0.04, 0.04])), renderer.add_object(box_model([0.2, 0.2, 0.02]))
    poses = {small: translation(0, 0, 0.4), large: translation(0, 0, 0.6)}
    order = [small, large] if near_first else [large, small]
    out = renderer.render(K[None], np.stack([poses[h] for h in order])[None], order)
    label = {h: i + 1 for i, h in enumerate(order)}
    assert out.instance[0, 23, 31] == label[small]
    assert out.depth[0, 23, 31] == pytest.approx(0.38, abs=1e-5)
    assert out.instance[0, 23, 24] == label[large]  # the large box spans columns 22..41, the small one 29..34
    assert out.depth[0, 23, 24] == pytest.approx(0.59, abs=1e-5)
    # The small box's silhouette: 0.04 m at 0.38 m -> about 6.3 px wide, all of it labelled small.
    assert 25 <= (out.instance[0] == label[small]).sum() <= 49


def test_one_handle_placed_twice_gives_two_instances(make_renderer):
    W, H = 64, 48
    K = K_matrix(60.0, 60.0, 31.5, 23.5)
    renderer = make_renderer(W, H)
    box = renderer.add_object(box_model([0.05, 0.05, 0.05]))
    T = np.stack([translation(-0.08, 0, 0.5), translation(0.08, 0, 0.5)])[None]
    instance = renderer.render(K[None], T, [box, box], outputs=("instance",)).instance[0]
    left, right = (instance == 1).sum(), (instance == 2).sum()
    assert left > 20 and left == right
    assert np.nonzero(instance == 1)[1].max() < 31 < np.nonzero(instance == 2)[1].min()


def test_texture_quadrants_show_up_where_the_uv_convention_puts_them(make_renderer):
    """uv follows OpenGL: v = 0 is the bottom row of the texture image."""
    W, H = 64, 64
    K = K_matrix(60.0, 60.0, 31.5, 31.5)
    texture = np.zeros((64, 64, 3), np.uint8)
    colours = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (0, 0, 255), "br": (255, 255, 255)}
    texture[:32, :32], texture[:32, 32:] = colours["tl"], colours["tr"]
    texture[32:, :32], texture[32:, 32:] = colours["bl"], colours["br"]
    uv = [[0, 1], [1, 1], [1, 0], [0, 0]]  # corners TL TR BR BL (as seen in the image)
    renderer = make_renderer(W, H, ambient=1.0, diffuse=0.0)
    quad = renderer.add_object(_pixel_quad(K, (8, 56), (8, 56), 0.5, uv=uv, texture=texture))
    rgb = renderer.render(K[None], _identity_poses(1, 1), [quad], outputs=("rgb",)).rgb[0]
    for name, (row, col) in {"tl": (20, 20), "tr": (20, 44), "bl": (44, 20), "br": (44, 44)}.items():
        np.testing.assert_allclose(rgb[row, col], colours[name], atol=2, err_msg=name)


def test_vertex_colours_and_untextured_grey(make_renderer):
    W, H = 32, 32
    K = K_matrix(30.0, 30.0, 15.5, 15.5)
    renderer = make_renderer(W, H, ambient=1.0, diffuse=0.0)
    coloured = renderer.add_object(_pixel_quad(K, (2, 14), (2, 30), 0.5, vertex_colors=np.tile([200, 100, 50], (4, 1))))
    grey = renderer.add_object(_pixel_quad(K, (17, 30), (2, 30), 0.5))
    rgb = renderer.render(K[None], _identity_poses(1, 2), [coloured, grey], outputs=("rgb",)).rgb[0]
    np.testing.assert_allclose(rgb[16, 8], [200, 100, 50], atol=1)
    np.testing.assert_allclose(rgb[16, 24], [round(0.7 * 255)] * 3, atol=1)


def test_light_direction_is_the_direction_the_light_travels(make_renderer):
    W, H = 32, 32
    K = K_matrix(30.0, 30.0, 15.5, 15.5)
    renderer = make_renderer(W, H)
    plane = renderer.add_object(_pixel_quad(K, (-2, 34), (-2, 34), 0.5))  # faces the camera (two-sided)
    rgb = renderer.render(
        np.stack([K, K, K]), _identity_poses(3, 1), [plane], outputs=("rgb",),
        light_dir_cam=np.array([[0, 0, 1.0], [0, 0, -2.0], [1.0, 0, 1.0]]), ambient=np.array([0.2, 0.2, 0.1]),
        diffuse=np.array([0.5, 0.5, 0.8]),
    ).rgb
    grey = round(0.7 * 255)
    np.testing.assert_allclose(rgb[0, 16, 16], [grey * 0.7] * 3, atol=1.5)  # travels away from the camera: lit
    np.testing.assert_allclose(rgb[1, 16, 16], [grey * 0.2] * 3, atol=1.5)  # travels towards it: ambient only
    np.testing.assert_allclose(rgb[2, 16, 16], [grey * (0.1 + 0.8 / np.sqrt(2))] * 3, atol=1.5)


def test_background_image_behind_the_objects(make_renderer):
    W, H = 40, 30
    K = K_matrix(35.0, 35.0, 19.5, 14.5)
    renderer = make_renderer(W, H, ambient=1.0, diffuse=0.0)
    quad = renderer.add_object(_pixel_quad(K, (10, 30), (5, 25), 0.5, vertex_colors=np.tile([9, 9, 9], (4, 1))))
    background = np.random.default_rng(2).integers(10, 256, (2, H, W, 3), dtype=np.uint8)
    out = renderer.render(np.stack([K, K]), _identity_poses(2, 1), [quad], outputs=("rgb", "instance"), background=background)
    mask = out.instance > 0
    np.testing.assert_array_equal(out.rgb[~mask], background[~mask])
    assert mask.sum() == 2 * 20 * 20 and np.all(out.rgb[mask] == 9)


@pytest.mark.parametrize("n_views", [1, 5])
def test_batch_shapes_and_dtypes(make_renderer, n_views):
    W, H = 40, 30
    K = np.repeat(K_matrix(35.0, 35.0, 19.5, 14.5)[None], n_views, 0)
    renderer = make_renderer(W, H)
    box = renderer.add_object(box_model([0.1, 0.1, 0.1]))
    # Nearer and nearer: the last views overflow the image (and must not spill into their neighbours).
    T = np.stack([translation(0.01 * v, 0, 0.4 - 0.07 * v) @ rotation([0, 1, 0], 0.3 * v) for v in range(n_views)])[:, None]
    out = renderer.render(K, T, [box])
    assert out.rgb.shape == (n_views, H, W, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (n_views, H, W) and out.depth.dtype == np.float32
    assert out.xyz.shape == (n_views, H, W, 3) and out.xyz.dtype == np.float32
    assert out.instance.shape == (n_views, H, W) and out.instance.dtype == np.int32
    assert all((out.instance[v] == 1).sum() > 50 for v in range(n_views))
    for v in range(n_views):  # each view matches the same view rendered alone
        _assert_same_images(out, renderer.render(K[v : v + 1], T[v : v + 1], [box]), v, 0)


def test_no_objects_gives_empty_images(make_renderer):
    W, H = 24, 16
    renderer = make_renderer(W, H, background_rgb=(10, 20, 30))
    out = renderer.render(np.repeat(K_matrix(20, 20, 11.5, 7.5)[None], 3, 0), np.zeros((3, 0, 4, 4)), [])
    assert out.rgb.shape == (3, H, W, 3) and np.all(out.rgb == [10, 20, 30])
    assert not out.depth.any() and not out.xyz.any() and not out.instance.any()


@pytest.mark.parametrize("outputs", [("depth",), ("instance",), ("xyz",), ("rgb",), ("rgb", "depth", "instance"), ("xyz", "instance")])
def test_requested_outputs_only_and_equal_to_the_full_render(make_renderer, outputs):
    W, H = 48, 36
    K = K_matrix(45.0, 44.0, 23.5, 17.5)
    renderer = make_renderer(W, H, background_rgb=(5, 6, 7))
    handles = [renderer.add_object(sphere_model(0.05)), renderer.add_object(box_model([0.06, 0.03, 0.05]))]
    T = np.stack([translation(-0.02, 0, 0.4), translation(0.03, 0.01, 0.45) @ rotation([1, 1, 0], 0.5)])[None]
    full = renderer.render(K[None], T, handles)
    part = renderer.render(K[None], T, handles, outputs=outputs)
    for name in OUTPUT_NAMES:
        if name in outputs:
            np.testing.assert_array_equal(getattr(part, name), getattr(full, name), err_msg=name)
        else:
            assert getattr(part, name) is None, name


def test_several_passes_equal_one_pass(make_renderer):
    W, H = 40, 30
    K = np.stack([K_matrix(35.0 + v, 36.0, 19.5 - v, 14.5) for v in range(5)])
    T = np.stack([translation(0.01 * v, -0.01, 0.4) @ rotation([1, 0, 1], 0.4 * v) for v in range(5)])[:, None]
    results = []
    for renderer in (make_renderer(W, H), make_renderer(W, H, max_pixels_per_pass=2 * W * H)):
        box = renderer.add_object(box_model([0.05, 0.04, 0.06]))
        results.append(renderer.render(K, T, [box]))
    _assert_same_images(*results)


def test_back_face_culling_is_automatic_and_changes_nothing(make_renderer):
    sphere = sphere_model(0.05, subdivisions=3)
    inward = quad = None
    inward = sphere.__class__(**{**sphere.__dict__, "faces": sphere.faces[:, ::-1].copy()})
    quad = quad_model(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], float))
    assert (_cull_side(sphere, None), _cull_side(inward, None), _cull_side(quad, None)) == ("back", "front", None)
    assert (_cull_side(quad, True), _cull_side(sphere, False)) == ("back", None)

    W, H = 48, 36
    K = np.stack([K_matrix(45.0, 44.0, 23.5, 17.5)] * 2)
    T = np.stack([translation(0.01, 0, 0.3), translation(-0.02, 0.01, 0.25) @ rotation([1, 2, 0], 2.0)])[:, None]
    auto, never = make_renderer(W, H), make_renderer(W, H, cull_back_faces=False)
    reference = never.render(K, T, [never.add_object(sphere)], outputs=("depth", "instance"))
    for model in (sphere, inward):
        culled = auto.render(K, T, [auto.add_object(model)], outputs=("depth", "instance"))
        np.testing.assert_array_equal(culled.instance, reference.instance)
        np.testing.assert_allclose(culled.depth, reference.depth, atol=1e-6)


def test_render_from_another_thread(make_renderer):
    W, H = 32, 24
    K = K_matrix(30.0, 30.0, 15.5, 11.5)[None]
    renderer = make_renderer(W, H)
    box = renderer.add_object(box_model([0.05, 0.05, 0.05]))
    T = translation(0, 0, 0.3)[None, None]
    expected = renderer.render(K, T, [box]).depth
    results = []
    worker = threading.Thread(target=lambda: results.append(renderer.render(K, T, [box]).depth))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], expected)


def _valid_args(V=2, M=1):
    return {
        "K": np.repeat(K_matrix(30.0, 30.0, 15.5, 11.5)[None], V, 0),
        "T_camera_object": np.tile(translation(0, 0, 0.3), (V, M, 1, 1)),
        "objects": [0] * M,
    }


@pytest.mark.parametrize(
    "change, name",
    [
        ({"K": K_matrix(30.0, 30.0, 15.5, 11.5)}, "K"),
        ({"K": np.repeat(K_matrix(-30.0, 30.0, 15.5, 11.5)[None], 2, 0)}, "K"),
        ({"T_camera_object": np.tile(np.eye(4), (2, 1, 1))}, "T_camera_object"),
        ({"T_camera_object": np.tile(np.eye(4), (3, 1, 1, 1))}, "T_camera_object"),
        ({"T_camera_object": np.full((2, 1, 4, 4), np.nan)}, "T_camera_object"),
        ({"objects": [0, 0]}, "objects"),
        ({"objects": [7]}, "objects"),
        ({"objects": "0"}, "objects"),
        ({"outputs": ("rgb", "normals")}, "outputs"),
        ({"outputs": ()}, "outputs"),
        ({"light_dir_cam": np.ones((2, 2))}, "light_dir_cam"),
        ({"light_dir_cam": np.zeros((2, 3))}, "light_dir_cam"),
        ({"ambient": np.ones(3)}, "ambient"),
        ({"diffuse": np.ones((2, 1))}, "diffuse"),
        ({"background": np.zeros((2, 24, 32, 3), np.float32)}, "background"),
        ({"background": np.zeros((2, 32, 24, 3), np.uint8)}, "background"),
    ],
)
def test_wrong_inputs_raise_naming_the_argument(make_renderer, change, name):
    renderer = make_renderer(32, 24)
    if not renderer._objects:
        renderer.add_object(box_model([0.05, 0.05, 0.05]))
    with pytest.raises(InvalidInputError, match=rf"^{name}\b"):
        renderer.render(**{**_valid_args(), **change})


def test_bad_settings_and_models_raise():
    with pytest.raises(InvalidInputError, match="near_m"):
        RenderSettings(near_m=1.0, far_m=0.5)
    with pytest.raises(InvalidInputError, match="light_dir_cam"):
        RenderSettings(light_dir_cam=(0.0, 0.0, 0.0))
    with pytest.raises(InvalidInputError, match="width and height"):
        Renderer(0, 10)
    bad = box_model([0.05, 0.05, 0.05])
    bad = bad.__class__(**{**bad.__dict__, "faces": bad.faces + 100})
    with pytest.raises(InvalidInputError, match="faces"):
        Renderer(8, 8).add_object(bad)  # rejected before any GL work


def test_missing_egl_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(context_module, "find_library", lambda name: None)
    renderer = Renderer(8, 8)  # the context is created lazily
    with pytest.raises(StageUnavailableError, match=r"libEGL\.so\.1.*libGL\.so\.1.*apt-get install libegl1"):
        renderer.render(**_valid_args(M=0) | {"objects": []})


def test_released_renderer_refuses_work():
    renderer = Renderer(8, 8)
    renderer.release()
    with pytest.raises(StageUnavailableError, match="release"):
        renderer.add_object(box_model([0.05, 0.05, 0.05]))
