"""Round trips through the BOP writer and reader (metres in the API, millimetres in files)."""
import json

import numpy as np
import pytest
import torch
import trimesh

from helpers.scene import box_model
from pose_node.core import InvalidInputError, ObjectModel
from pose_node.core.geometry import Pose
from pose_node.datasets.bop import (
    BopDataset,
    BopEstimate,
    BopFormatError,
    BopGt,
    BopImageCamera,
    BopSceneWriter,
    Target,
    depth_m_to_png_units,
    read_estimates_csv,
    write_bop_models,
    write_estimates_csv,
    write_targets_bop19,
    write_targets_multiview,
)
from pose_node.onboarding.procedural import make_procedural_object

W, H = 64, 48
K = np.array([[80.0, 0.0, 31.5], [0.0, 80.0, 23.5], [0.0, 0.0, 1.0]])


def _random_T(rng, scale=0.5):
    q = torch.as_tensor(rng.normal(size=4))
    return Pose.from_quaternion_xyzw(q, torch.as_tensor(rng.normal(size=3) * scale)).matrix().numpy()


def _rect_mask(x0, y0, x1, y1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture()
def scene(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    images = {}
    depth_scale = 0.1
    with BopSceneWriter(root / "test", scene_id=3, depth_scale=depth_scale) as writer:
        for im_id in (0, 5):
            rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
            depth = rng.uniform(0.3, 2.0, size=(H, W)).astype(np.float32)
            depth[0, :10] = 0.0
            depth[1, :3] = np.nan
            T_cw = _random_T(rng)
            cam = BopImageCamera(K=K, T_camera_world=T_cw, depth_scale=1.0, width=W, height=H)
            gts = [BopGt(1, _random_T(rng)), BopGt(7, _random_T(rng))]
            masks = [_rect_mask(5, 5, 25, 15), _rect_mask(0, 0, 20, 30)]
            visib = [_rect_mask(5, 5, 15, 15), np.zeros((H, W), bool)]
            infos = writer.add_image(im_id, rgb, depth, cam, gts, masks, visib)
            images[im_id] = dict(rgb=rgb, depth=depth, T_cw=T_cw, gts=gts, masks=masks, visib=visib, infos=infos)
    return root, images, depth_scale


def test_scene_round_trip(scene):
    root, images, depth_scale = scene
    ds = BopDataset(root, "test")
    assert ds.scene_ids() == [3]
    assert ds.image_ids(3) == [0, 5]
    for im_id, ref in images.items():
        cam = ds.camera(3, im_id)
        np.testing.assert_allclose(cam.K, K)
        assert (cam.width, cam.height) == (W, H)
        assert cam.depth_scale == depth_scale  # the writer's scale wins
        np.testing.assert_allclose(cam.T_camera_world, ref["T_cw"], atol=1e-9)
        np.testing.assert_allclose(cam.T_world_camera @ ref["T_cw"], np.eye(4), atol=1e-9)
        np.testing.assert_array_equal(ds.rgb(3, im_id), ref["rgb"])
        depth = ds.depth_m(3, im_id)
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        valid = np.isfinite(ref["depth"]) & (ref["depth"] > 0)
        np.testing.assert_array_equal(depth > 0, valid)
        # Quantization: half a depth unit (depth_scale mm), plus float32 rounding.
        assert np.abs(depth[valid] - ref["depth"][valid]).max() <= depth_scale / 2 / 1000 + 1e-6
        gts = ds.gts(3, im_id)
        assert [g.obj_id for g in gts] == [1, 7]
        for g, g_ref in zip(gts, ref["gts"]):
            np.testing.assert_allclose(g.T_camera_object[:3, 3], g_ref.T_camera_object[:3, 3], atol=1e-6)
            np.testing.assert_allclose(g.T_camera_object[:3, :3], g_ref.T_camera_object[:3, :3], atol=1e-12)
        for gt_id in range(2):
            np.testing.assert_array_equal(ds.mask(3, im_id, gt_id), ref["masks"][gt_id])
            np.testing.assert_array_equal(ds.mask_visib(3, im_id, gt_id), ref["visib"][gt_id])
        infos = ds.gt_infos(3, im_id)
        assert infos[0].px_count_all == 200 and infos[0].px_count_visib == 100
        assert infos[0].visib_fract == pytest.approx(0.5)
        np.testing.assert_array_equal(infos[0].bbox_obj, [5, 5, 19, 9])  # BOP: w = x_max - x_min
        np.testing.assert_array_equal(infos[0].bbox_visib, [5, 5, 9, 9])
        # Mask 1 covers rows 0..29, cols 0..19; invalid depth at row 0 cols 0..9 and row 1 cols 0..2.
        assert infos[1].px_count_all == 600 and infos[1].px_count_valid == 600 - 13
        assert infos[1].px_count_visib == 0 and infos[1].visib_fract == 0.0
        np.testing.assert_array_equal(infos[1].bbox_visib, [-1, -1, -1, -1])
        assert [i.to_json() for i in infos] == [i.to_json() for i in ref["infos"]]


def test_scene_files_follow_bop_units(scene):
    root, images, _ = scene
    gt = json.loads((root / "test" / "000003" / "scene_gt.json").read_text())
    t_mm = np.array(gt["5"][1]["cam_t_m2c"])
    np.testing.assert_allclose(t_mm, images[5]["gts"][1].T_camera_object[:3, 3] * 1000.0)
    cam = json.loads((root / "test" / "000003" / "scene_camera.json").read_text())
    assert set(cam["0"]) == {"cam_K", "cam_R_w2c", "cam_t_w2c", "depth_scale"}
    np.testing.assert_allclose(cam["0"]["cam_t_w2c"], images[0]["T_cw"][:3, 3] * 1000.0)
    depth_png = root / "test" / "000003" / "depth" / "000000.png"
    import cv2

    raw = cv2.imread(str(depth_png), cv2.IMREAD_ANYDEPTH)
    assert raw.dtype == np.uint16


def test_view_uses_inverse_extrinsics(scene):
    root, images, _ = scene
    ds = BopDataset(root)
    view = ds.view(3, 5)
    np.testing.assert_allclose(view.camera.T_world_camera, np.linalg.inv(images[5]["T_cw"]), atol=1e-9)
    assert view.depth is not None and view.depth.dtype == np.float32
    assert ds.view(3, 5, with_depth=False).depth is None


def test_camera_without_world_pose_is_identity(tmp_path):
    scene_dir = tmp_path / "test" / "000001"
    (scene_dir / "rgb").mkdir(parents=True)
    import cv2

    cv2.imwrite(str(scene_dir / "rgb" / "000002.png"), np.zeros((H, W, 3), np.uint8))
    (scene_dir / "scene_camera.json").write_text(json.dumps({"2": {"cam_K": K.reshape(-1).tolist(), "depth_scale": 1.0}}))
    cam = BopDataset(tmp_path).camera(1, 2)
    np.testing.assert_array_equal(cam.T_camera_world, np.eye(4))
    assert (cam.width, cam.height) == (W, H)


def test_depth_quantization_edge_cases():
    d = np.array([[0.0, np.nan, -1.0, np.inf, 1.23456, 7.0]], dtype=np.float32)
    units = depth_m_to_png_units(d, 0.1)
    np.testing.assert_array_equal(units, [[0, 0, 0, 0, 12346, 0]])  # 7 m > 6.5535 m -> invalid


def test_writer_rejects_bad_inputs(tmp_path):
    cam = BopImageCamera(K=K, T_camera_world=np.eye(4), depth_scale=1.0, width=W, height=H)
    writer = BopSceneWriter(tmp_path / "test", 1)
    rgb = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="rgb"):
        writer.add_image(0, rgb[:, :-1], None, cam, [])
    with pytest.raises(InvalidInputError, match="masks"):
        writer.add_image(0, rgb, None, cam, [BopGt(1, np.eye(4))], masks=[])
    writer.add_image(0, rgb, None, cam, [BopGt(1, np.eye(4))])
    with pytest.raises(InvalidInputError, match="duplicate"):
        writer.add_image(0, rgb, None, cam, [])
    writer.close()
    with pytest.raises(InvalidInputError, match="closed"):
        writer.add_image(1, rgb, None, cam, [])
    with pytest.raises(InvalidInputError, match="T_camera_world"):
        BopImageCamera(K=K, T_camera_world=np.diag([2.0, 1, 1, 1]), depth_scale=1.0, width=W, height=H)
    with pytest.raises(BopFormatError, match="split folder"):
        BopDataset(tmp_path, "val")


def test_targets_round_trip(tmp_path):
    ds_root = tmp_path
    (ds_root / "test").mkdir()
    write_targets_bop19(ds_root / "t19.json", [Target(1, (4,), 2, 1), {"scene_id": 1, "im_id": 5, "obj_id": 3, "inst_count": 2}])
    write_targets_multiview(ds_root / "tmv.json", [Target(1, (4, 5, 6), 2, 1)])
    ds = BopDataset(ds_root)
    assert ds.targets("t19.json") == [Target(1, (4,), 2, 1), Target(1, (5,), 3, 2)]
    assert ds.targets(ds_root / "tmv.json") == [Target(1, (4, 5, 6), 2, 1)]
    raw = json.loads((ds_root / "t19.json").read_text())
    assert raw[0] == {"im_id": 4, "inst_count": 1, "obj_id": 2, "scene_id": 1}
    with pytest.raises(InvalidInputError, match="exactly one image"):
        write_targets_bop19(ds_root / "bad.json", [Target(1, (4, 5), 2, 1)])


def test_estimates_csv_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    ests = [BopEstimate(1, i, 2 + i, 0.5 + 0.1 * i, _random_T(rng), 0.25) for i in range(3)]
    path = write_estimates_csv(tmp_path / "res.csv", ests)
    header = path.read_text().splitlines()[0]
    assert header == "scene_id,im_id,obj_id,score,R,t,time"
    back = read_estimates_csv(path)
    for a, b in zip(ests, back):
        assert (a.scene_id, a.im_id, a.obj_id, a.score, a.time_s) == (b.scene_id, b.im_id, b.obj_id, b.score, b.time_s)
        np.testing.assert_allclose(a.T_camera_object, b.T_camera_object, atol=1e-12)


def test_models_round_trip(tmp_path):
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [0.0, 0.0, 0.01]  # a symmetry with a translation (metres)
    textured = make_procedural_object(1, seed=0, shape="box", target_faces=200)
    box = box_model([0.05, 0.08, 0.12], 2, name="box2", vertex_colors=np.full((8, 3), 200, np.uint8),
                    symmetries=np.stack([np.eye(4), flip]))
    (tmp_path / "test").mkdir()
    write_bop_models(tmp_path / "models", [textured, box])
    info = json.loads((tmp_path / "models" / "models_info.json").read_text())
    assert info["2"]["diameter"] == pytest.approx(box.diameter_m * 1000)
    assert info["2"]["size_z"] == pytest.approx(120.0, abs=1e-3)
    assert info["2"]["symmetries_discrete"][0][11] == pytest.approx(10.0)  # mm
    assert "symmetries_discrete" not in info["1"]
    ds = BopDataset(tmp_path)
    loaded = {m.object_id: m for m in ds.models()}
    for ref in (textured, box):
        m = loaded[ref.object_id]
        np.testing.assert_allclose(m.vertices, ref.vertices, atol=1e-6)
        np.testing.assert_array_equal(m.faces, ref.faces)
        assert m.diameter_m == pytest.approx(ref.diameter_m, rel=1e-5)
    np.testing.assert_allclose(loaded[2].symmetries, box.symmetries, atol=1e-9)
    assert loaded[1].texture is not None and loaded[1].uv is not None
    np.testing.assert_array_equal(loaded[1].texture, textured.texture)
    np.testing.assert_allclose(loaded[1].uv, textured.uv, atol=1e-6)
    assert ds.models_info()[2]["diameter"] == pytest.approx(box.diameter_m * 1000)


def test_models_info_refuses_to_flatten_a_continuous_symmetry():
    from pose_node.datasets.bop import models_info_entry
    from pose_node.onboarding.mesh_loading import symmetry_transforms

    mesh = trimesh.creation.cylinder(radius=0.03, height=0.1)
    info = {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
    model = ObjectModel(object_id=1, name="can", vertices=mesh.vertices.astype(np.float32), faces=mesh.faces.astype(np.int32),
                        normals=mesh.vertex_normals.astype(np.float32), diameter_m=0.12, symmetries=symmetry_transforms(info))
    with pytest.raises(InvalidInputError, match="symmetries_continuous"):
        models_info_entry(model)
    assert models_info_entry(model, symmetries=info)["symmetries_continuous"] == info["symmetries_continuous"]


def test_real_dataset_layout_variants(scene):
    """What real BOP sets and recordings do: JPEG colour, gray/ instead of rgb/, no masks, no
    scene_gt_info.json, depth for some images only, another depth unit per image."""
    import cv2

    root, images, depth_scale = scene
    scene_dir = root / "test" / "000003"
    ds = BopDataset(root)
    assert ds.has_gt_info(3) and ds.has_mask_visib(3, 0) and ds.has_mask_visib(3, 5)
    # JPEG colour image: decodes to RGB close to the original (lossy).
    rgb_png = scene_dir / "rgb" / "000000.png"
    smooth = cv2.GaussianBlur(images[0]["rgb"], (0, 0), 3)
    cv2.imwrite(str(rgb_png.with_suffix(".jpg")), cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    rgb_png.unlink()
    assert np.abs(ds.rgb(3, 0).astype(int) - smooth).mean() < 3.0
    # gray/ with a .jpeg: replicated to 3 channels.
    (scene_dir / "rgb" / "000005.png").unlink()
    (scene_dir / "gray").mkdir()
    gray = np.tile(np.arange(W, dtype=np.uint8) * 4, (H, 1))
    cv2.imwrite(str(scene_dir / "gray" / "000005.jpeg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ds.rgb(3, 5).shape == (H, W, 3) and np.abs(ds.rgb(3, 5)[..., 1].astype(int) - gray).max() <= 2
    # Per-image depth unit: image 5 stored in whole millimetres (depth_scale 1.0).
    cams = json.loads((scene_dir / "scene_camera.json").read_text())
    cams["5"]["depth_scale"] = 1.0
    (scene_dir / "scene_camera.json").write_text(json.dumps(cams))
    raw = cv2.imread(str(scene_dir / "depth" / "000005.png"), cv2.IMREAD_ANYDEPTH)
    cv2.imwrite(str(scene_dir / "depth" / "000005.png"), np.rint(raw * depth_scale).astype(np.uint16))
    ds = BopDataset(root)
    valid = ds.depth_m(3, 5) > 0
    assert ds.camera(3, 5).depth_scale == 1.0 and ds.camera(3, 0).depth_scale == depth_scale
    # Rounded twice: to 0.1 mm on writing, to whole mm here.
    assert np.abs(ds.depth_m(3, 5)[valid] - images[5]["depth"][valid]).max() <= 0.55e-3 + 1e-6
    # Depth of one image missing; masks and GT info gone.
    (scene_dir / "depth" / "000000.png").unlink()
    (scene_dir / "mask_visib" / "000005_000001.png").unlink()
    (scene_dir / "scene_gt_info.json").unlink()
    assert not ds.has_depth(3, 0) and ds.view(3, 0).depth is None and ds.has_depth(3, 5)
    assert ds.has_mask_visib(3, 0) and not ds.has_mask_visib(3, 5) and not ds.has_gt_info(3)
    assert ds.camera(3, 0).width == W  # the size comes from the colour image
