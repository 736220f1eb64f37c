"""Path tracer: Mitsuba views agree pixel for pixel with the rasterizer (camera, texture and colour conventions).

Small images (160x120) at the ``preview`` quality keep each test within a few seconds.
"""
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("mitsuba")

from pose_node.core.geometry import invert_rigid  # noqa: E402
from pose_node.core.types import Camera  # noqa: E402
from pose_node.onboarding.procedural import make_procedural_objects  # noqa: E402
from pose_node.render.reference import rasterize_reference  # noqa: E402
from pose_node.render.renderer import Renderer  # noqa: E402
from pose_node.scene.appearance import procedural_texture  # noqa: E402
from pose_node.scene.clutter import ClutterConfig, ClutterItem, clutter_model, place_distractors  # noqa: E402
from pose_node.scene.layout import look_at, make_table_model  # noqa: E402
from pose_node.scene.path_tracer import PathTracer, view_cache_key  # noqa: E402
from pose_node.scene.photoreal import (  # noqa: E402
    QUALITY_PRESETS, LightingConfig, PhotorealScene, PhotorealShape, sample_lights, sample_material,
)
from pose_node.scene.placement import place_objects  # noqa: E402
from pose_node.scene.sensor_model import luminance, srgb_decode  # noqa: E402

WIDTH, HEIGHT = 160, 120
MIN_PIXELS = 60  # IoU of smaller silhouettes is dominated by their boundary pixels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _scene_and_camera(fx: float, fy: float, cx: float, cy: float):
    rng = np.random.default_rng(5)
    models = make_procedural_objects(3, 5)
    placed = place_objects(models, [0, 1, 2], rng, table_size_m=(1.2, 0.9))
    distractors = place_distractors(rng, placed, (1.2, 0.9), ClutterConfig(num_distractors=(3, 3)))
    table = make_table_model((1.2, 0.9), 0.04, procedural_texture(rng, 64, 64))
    shapes = [PhotorealShape(models[p.model_index], p.T_world_object, sample_material(rng), i + 1) for i, p in enumerate(placed)]
    shapes.append(PhotorealShape(table, np.eye(4), sample_material(rng), 4))
    shapes += [PhotorealShape(clutter_model(d), d.T_world_object, sample_material(rng), 5 + i) for i, d in enumerate(distractors)]
    centre = np.append(np.mean([p.T_world_object[:2, 3] for p in placed], 0), 0.03)
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    camera = Camera(K, WIDTH, HEIGHT, look_at(centre + [0.35, -0.25, 0.4], centre))
    return PhotorealScene(tuple(shapes), sample_lights(rng, LightingConfig())), camera


@pytest.mark.parametrize("intrinsics", [(150.0, 150.0, 79.5, 59.5), (160.0, 152.0, 71.3, 64.8)], ids=["square", "fx!=fy_offcentre"])
def test_path_traced_silhouettes_align_with_rasterizer(intrinsics):
    """Mitsuba's per-pixel shape labels agree with the rasterizer that makes mask_visib (and with the reference)."""
    scene, camera = _scene_and_camera(*intrinsics)
    render = PathTracer(QUALITY_PRESETS["preview"], None).render(scene, camera, seed=0)
    assert render.linear.shape == (HEIGHT, WIDTH, 3) and np.isfinite(render.linear).all() and render.linear.mean() > 0
    T_camera_world = invert_rigid(camera.T_world_camera)
    T = np.stack([T_camera_world @ s.T_world_object for s in scene.shapes])[None]
    with Renderer(WIDTH, HEIGHT) as gl:
        handles = [gl.add_object(replace(s.model, uv=None, texture=None)) for s in scene.shapes]
        gl_labels = gl.render(camera.K[None], T, handles, outputs=("instance",)).instance[0]
    objects = [i for i, s in enumerate(scene.shapes) if s.label != 4]  # the table's big triangles reach behind the camera
    _, _, ref = rasterize_reference(camera.K[None], T[:, objects], [scene.shapes[i].model for i in objects], WIDTH, HEIGHT)
    ref_labels = np.array([0] + [scene.shapes[i].label for i in objects])[ref[0]]
    checked = 0
    for shape in scene.shapes:
        if shape.label == 4 or (gl_labels == shape.label).sum() < MIN_PIXELS:
            continue
        iou = _iou(render.labels == shape.label, gl_labels == shape.label)
        assert iou > 0.98, f"label {shape.label}: IoU {iou:.3f} with the rasterizer"
        # Pixels of the reference show the object where nothing else (the table) is in front.
        assert _iou((render.labels == shape.label) & (ref_labels > 0), ref_labels == shape.label) > 0.98
        checked += 1
    assert checked >= 3


def test_cache_key_depends_on_every_input():
    scene, camera = _scene_and_camera(150.0, 150.0, 79.5, 59.5)
    quality = QUALITY_PRESETS["preview"]
    base = view_cache_key(scene, camera, quality, 1, "3.9.1")
    moved = list(scene.shapes)
    T = moved[0].T_world_object.copy()
    T[0, 3] += 1e-4
    moved[0] = replace(moved[0], T_world_object=T)
    glossier = list(scene.shapes)
    glossier[1] = replace(glossier[1], material=replace(glossier[1].material, roughness=0.01))
    others = [
        view_cache_key(scene, camera, quality, 2, "3.9.1"),
        view_cache_key(scene, camera, QUALITY_PRESETS["default"], 1, "3.9.1"),
        view_cache_key(scene, camera, quality, 1, "3.9.2"),
        view_cache_key(replace(scene, shapes=tuple(moved)), camera, quality, 1, "3.9.1"),
        view_cache_key(replace(scene, shapes=tuple(glossier)), camera, quality, 1, "3.9.1"),
        view_cache_key(replace(scene, lights=replace(scene.lights, environment_yaw_deg=1.0)), camera, quality, 1, "3.9.1"),
        view_cache_key(scene, replace(camera, K=camera.K + np.diag([1e-3, 0, 0])), quality, 1, "3.9.1"),
    ]
    assert base == view_cache_key(scene, camera, quality, 1, "3.9.1")
    assert len({base, *others}) == len(others) + 1


def test_texture_orientation_matches_the_rasterizer():
    """ObjectModel uv (OpenGL, v = 0 at the bottom image row) maps the same texels in both renderers."""
    texture = np.zeros((32, 32, 3), np.uint8)
    texture[:16, :16] = (255, 0, 0)  # top-left red, bottom-right blue, the rest green
    texture[16:, 16:] = (0, 0, 255)
    texture[:16, 16:] = texture[16:, :16] = (0, 255, 0)
    quad = clutter_model(ClutterItem("wall", (0.4, 0.3, 0.0), np.eye(4), "wall"), texture, texel_m=0.4 / 32)
    quad = replace(quad, uv=(quad.vertices[:, :2] / [0.4, 0.3] + 0.5).astype(np.float32))  # one tile over the quad
    # Camera 0.5 m in front of the quad (on its +z side), image right = object +x, image down = object -y.
    T_world_camera = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.5], [0, 0, 0, 1]])
    camera = Camera(np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]]), WIDTH, HEIGHT, T_world_camera)
    lights = replace(sample_lights(np.random.default_rng(0), LightingConfig(num_point_lights=(0, 0), num_spot_lights=(0, 0))),
                     lights=())
    matte = replace(sample_material(np.random.default_rng(0), "matte"), specular=0.0)
    pt = PathTracer(QUALITY_PRESETS["preview"], None).render(PhotorealScene((PhotorealShape(quad, np.eye(4), matte, 1),), lights),
                                                             camera, seed=0)
    with Renderer(WIDTH, HEIGHT) as gl:
        gl_rgb = gl.render(camera.K[None], invert_rigid(T_world_camera)[None, None], [gl.add_object(quad)], outputs=("rgb",)).rgb[0]
    for channel in (0, 2):  # red and blue quadrants
        others = [c for c in range(3) if c != channel]
        pt_mask = pt.linear[..., channel] > 2 * pt.linear[..., others].max(-1)
        gl_mask = gl_rgb[..., channel].astype(int) > 2 * gl_rgb[..., others].max(-1).astype(int)
        assert gl_mask.sum() > 500 and _iou(pt_mask, gl_mask) > 0.9
    ys, xs = np.nonzero(gl_rgb[..., 0] > 2 * gl_rgb[..., 1:].max(-1).astype(int))
    assert xs.mean() < WIDTH / 2 and ys.mean() < HEIGHT / 2  # red top-left in the image, as in the texture


def test_vertex_colours_are_the_base_colour():
    """Vertex colours (sRGB uint8) reach the path tracer's albedo as linear values at the right vertices."""
    quad = clutter_model(ClutterItem("wall", (0.4, 0.3, 0.0), np.eye(4), "wall"))
    colours = np.where(quad.vertices[:, :1] < 0, [[200, 30, 30]], [[30, 30, 200]]).astype(np.uint8)  # left red, right blue
    quad = replace(quad, vertex_colors=colours)
    T_world_camera = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0.5], [0, 0, 0, 1]])  # image right = object +x
    camera = Camera(np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]]), WIDTH, HEIGHT, T_world_camera)
    lights = replace(sample_lights(np.random.default_rng(0), LightingConfig()), lights=())
    matte = replace(sample_material(np.random.default_rng(0), "matte"), specular=0.0)
    render = PathTracer(QUALITY_PRESETS["preview"], None).render(
        PhotorealScene((PhotorealShape(quad, np.eye(4), matte, 1),), lights), camera, seed=0)
    left, right = render.linear[50:70, 2:8].mean((0, 1)), render.linear[50:70, 152:158].mean((0, 1))  # near the sides
    assert left[0] > 3 * left[2] and right[2] > 3 * right[0]
    # The albedo pass sees the vertex colour, linear, near the quad's left side.
    assert render.albedo[60, 3] == pytest.approx(luminance(srgb_decode(np.array([200, 30, 30]) / 255.0)), rel=0.1)
