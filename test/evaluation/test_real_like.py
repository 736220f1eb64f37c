"""pose_eval on a "real-like" dataset: a generated workcell stripped of what real BOP test sets and
recordings often lack (mask/, mask_visib/, scene_gt_info.json, PNG colour images, some depth)."""
import json
import shutil
import stat
from dataclasses import replace

import cv2
import numpy as np
import pytest

from pose_node.core import PoseEstimate, StageUnavailableError
from pose_node.datasets.bop import BopDataset
from pose_node.evaluation import cli, runner
from pose_node.evaluation.runner import EvalConfig, ViewDetections, default_depth_renderer, evaluate
from pose_node.evaluation.stages import STAGE_FACTORIES
from pose_node.evaluation.visibility import GtInfoSource, derive_targets, gt_infos_from_render
from pose_node.scene.generator import WorkcellConfig, read_scene_world
from pose_node.scene.layout import LayoutConfig

NO_DEPTH = (1, 2)  # image ids whose depth file is deleted


@pytest.fixture(scope="module")
def workcell(tmp_path_factory, make_workcell) -> BopDataset:
    config = WorkcellConfig(
        out_dir=tmp_path_factory.mktemp("real_like") / "generated", num_objects=3, max_instances_per_object=2,
        frames_per_scene=2, write_bag=False, seed=0, layout=LayoutConfig(num_cameras=2, width_px=160, height_px=120),
    )
    return make_workcell(config)


def _set_writable(root, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="module")
def real_like(workcell):
    """A read-only copy without masks and scene_gt_info, JPEG colour images, no depth for NO_DEPTH."""
    root = workcell.root.parent / "real_like"
    shutil.copytree(workcell.root, root)
    for scene in (root / "test").iterdir():
        shutil.rmtree(scene / "mask")
        shutil.rmtree(scene / "mask_visib")
        (scene / "scene_gt_info.json").unlink()
        for png in (scene / "rgb").glob("*.png"):
            assert cv2.imwrite(str(png.with_suffix(".jpg")), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 95])
            png.unlink()
        for im_id in NO_DEPTH:
            (scene / "depth" / f"{im_id:06d}.png").unlink()
    _set_writable(root, False)
    yield BopDataset(root)
    _set_writable(root, True)


@pytest.fixture(scope="module")
def depth_renderer(workcell):
    renderer = default_depth_renderer(workcell.models())
    assert renderer is not None
    return renderer


class OracleEstimator:
    """The scene's GT world poses (scene_world.json), each moved by a fixed error of a few mm and
    degrees; reports empty detections (so the runner tries to score detection)."""

    def __init__(self, root, seed=0):
        rng = np.random.default_rng(seed)
        self.instances = []
        for inst in read_scene_world(root / "scene_world.json")["scenes"][0]["instances"]:
            axis = rng.normal(size=3)
            R = cv2.Rodrigues(axis / np.linalg.norm(axis) * np.radians(4.0))[0]
            T_err = np.eye(4)
            T_err[:3, :3] = R
            T_err[:3, 3] = rng.normal(size=3) * 0.004
            self.instances.append((inst["obj_id"], inst["T_world_object"] @ T_err))
        self.depth_seen: list[bool] = []
        self.last_detections = None

    def estimate(self, views, object_models):
        self.depth_seen += [v.depth is not None for v in views]
        wanted = {m.object_id for m in object_models}
        self.last_detections = [ViewDetections((), {"proposals": 1.0, "matching": 0.5}) for _ in views]
        ests = [PoseEstimate(o, k, T, np.eye(6) * 1e-4, 0.9 - 0.01 * k, tuple(range(len(views))))
                for k, (o, T) in enumerate(self.instances) if o in wanted]
        return ests, {"oracle": 1.0}


def test_computed_visibility_matches_the_generator(workcell, depth_renderer):
    """calc_gt_info-style visibility from the GL renders vs the generator's instance masks (the
    depth is exact here; with sensor holes BOP counts the model as visible there, so noisy depth
    gives larger visib_fract than the masks)."""
    n = 0
    for im_id in workcell.image_ids(0):
        cam, gts, ref = workcell.camera(0, im_id), workcell.gts(0, im_id), workcell.gt_infos(0, im_id)
        for depth in (workcell.depth_m(0, im_id), None):  # noisy sensor depth / GT z-buffer
            infos = gt_infos_from_render(depth_renderer, cam.K, cam.width, cam.height, gts, depth)
            for got, want in zip(infos, ref):
                assert got.px_count_all == want.px_count_all
                np.testing.assert_array_equal(got.bbox_obj, want.bbox_obj)
                assert got.visib_fract == pytest.approx(want.visib_fract, abs=0.01)
                n += 1
    assert n == 4 * 5 * 2


def test_derived_targets_equal_the_generated_ones(workcell, real_like, depth_renderer):
    derived = derive_targets(real_like, GtInfoSource(real_like, depth_renderer))
    assert derived == workcell.targets("test_targets_bop19.json")


def test_real_like_scores_match_the_untouched_dataset(workcell, real_like, depth_renderer):
    targets = workcell.targets("test_targets_bop19.json")
    # Image 0 holds two instances of object 1: asking for one makes its visibility matter there.
    assert sum(g.obj_id == 1 for g in workcell.gts(0, 0)) == 2
    targets = [replace(t, inst_count=1) if (t.im_ids, t.obj_id) == ((0,), 1) else t for t in targets]
    full = evaluate(workcell, targets, OracleEstimator(workcell.root), EvalConfig(), depth_renderer, {"detection": "external"})
    oracle, rgb_oracle = OracleEstimator(workcell.root), OracleEstimator(workcell.root)
    r = evaluate(real_like, targets, oracle, EvalConfig(), depth_renderer, {"detection": "external"},
                 estimator_without_depth=lambda: rgb_oracle)
    # Same estimates, same valid GT: MSSD / MSPD identical; VSD differs only where the rendered GT
    # depth stands in for the sensor depth (no table, no noise).
    assert full["AR"] is not None and 0.2 < full["AR"] < 0.95
    assert r["AR_MSSD"] == full["AR_MSSD"] and r["AR_MSPD"] == full["AR_MSPD"] and r["n_gt"] == full["n_gt"]
    assert r["AR_VSD"] == pytest.approx(full["AR_VSD"], abs=0.03) and r["AR"] == pytest.approx(full["AR"], abs=0.01)
    assert r["ADD_S_recall_0.1d"] == full["ADD_S_recall_0.1d"]
    # Detection: scored on the untouched dataset, skipped with the reason on the real-like one.
    assert full["detection"]["n_images"] == 4 and "skipped" not in full["detection"]
    assert "no GT visible masks" in r["detection"]["skipped"] and "4 of 4 images" in r["detection"]["skipped"]
    # Depth: the images without it ran through the RGB estimator, the others with depth.
    nd = r["images_without_depth"]
    assert nd["count"] == 2 and nd["ids"] == [[0, 1], [0, 2]] and nd["frames_run_rgb"] == 2 and not nd["truncated"]
    assert "2 images" in nd["vsd_depth"]
    assert rgb_oracle.depth_seen == [False, False] and oracle.depth_seen == [True, True]
    assert full["images_without_depth"] == {"count": 0, "ids": [], "truncated": False, "frames_run_rgb": 0, "vsd_depth": None}
    vis = r["visibility"]
    assert vis["source"] == "computed" and vis["scenes_without_gt_info"] == [0]
    assert vis["n_images_computed"] == 1 and vis["n_images_targets_as_given"] == 3
    assert full["visibility"] == {"source": "scene_gt_info.json", "scenes_without_gt_info": []}


def test_without_depth_vsd_can_be_declared_unavailable(real_like, depth_renderer):
    r = evaluate(real_like, real_like.targets("test_targets_bop19.json"), OracleEstimator(real_like.root),
                 EvalConfig(vsd_without_depth="unavailable"), depth_renderer)
    assert r["AR"] is None and r["AR_VSD"] is None and "no test depth image" in r["vsd_unavailable_reason"]
    assert r["AR_MSSD"] > 0 and r["images_without_depth"]["vsd_depth"] is None
    # The generated targets ask for every instance: no image needs the visibility.
    assert r["visibility"]["source"] == "targets as given" and r["visibility"]["n_images_targets_as_given"] == 4


def test_cli_on_real_like_data_without_targets(real_like, tmp_path, capsys, monkeypatch):
    # The oracle stands in for the pipeline; the runner builds its RGB twin for the images without depth.
    built = []

    def factory(stages, config, models):
        built.append(config.mode)
        return OracleEstimator(real_like.root)

    monkeypatch.setitem(STAGE_FACTORIES, "detection", factory)
    out = tmp_path / "r.json"
    argv = ["--dataset", str(real_like.root), "--stages", "detection", "--out", str(out)]
    assert cli.main(argv) == 0
    r = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert built == ["rgbd", "rgb"]
    assert r["targets_source"]["kind"] == "derived" and r["n_targets"] == len(real_like.targets("test_targets_bop19.json"))
    assert r["AR"] is not None and r["AR"] > 0.2 and r["images_without_depth"]["frames_run_rgb"] == 2
    assert "targets: derived from the GT" in printed and "detection: skipped (no GT visible masks" in printed
    assert "images without depth: 2 (scene/im: 0/1, 0/2); 2 frames run in RGB" in printed
    assert "visibility (computed): 1 scenes without scene_gt_info.json; 4 images rendered" in printed
    cache = tmp_path / "r.gt_info.json"
    vis = r["visibility"]
    assert vis["n_images_computed"] == 4 and vis["n_images_targets_as_given"] == 0  # derived targets need them all
    assert vis["cache"] == str(cache) and cache.is_file()
    # A second run takes the visibility from the cache next to the results.
    assert cli.main(argv) == 0
    again = json.loads(out.read_text())
    assert again["visibility"]["n_images_from_cache"] == 4 and again["visibility"]["n_images_computed"] == 0
    assert again["AR"] == r["AR"]



def test_frames_without_depth_fail_alone_when_no_rgb_pipeline(real_like, depth_renderer, monkeypatch):
    def factory(stages, config, models):
        if config.mode == "rgb":
            raise StageUnavailableError("RGB proposals not available (test)")
        return OracleEstimator(real_like.root)

    monkeypatch.setitem(STAGE_FACTORIES, "detection", factory)
    r = runner.run(real_like.root, None, EvalConfig(stages=("detection",)), depth_renderer=depth_renderer)
    assert r["stages"] == {"detection": "available"}
    assert "RGB proposals not available" in r["stage_errors"]["detection (rgb, images without depth)"]
    assert len(r["frame_errors"]) == 2 and "no depth" in r["frame_errors"][0]
    assert 0 < r["AR_MSSD"] < 0.75  # the images with depth are still scored
