"""GT visibility computed from rendered models (no GL: exact ray-cast boxes)."""
import json

import numpy as np
import pytest
from box_scene import H_SMALL, K_SMALL, W_SMALL, BoxDepthRenderer, box_model, render_scene, rot_z, translation

from pose_node.core import StageUnavailableError
from pose_node.datasets.bop import BopDataset, BopGt, BopImageCamera, BopSceneWriter, bbox_xywh_from_mask, write_bop_models
from pose_node.evaluation.visibility import GtInfoSource, derive_targets, gt_infos_from_render, render_gt_scene_depth

BOX_A = box_model(1, [0.06, 0.04, 0.08])
BOX_B = box_model(2, [0.05, 0.05, 0.03])
MODELS = [BOX_A, BOX_B]
# B in front of A (occludes part of it); a second A cut by the left image border.
INSTANCES = [(1, translation(0.0, 0.0, 0.6) @ rot_z(0.3)), (2, translation(0.02, 0.01, 0.45)),
             (1, translation(-0.30, 0.0, 0.6))]


@pytest.fixture(scope="module")
def scene():
    ren = BoxDepthRenderer(MODELS)
    depth, masks, visib = render_scene(ren, K_SMALL, W_SMALL, H_SMALL, INSTANCES)
    return ren, depth, masks, visib


def _full_silhouette(ren, obj_id, T):
    """The whole silhouette on a canvas 3x the image (reference for px_count_all / bbox_obj)."""
    K = K_SMALL.copy()
    K[0, 2] += W_SMALL
    K[1, 2] += H_SMALL
    return ren(obj_id, K, T, 3 * W_SMALL, 3 * H_SMALL) > 0


@pytest.mark.parametrize("with_depth", [True, False])
def test_infos_match_exact_masks(scene, with_depth):
    ren, depth, masks, visib = scene
    gts = [BopGt(o, T) for o, T in INSTANCES]
    infos = gt_infos_from_render(ren, K_SMALL, W_SMALL, H_SMALL, gts, depth if with_depth else None)
    assert len(infos) == 3
    for g, (info, (o, T)) in enumerate(zip(infos, INSTANCES)):
        full = _full_silhouette(ren, o, T)
        assert info.px_count_all == int(full.sum())
        assert info.px_count_visib == int(visib[g].sum())  # exact depth: 15 mm tolerance changes nothing here
        assert info.visib_fract == pytest.approx(visib[g].sum() / full.sum())
        np.testing.assert_array_equal(info.bbox_visib, bbox_xywh_from_mask(visib[g]))
        assert info.px_count_valid == (int((masks[g] & (depth > 0)).sum()) if with_depth else 0)
    assert 0.2 < infos[0].visib_fract < 0.95 and infos[1].visib_fract == 1.0  # A occluded by B
    # The instance cut by the border: its box starts left of the image, its outside part is not visible.
    assert infos[2].bbox_obj[0] < 0 and infos[2].px_count_visib == masks[2].sum() < infos[2].px_count_all


def test_missing_depth_pixels_count_as_visible(scene):
    """bop19 visibility: where the sensor has no depth, the model counts as visible."""
    ren, depth, masks, visib = scene
    holes = depth.copy()
    holes[masks[0]] = 0.0  # no depth anywhere on A's silhouette
    info = gt_infos_from_render(ren, K_SMALL, W_SMALL, H_SMALL, [BopGt(o, T) for o, T in INSTANCES], holes)[0]
    assert info.px_count_visib == int(masks[0].sum()) and info.px_count_valid == 0


def test_gt_scene_depth_is_the_nearest_surface(scene):
    ren, depth, _, _ = scene
    rendered = render_gt_scene_depth(ren, K_SMALL, W_SMALL, H_SMALL, [BopGt(o, T) for o, T in INSTANCES])
    np.testing.assert_array_equal(rendered, depth)


@pytest.fixture()
def dataset_without_gt_info(tmp_path):
    root = tmp_path / "ds"
    write_bop_models(root / "models", MODELS)
    ren = BoxDepthRenderer(MODELS)
    depth, _, _ = render_scene(ren, K_SMALL, W_SMALL, H_SMALL, INSTANCES)
    cam = BopImageCamera(K=K_SMALL, T_camera_world=np.eye(4), depth_scale=0.1, width=W_SMALL, height=H_SMALL)
    with BopSceneWriter(root / "test", scene_id=2) as writer:
        for im_id in (0, 1):
            writer.add_image(im_id, np.zeros((H_SMALL, W_SMALL, 3), np.uint8), depth if im_id == 0 else None, cam,
                             [BopGt(o, T) for o, T in INSTANCES])
    (root / "test" / "000002" / "scene_gt_info.json").unlink()
    return BopDataset(root), ren


def test_source_computes_caches_and_derives_targets(dataset_without_gt_info, tmp_path):
    ds, ren = dataset_without_gt_info
    cache = tmp_path / "results.gt_info.json"
    source = GtInfoSource(ds, ren, cache_path=cache)
    assert not source.has_file(2)
    targets = derive_targets(ds, source)
    infos = source.infos(2, 0)
    n_a = sum(1 for i, (o, _) in zip(infos, INSTANCES) if o == 1 and i.visib_fract >= 0.1)
    assert [(t.im_ids, t.obj_id, t.inst_count) for t in targets] == [((0,), 1, n_a), ((0,), 2, 1), ((1,), 1, n_a), ((1,), 2, 1)]
    assert source.n_computed == 2 and source.save() == cache
    calls = ren.calls
    again = GtInfoSource(ds, ren, cache_path=cache)
    assert [i.to_json() for i in again.infos(2, 0)] == [i.to_json() for i in infos]
    assert again.n_cache_hits == 1 and again.n_computed == 0 and ren.calls == calls  # nothing rendered
    report = again.report([2])
    assert report["source"] == "computed" and report["scenes_without_gt_info"] == [2] and report["n_images_from_cache"] == 1
    assert json.loads(cache.read_text())["split"] == "test"
    assert not (ds.scene_dir(2) / "scene_gt_info.json").exists()  # never written into the dataset


def test_cache_of_another_dataset_is_ignored(dataset_without_gt_info, tmp_path):
    ds, ren = dataset_without_gt_info
    cache = tmp_path / "c.json"
    assert GtInfoSource(ds, ren, cache_path=cache).save() is None  # nothing computed: no file
    first = GtInfoSource(ds, ren, cache_path=cache)
    first.infos(2, 0)
    first.save()
    other = GtInfoSource(ds, ren, cache_path=cache, delta_m=0.005)
    other.infos(2, 0)
    assert other.n_cache_hits == 0 and other.n_computed == 1


def test_no_renderer_raises(dataset_without_gt_info):
    ds, _ = dataset_without_gt_info
    with pytest.raises(StageUnavailableError, match="no scene_gt_info.json"):
        GtInfoSource(ds, None).infos(2, 0)
