"""pose_eval end to end on a tiny synthetic 3-camera BOP dataset (160x120, two boxes)."""
import json

import numpy as np
import pytest
from helpers.scene import look_at
from box_scene import H_SMALL, K_SMALL, W_SMALL, BoxDepthRenderer, box_model, render_scene, rot_z, translation

from pose_node.core import Detection, PoseEstimate, StageUnavailableError
from pose_node.core.errors import InvalidInputError
from pose_node.datasets.bop import (
    BopDataset,
    BopGt,
    BopImageCamera,
    BopSceneWriter,
    Target,
    read_estimates_csv,
    write_bop_models,
    write_targets_bop19,
    write_targets_multiview,
)
from pose_node.evaluation import cli, runner
from pose_node.evaluation.results import EvalResults
from pose_node.evaluation.runner import (
    EvalConfig,
    RendererDepthAdapter,
    ViewDetections,
    evaluate,
    expand_stages,
    group_targets,
)
from pose_node.evaluation.stages import STAGE_FACTORIES

BOX_A = box_model(1, [0.06, 0.04, 0.08])
BOX_B = box_model(2, [0.05, 0.05, 0.03], np.stack([np.eye(4), rot_z(np.pi)]))
MODELS = [BOX_A, BOX_B]
T_WORLD_OBJ = {1: translation(-0.06, 0.02, 0.04) @ rot_z(0.4), 2: translation(0.07, -0.03, 0.015) @ rot_z(-0.7)}


CAMERAS = [look_at([0.6 * np.cos(a), 0.6 * np.sin(a), 0.5]) for a in (0.3, 2.2, 4.1)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bop_tiny")
    write_bop_models(root / "models", MODELS)
    ren = BoxDepthRenderer(MODELS)
    bop19 = []
    with BopSceneWriter(root / "test", scene_id=1) as writer:
        for im_id, T_wc in enumerate(CAMERAS):
            T_cw = np.linalg.inv(T_wc)
            inst = [(o, T_cw @ T) for o, T in T_WORLD_OBJ.items()]
            depth, masks, visib = render_scene(ren, K_SMALL, W_SMALL, H_SMALL, inst)
            rgb = np.full((H_SMALL, W_SMALL, 3), 90, np.uint8)
            for (o, _), v in zip(inst, visib):
                rgb[v] = (60 * o, 200, 255 - 60 * o)
            cam = BopImageCamera(K=K_SMALL, T_camera_world=T_cw, depth_scale=0.1, width=W_SMALL, height=H_SMALL)
            infos = writer.add_image(im_id, rgb, depth, cam, [BopGt(o, T) for o, T in inst], masks, visib)
            bop19 += [Target(1, (im_id,), o, 1) for (o, _), i in zip(inst, infos) if i.visib_fract >= 0.1]
    write_targets_bop19(root / "test_targets_bop19.json", bop19)
    write_targets_multiview(root / "test_targets_multiview.json", [Target(1, (0, 1, 2), o, 1) for o in T_WORLD_OBJ])
    return root


class GtEstimator:
    """Returns the GT world poses of the requested objects, perturbed by ``T_delta_world``."""

    def __init__(self, T_delta_world=np.eye(4), covariance=np.eye(6) * 1e-4, expect_depth=True, T_delta_obj=None):
        self.T_delta_world = T_delta_world
        self.T_delta_obj = T_delta_obj or {}
        self.covariance = covariance
        self.expect_depth = expect_depth
        self.calls = []

    def estimate(self, views, object_models):
        self.calls.append([v.name for v in views])
        assert all((v.depth is not None) == self.expect_depth for v in views)
        ests = [
            PoseEstimate(m.object_id, k, self.T_delta_world @ T_WORLD_OBJ[m.object_id] @ self.T_delta_obj.get(m.object_id, np.eye(4)),
                         self.covariance, 0.9, tuple(range(len(views))))
            for k, m in enumerate(object_models)
        ]
        return ests, {"fake_stage": 1.5}


def _evaluate(dataset_dir, targets_file, estimator, **cfg):
    ds = BopDataset(dataset_dir)
    return evaluate(ds, ds.targets(targets_file), estimator, EvalConfig(**cfg), BoxDepthRenderer(MODELS),
                    {"detection": "external"}, csv_path=dataset_dir / "out" / f"{targets_file}.csv")


def test_results_are_typed_and_serialize_to_the_same_keys(dataset_dir):
    r = _evaluate(dataset_dir, "test_targets_bop19.json", GtEstimator(), max_targets=2)
    typed = EvalResults.from_json(r)
    assert typed.AR == r["AR"] == pytest.approx(1.0) and typed.n_targets == 2
    assert typed.add_s_recall == r["ADD_S_recall_0.1d"] and typed.add_or_s_recall == r["ADD(-S)_recall_0.1d"]
    assert typed.stage_errors is None and "stage_errors" not in r
    assert list(typed.to_json().items()) == list(r.items())  # same keys, same order, same values
    with pytest.raises(InvalidInputError, match=r"unknown keys \['extra'\]"):
        EvalResults.from_json({**r, "extra": 1})
    with pytest.raises(InvalidInputError, match=r"missing keys \['AR'\]"):
        EvalResults.from_json({k: v for k, v in r.items() if k != "AR"})


def test_targets_are_visible_and_grouped(dataset_dir):
    ds = BopDataset(dataset_dir)
    targets = ds.targets("test_targets_bop19.json")
    assert len(targets) == 6  # both boxes visible in all three views
    frames = group_targets(targets)
    assert [f.im_ids for f in frames] == [(0,), (1,), (2,)] and all(len(f.targets) == 2 for f in frames)


def test_exact_estimates_single_view(dataset_dir):
    est = GtEstimator()
    r = _evaluate(dataset_dir, "test_targets_bop19.json", est)
    assert r["AR"] == pytest.approx(1.0) and r["AR_VSD"] == pytest.approx(1.0)
    assert r["AR_MSSD"] == 1.0 and r["AR_MSPD"] == 1.0 and r["ADD_S_recall_0.1d"] == 1.0
    assert r["n_targets"] == 6 and r["n_frames"] == 3 and r["n_estimates"] == 6 and r["n_gt"] == 6
    assert len(est.calls) == 3  # one pipeline call per image, not per target
    assert r["covariance_coverage"] == {"68": 1.0, "95": 1.0, "99.7": 1.0}
    assert r["pose_errors"]["translation_m"]["median"] == pytest.approx(0.0, abs=1e-9)
    assert set(r["latency_ms"]["per_stage"]) == {"fake_stage"}
    assert r["latency_ms"]["per_stage"]["fake_stage"]["median"] == 1.5
    assert r["latency_ms"]["total"]["median"] > 0
    assert r["per_object"]["1"]["AR"] == pytest.approx(1.0) and r["per_object"]["2"]["n_gt"] == 3
    json.dumps(r)  # serializable
    rows = read_estimates_csv(r["estimates_csv"])
    assert len(rows) == 6
    ds = BopDataset(dataset_dir)
    gt = {g.obj_id: g.T_camera_object for g in ds.gts(1, rows[0].im_id)}
    np.testing.assert_allclose(rows[0].T_camera_object, gt[rows[0].obj_id], atol=1e-6)


def test_known_perturbation_gives_known_recall_and_coverage(dataset_dir):
    d_a, d_b = BOX_A.diameter_m, BOX_B.diameter_m
    # Shift each object by 0.12 of ITS diameter along world x (object-frame shift expressed so).
    T_shift = {o: np.linalg.inv(T_WORLD_OBJ[o]) @ translation(0.12 * d, 0, 0) @ T_WORLD_OBJ[o]
               for o, d in ((1, d_a), (2, d_b))}
    sigma = 0.04 * min(d_a, d_b)
    cov = np.diag([sigma**2, 1.0, 1.0, 1.0, 1.0, 1.0])
    r = _evaluate(dataset_dir, "test_targets_bop19.json", GtEstimator(covariance=cov, T_delta_obj=T_shift))
    assert r["AR_MSSD"] == pytest.approx(0.8)  # correct for 0.15 .. 0.5 d
    assert r["ADD_S_recall_0.1d"] == 0.0
    assert r["AR"] == pytest.approx(np.mean([r["AR_VSD"], r["AR_MSSD"], r["AR_MSPD"]]))
    assert r["pose_errors"]["translation_m"]["median"] == pytest.approx(0.12 * np.mean([d_a, d_b]), rel=0.2)
    # d^2 = (0.12 d / sigma)^2: 9 for the smaller box, more for the larger one.
    d2 = sorted([(0.12 * d_a / sigma) ** 2, (0.12 * d_b / sigma) ** 2])
    assert d2[0] == pytest.approx(9.0)
    assert r["covariance_coverage"]["68"] == 0.0  # 9 > chi2.ppf(0.6827, 6) = 7.04
    assert r["covariance_coverage"]["95"] == 0.5  # 9 < 12.6 < (0.12 d_a / sigma)^2
    assert r["covariance_coverage_n"] == 2 * 3


def test_multiview_targets_scored_in_every_view(dataset_dir):
    est = GtEstimator(T_delta_obj={2: rot_z(np.pi)})  # object 2 flipped by its symmetry
    r = _evaluate(dataset_dir, "test_targets_multiview.json", est)
    assert est.calls == [["im0", "im1", "im2"]]
    assert r["n_targets"] == 2 and r["n_frames"] == 1 and r["n_images_scored"] == 3 and r["n_gt"] == 6
    assert r["AR"] == pytest.approx(1.0)
    assert r["covariance_coverage"]["68"] == 1.0  # the symmetric equivalent is used
    assert "per-image" in r["multiview_protocol"]
    assert len(read_estimates_csv(r["estimates_csv"])) == 2 * 3  # each estimate in each view


def test_rgb_mode_gives_no_depth_and_max_targets(dataset_dir):
    r = _evaluate(dataset_dir, "test_targets_bop19.json", GtEstimator(expect_depth=False), mode="rgb", max_targets=3)
    assert r["n_targets"] == 3 and r["n_frames"] == 2 and r["mode"] == "rgb"


def test_cli_reports_missing_stages_and_zero_recall(dataset_dir, tmp_path, capsys, monkeypatch):
    # The pose stages are missing (correspondence: its weights are not found): no estimates, AR 0;
    # detection exists, so it runs on its own.
    from pose_node.pipeline import estimate as correspondence_stage

    monkeypatch.setenv("POSE_NODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(correspondence_stage, "default_weights_path", lambda: tmp_path / "no_weights.pt")
    out = tmp_path / "results.json"
    rc = cli.main(["--dataset", str(dataset_dir), "--targets", "test_targets_bop19.json", "--out", str(out), "--threads", "1"])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["stages"] == {"detection": "available", "correspondence": "missing", "refinement": "missing"}
    assert r["AR"] == 0.0 and r["AR_MSSD"] == 0.0 and r["n_estimates"] == 0 and r["n_gt"] == 6
    assert r["covariance_coverage"] is None
    for key in ("AR_VSD", "AR_MSPD", "per_object", "ADD_S_recall_0.1d", "mode", "config", "n_targets"):
        assert key in r
    assert (tmp_path / "results.csv").read_text().strip() == "scene_id,im_id,obj_id,score,R,t,time"
    d = r["detection"]
    assert d["n_gt"] == 6 and d["n_images"] == 3 and d["mode"] == "rgbd" and d["latency_ms"]["n_views"] == 3
    assert d["latency_ms"]["proposals_median"] > 0 and d["latency_ms"]["matching_median"] >= 0
    assert any((tmp_path / "cache" / "onboarding").glob("*.npz"))  # onboarded into the configured cache
    printed = capsys.readouterr().out
    assert "missing" in printed and "AR 0.000" in printed and "detection (rgbd): recall" in printed
    assert "no_weights.pt" in r["stage_errors"]["correspondence"]


def test_registered_stage_runs_through_cli(dataset_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "default_depth_renderer", lambda models: BoxDepthRenderer(models))
    monkeypatch.setitem(STAGE_FACTORIES, "detection", lambda stages, config, models: GtEstimator())
    out = tmp_path / "r.json"
    rc = cli.main(["--dataset", str(dataset_dir), "--targets", "test_targets_bop19.json", "--stages", "detection",
                   "--max-targets", "2", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["stages"] == {"detection": "available"} and r["AR"] == pytest.approx(1.0) and r["n_targets"] == 2
    assert "AR 1.000" in capsys.readouterr().out


def test_stage_names():
    assert expand_stages(["full"]) == ("detection", "correspondence", "refinement")
    assert expand_stages(["refinement", "detection"]) == ("detection", "refinement")
    with pytest.raises(ValueError, match="unknown stage"):
        expand_stages(["magic"])


def test_renderer_adapter_calls_the_gl_api():
    class FakeOut:
        def __init__(self, depth):
            self.depth = depth

    class FakeRenderer:
        instances = 0

        def __init__(self, width, height):
            FakeRenderer.instances += 1
            self.size = (width, height)
            self.objects = []

        def add_object(self, model):
            self.objects.append(model.object_id)
            return len(self.objects) - 1

        def render(self, K, T, handles, outputs):
            assert K.shape == (1, 3, 3) and T.shape == (1, 1, 4, 4) and outputs == ("depth",)
            return FakeOut(np.ones((1, self.size[1], self.size[0]), np.float32) * (handles[0] + 1))

    adapter = RendererDepthAdapter(MODELS, FakeRenderer)
    d = adapter(2, K_SMALL, np.eye(4), W_SMALL, H_SMALL)
    assert d.shape == (H_SMALL, W_SMALL) and d.dtype == np.float32 and d[0, 0] == 1.0
    adapter(2, K_SMALL, np.eye(4), W_SMALL, H_SMALL)
    adapter(1, K_SMALL, np.eye(4), 32, 24)
    assert FakeRenderer.instances == 2

    class Broken:
        def __init__(self, *a):
            raise RuntimeError("no EGL display")

    with pytest.raises(StageUnavailableError, match="no EGL display"):
        RendererDepthAdapter(MODELS, Broken)(1, K_SMALL, np.eye(4), W_SMALL, H_SMALL)


def test_pipeline_errors_are_recorded_not_hidden(dataset_dir):
    class Failing:
        def estimate(self, views, object_models):
            raise StageUnavailableError("detector weights not found")

    r = _evaluate(dataset_dir, "test_targets_bop19.json", Failing())
    assert r["n_estimates"] == 0 and r["AR"] == 0.0
    assert len(r["frame_errors"]) == 3 and "detector weights not found" in r["frame_errors"][0]

    class WrongType:
        def estimate(self, views, object_models):
            return [np.eye(4)], {}

    with pytest.raises(ValueError, match="PoseEstimate"):
        _evaluate(dataset_dir, "test_targets_bop19.json", WrongType())


def test_gl_renderer_matches_the_exact_box_depth():
    """The default VSD renderer (OpenGL, when this machine has EGL) against exact ray casting."""
    adapter = RendererDepthAdapter([BOX_A])
    T = translation(0.01, -0.02, 0.5) @ rot_z(0.3) @ np.array([[1, 0, 0, 0], [0, 0.8, -0.6, 0], [0, 0.6, 0.8, 0], [0, 0, 0, 1.0]])
    try:
        depth = adapter(1, K_SMALL, T, W_SMALL, H_SMALL)
    except StageUnavailableError as exc:
        pytest.skip(f"no OpenGL here: {exc}")
    ref = BoxDepthRenderer([BOX_A])(1, K_SMALL, T, W_SMALL, H_SMALL)
    assert (depth > 0).sum() > 300
    assert ((depth > 0) != (ref > 0)).sum() <= 2  # pixel centres exactly on an edge may differ
    both = (depth > 0) & (ref > 0)
    assert np.abs(depth[both] - ref[both]).max() < 1e-5


# --------------------------------------------------------------------------------------------
# Detection block
# --------------------------------------------------------------------------------------------


class MaskDetector:
    """Detects each requested object with its GT visible mask (optionally shifted right by
    ``shift_px`` pixels) and adds ``extra`` false positives per view; no poses."""

    def __init__(self, dataset_dir, shift_px=0, extra=0):
        self.dataset = BopDataset(dataset_dir)
        self.shift_px, self.extra = shift_px, extra
        self.last_detections = None

    def estimate(self, views, object_models):
        wanted = {m.object_id for m in object_models}
        self.last_detections = []
        for k, view in enumerate(views):
            im_id = int(view.name[2:])  # BopDataset.view names views "im<im_id>"
            dets = []
            for g, gt in enumerate(self.dataset.gts(1, im_id)):
                if gt.obj_id in wanted:
                    mask = np.roll(self.dataset.mask_visib(1, im_id, g), self.shift_px, axis=1)
                    dets.append(Detection(gt.obj_id, k, 0.9, np.zeros(4), mask))
            for _ in range(self.extra):
                mask = np.zeros((H_SMALL, W_SMALL), bool)
                mask[:5, :5] = True
                dets.append(Detection(1, k, 0.95, np.zeros(4), mask))
            self.last_detections.append(ViewDetections(tuple(dets), {"proposals": 2.0, "matching": 3.0}))
        return [], {"proposals": 2.0 * len(views), "matching": 3.0 * len(views)}


def test_detection_block_of_perfect_detections(dataset_dir):
    r = _evaluate(dataset_dir, "test_targets_bop19.json", MaskDetector(dataset_dir))
    d = r["detection"]
    assert d["recall"] == 1.0 and d["precision"] == 1.0 and d["mask_ap"] == pytest.approx(1.0)
    assert d["n_gt"] == 6 and d["n_detections"] == 6 and d["n_images"] == 3
    assert d["latency_ms"] == {"median": 5.0, "p95": 5.0, "proposals_median": 2.0, "matching_median": 3.0, "n_views": 3}
    assert r["n_estimates"] == 0 and r["AR"] == 0.0  # detections are no poses
    json.dumps(r)


def test_detection_block_counts_false_positives_and_poor_masks(dataset_dir):
    # One false positive of object 1 per view, scored above the true detections: 6 TP, 3 FP.
    # Object 1 ranks its 3 FP before its 3 TP: precision 1/2 at recall 1, so AP 1/2 at every IoU;
    # object 2 keeps AP 1; mask AP = 3/4.
    d = _evaluate(dataset_dir, "test_targets_bop19.json", MaskDetector(dataset_dir, extra=1))["detection"]
    assert d["recall"] == 1.0 and d["precision"] == pytest.approx(6 / 9) and d["n_false_positives"] == 3
    assert d["per_object"]["1"]["mask_ap"] == pytest.approx(0.5) and d["per_object"]["2"]["mask_ap"] == pytest.approx(1.0)
    assert d["mask_ap"] == pytest.approx(0.75)
    # Masks shifted by 40 px do not overlap their instances enough: nothing is found.
    d = _evaluate(dataset_dir, "test_targets_bop19.json", MaskDetector(dataset_dir, shift_px=40))["detection"]
    assert d["recall"] == 0.0 and d["precision"] == 0.0 and d["mask_ap"] == 0.0


def test_detection_block_of_multiview_frames_scores_every_image(dataset_dir):
    d = _evaluate(dataset_dir, "test_targets_multiview.json", MaskDetector(dataset_dir))["detection"]
    assert d["n_images"] == 3 and d["n_gt"] == 6 and d["recall"] == 1.0 and d["latency_ms"]["n_views"] == 3


def test_estimators_without_detections_have_no_detection_block(dataset_dir):
    assert _evaluate(dataset_dir, "test_targets_bop19.json", GtEstimator())["detection"] is None


def test_stages_detection_runs_the_detector_through_the_cli(dataset_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = cli.main(["--dataset", str(dataset_dir), "--targets", "test_targets_bop19.json", "--stages", "detection",
                   "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["stages"] == {"detection": "available"} and r["n_estimates"] == 0 and r["AR"] == 0.0
    d = r["detection"]
    for key in ("recall", "precision", "mask_ap", "latency_ms", "n_gt", "n_detections", "mode", "per_object"):
        assert key in d
    assert d["n_gt"] == 6 and d["n_images"] == 3 and d["latency_ms"]["n_views"] == 3 and d["latency_ms"]["median"] > 0
    assert 0.0 <= d["recall"] <= 1.0 and set(r["latency_ms"]["per_stage"]) == {"proposals", "matching"}
    assert any((tmp_path / "cache").glob("*.npz"))
    assert "detection (rgbd)" in capsys.readouterr().out


def test_the_cli_proposal_cap_reaches_the_detector(dataset_dir, tmp_path, monkeypatch):
    from pose_node.evaluation.stages.detection import detection_factory

    built = []

    def factory(stages, config, models):
        estimator = detection_factory(stages, config, models)
        built.append(estimator.detector.config)
        return estimator

    monkeypatch.setitem(STAGE_FACTORIES, "detection", factory)
    out = tmp_path / "r.json"
    rc = cli.main(["--dataset", str(dataset_dir), "--targets", "test_targets_bop19.json", "--stages", "detection",
                   "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--max-proposals-per-view", "1", "--out", str(out)])
    assert rc == 0 and [c.max_proposals_per_view for c in built] == [1]
    d = json.loads(out.read_text())["detection"]
    assert set(d["proposals_per_view"]) == {"found", "cut"} and d["proposals_per_view"]["found"]["median"] is not None
    assert cli.main(["--dataset", str(dataset_dir), "--max-proposals-per-view", "-1", "--out", str(out)]) == 2
    assert cli.main(["--dataset", str(dataset_dir), "--time-budget-ms", "-5", "--out", str(out)]) == 2


def test_unavailable_detection_stage_is_reported_missing(dataset_dir, tmp_path, monkeypatch):
    def unavailable(stages, config, models):
        raise StageUnavailableError("RGB proposals not available (test)")

    monkeypatch.setitem(STAGE_FACTORIES, "detection", unavailable)
    r = runner.run(dataset_dir, "test_targets_bop19.json", EvalConfig(stages=("detection",)),
                   depth_renderer=BoxDepthRenderer(MODELS))
    assert r["stages"] == {"detection": "missing"} and r["detection"] is None
    assert "RGB proposals not available" in r["stage_errors"]["detection"]


def test_detection_ablation_flags_switch_the_parts_off():
    base = ["--dataset", "d", "--out", "o.json", "--stages", "detection"]
    shipped = cli._detector_config(cli.build_parser().parse_args(base))
    assert shipped.multiview.min_views == 2 and shipped.matching.untextured_grey_margin == 0.25
    args = cli.build_parser().parse_args([*base, "--detection-without", "multiview", "untextured-grey"])
    ablated = cli._detector_config(args)
    assert ablated.multiview.min_views == 1 and ablated.matching.untextured_grey_margin is None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*base, "--detection-without", "verification"])
