"""Photoreal workcells: GT exactness, clutter, materials and lights, reproducibility and the cache.

Small images (160x120) at the ``preview`` quality keep each test within a few seconds. The pixel
alignment of the path tracer with the rasterizer is tested in ``test_path_tracer.py``.
"""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mitsuba")

from pose_node.datasets.bop import BopDataset  # noqa: E402
from pose_node.onboarding.procedural import make_procedural_objects  # noqa: E402
from pose_node.render.reference import rasterize_reference  # noqa: E402
from pose_node.scene.clutter import ClutterItem, clutter_model  # noqa: E402
from pose_node.scene.cli import main as pose_scene  # noqa: E402
from pose_node.scene.generator import WorkcellConfig, generate_workcell, read_scene_world  # noqa: E402
from pose_node.scene.layout import LayoutConfig  # noqa: E402
from pose_node.scene.path_tracer import PathTracer  # noqa: E402
from pose_node.scene.photoreal import LightingConfig, PhotorealConfig, sample_lights, sample_material  # noqa: E402

WIDTH, HEIGHT = 160, 120
MIN_PIXELS = 60  # IoU of smaller silhouettes is dominated by their boundary pixels


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def photoreal_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photoreal")
    config = WorkcellConfig(
        out_dir=root / "out", num_objects=3, max_instances_per_object=2, num_scenes=1, frames_per_scene=1, seed=12,
        write_bag=False, layout=LayoutConfig(num_cameras=2, width_px=WIDTH, height_px=HEIGHT),
        photoreal=PhotorealConfig(quality="preview", cache_dir=root / "cache"),
    )
    return generate_workcell(config)


def test_gt_masks_match_independent_rasterization(photoreal_dataset):
    """mask / mask_visib (with distractors occluding) agree with rasterize_reference of the GT models at the GT poses."""
    ds = BopDataset(photoreal_dataset)
    world = read_scene_world(photoreal_dataset / "scene_world.json")
    models = {m.object_id: m for m in make_procedural_objects(3, 12)}
    distractors = [ClutterItem.from_json(c) for c in world["scenes"][0]["clutter"] if c["role"] == "distractor"]
    assert distractors, "the test seed should place distractors"
    occluders = [clutter_model(item) for item in distractors]
    checked_visib = 0
    for im_id in ds.image_ids(0):
        camera = ds.camera(0, im_id)
        gts = ds.gts(0, im_id)
        T_cam = [gt.T_camera_object for gt in gts] + [camera.T_camera_world @ d.T_world_object for d in distractors]
        _, _, instance = rasterize_reference(camera.K[None], np.stack(T_cam)[None], [models[g.obj_id] for g in gts] + occluders,
                                             WIDTH, HEIGHT)
        for k, gt in enumerate(gts):
            mask, visib = ds.mask(0, im_id, k), ds.mask_visib(0, im_id, k)
            _, _, alone = rasterize_reference(camera.K[None], gt.T_camera_object[None, None], [models[gt.obj_id]], WIDTH, HEIGHT)
            if mask.sum() >= MIN_PIXELS:
                assert _iou(mask, alone[0] > 0) > 0.98, f"image {im_id} gt {k}: mask"
            if visib.sum() >= MIN_PIXELS:
                assert _iou(visib, instance[0] == k + 1) > 0.98, f"image {im_id} gt {k}: mask_visib"
                checked_visib += 1
    assert checked_visib >= 4


def test_clutter_is_in_the_geometry_pass(photoreal_dataset):
    """Depth (noisy but present) covers room and distractors; GT instances stay the objects only."""
    ds = BopDataset(photoreal_dataset)
    world = read_scene_world(photoreal_dataset / "scene_world.json")
    roles = {c["role"] for c in world["scenes"][0]["clutter"]}
    assert {"floor", "wall", "leg", "distractor"} <= roles
    assert world["config"]["photoreal"]["quality"] == "preview"
    for im_id in ds.image_ids(0):
        assert {g.obj_id for g in ds.gts(0, im_id)} <= {1, 2, 3}
        depth = ds.depth_m(0, im_id)
        assert (depth > 0).mean() > 0.5  # walls and floor return depth: no empty background


def _run(out: Path, cache: Path) -> None:
    rc = pose_scene(["--out", str(out), "--num-objects", "2", "--cameras", "1", "--frames-per-scene", "2", "--width", "96",
                     "--height", "72", "--seed", "7", "--photoreal", "--photoreal-quality", "preview", "--render-cache", str(cache),
                     "--depth-encoding", "16UC1"])
    assert rc == 0


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "test").rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_cache_hits(tmp_path, monkeypatch):
    _run(tmp_path / "a", tmp_path / "cache")
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 2  # 1 camera x 2 frames (the light moves between frames)
    renders = []
    original = PathTracer.render

    def counting(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        renders.append(result.cached)
        return result

    monkeypatch.setattr(PathTracer, "render", counting)
    _run(tmp_path / "b", tmp_path / "cache")
    assert renders == [True, True]
    _run(tmp_path / "c", tmp_path / "fresh_cache")  # a miss gives the same bytes as a hit
    assert renders[2:] == [False, False]
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) > 0 and a == b == c
    bag_a = sorted((tmp_path / "a" / "bag").glob("*.mcap"))
    assert bag_a and bag_a[0].stat().st_size == sorted((tmp_path / "b" / "bag").glob("*.mcap"))[0].stat().st_size
    gt = json.loads((tmp_path / "a" / "test" / "000000" / "scene_gt.json").read_text())
    assert set(gt) == {"0", "1"}


def test_config_validation():
    with pytest.raises(ValueError, match="quality"):
        PhotorealConfig(quality="ultra")


def test_materials_span_matte_glossy_metal_dark():
    rng = np.random.default_rng(0)
    materials = [sample_material(rng) for _ in range(200)]
    glossy = np.mean([m.glossy for m in materials])
    dark = np.mean([m.brightness < 0.25 for m in materials])
    metal = np.mean([m.metallic > 0.5 for m in materials])
    assert 0.25 < glossy < 0.6 and 0.08 < dark < 0.25 and 0.04 < metal < 0.2
    for m in materials:
        assert 0 <= m.roughness <= 1 and 0 <= m.specular <= 1 and 0 <= m.metallic <= 1 and 0 < m.brightness <= 1
        assert all(0 <= c <= 1 for c in m.colour)


def test_lights_follow_their_ranges_and_jitter():
    from pose_node.scene.photoreal import jitter_lights

    config = LightingConfig()
    rng = np.random.default_rng(1)
    for _ in range(10):
        setup = sample_lights(rng, config)
        kinds = [light.kind for light in setup.lights]
        assert config.num_area_lights[0] <= kinds.count("area") <= config.num_area_lights[1]
        assert kinds.count("point") <= config.num_point_lights[1] and kinds.count("spot") <= config.num_spot_lights[1]
        for light in setup.lights:
            assert config.light_height_m[0] <= light.position_m[2] <= config.light_height_m[1]
            assert min(light.rgb) >= 0 and max(light.rgb) > 0
        env = setup.environment
        assert env.shape == (config.environment_size_px[1], config.environment_size_px[0], 3) and env.dtype == np.float32
        assert env[: len(env) // 2].mean() > env[len(env) // 2 :].mean()  # the sky is brighter than the ground
        moved = jitter_lights(setup, rng, config)
        for a, b in zip(setup.lights, moved.lights):
            shift = np.abs(np.subtract(a.position_m, b.position_m)).max()
            assert shift == 0 if a.kind == "area" else shift <= config.per_frame_jitter_m


def test_mitsuba_is_imported_lazily():
    """The node and the rasterized generator never load mitsuba."""
    import subprocess
    import sys

    code = ("import sys, pose_node.scene, pose_node.scene.cli; "
            "from pose_node.scene.photoreal import PhotorealConfig; PhotorealConfig(); import pose_node.scene.path_tracer; "
            "assert 'mitsuba' not in sys.modules, 'mitsuba imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_untextured_models_get_plain_or_procedural_colours():
    from pose_node.core.types import is_untextured
    from pose_node.scene.photoreal import appearance_model

    textured = make_procedural_objects(1, 3)[0]
    assert appearance_model(textured, np.random.default_rng(0)) is textured
    grey = replace(textured, uv=None, texture=None, vertex_colors=np.full((len(textured.vertices), 3), 128, np.uint8))
    assert is_untextured(grey)
    outcomes = [appearance_model(grey, np.random.default_rng(seed)) for seed in range(8)]
    plain = [m for m in outcomes if m.vertex_colors is None]
    patterned = [m for m in outcomes if m.vertex_colors is not None]
    assert plain and patterned
    for m in patterned:
        assert not is_untextured(m) and m.vertex_colors.shape == grey.vertex_colors.shape
        assert len(np.unique(m.vertex_colors, axis=0)) > 10
    for m in outcomes:
        assert np.array_equal(m.vertices, grey.vertices) and np.array_equal(m.faces, grey.faces)


def test_untextured_bop_models_render(tmp_path):
    """A BOP models directory of untextured PLYs (as T-LESS) goes through the photoreal path."""
    from pose_node.datasets.bop import write_bop_models

    models = [replace(m, uv=None, texture=None) for m in make_procedural_objects(2, 4)]
    write_bop_models(tmp_path / "models", models)
    out = tmp_path / "out"
    rc = pose_scene(["--out", str(out), "--objects", str(tmp_path / "models"), "--num-objects", "2", "--cameras", "1",
                     "--frames-per-scene", "1", "--width", "80", "--height", "60", "--photoreal", "--photoreal-quality",
                     "preview", "--render-cache", str(tmp_path / "cache"), "--no-bag"])
    assert rc == 0
    ds = BopDataset(out)
    rgb = ds.rgb(0, 0)
    assert rgb.shape == (60, 80, 3) and rgb.std() > 5
    assert len(ds.gts(0, 0)) == 2


def test_gt_is_that_of_the_rasterized_run(photoreal_dataset, tmp_path):
    """Same seed without photoreal: identical poses, cameras and unoccluded masks; distractors only hide pixels."""
    config = WorkcellConfig(
        out_dir=tmp_path / "raster", num_objects=3, max_instances_per_object=2, num_scenes=1, frames_per_scene=1, seed=12,
        write_bag=False, layout=LayoutConfig(num_cameras=2, width_px=WIDTH, height_px=HEIGHT),
    )
    raster = BopDataset(generate_workcell(config))
    photo = BopDataset(photoreal_dataset)
    scene_dir = "test/000000"
    for name in ("scene_gt.json", "scene_camera.json"):
        assert (photoreal_dataset / scene_dir / name).read_bytes() == (config.out_dir / scene_dir / name).read_bytes()
    hidden = 0
    for im_id in raster.image_ids(0):
        for k in range(len(raster.gts(0, im_id))):
            assert np.array_equal(photo.mask(0, im_id, k), raster.mask(0, im_id, k))
            visib_photo, visib_raster = photo.mask_visib(0, im_id, k), raster.mask_visib(0, im_id, k)
            assert np.all(visib_photo <= visib_raster)
            hidden += int(visib_raster.sum() - visib_photo.sum())
        infos_photo, infos_raster = photo.gt_infos(0, im_id), raster.gt_infos(0, im_id)
        assert all(p.visib_fract <= r.visib_fract + 1e-9 for p, r in zip(infos_photo, infos_raster))
    assert hidden > 0  # this seed has a distractor in front of an object
