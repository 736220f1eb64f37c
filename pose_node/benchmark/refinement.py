"""``pose_refinement_bench``: the multi-view ablation (single view / association / refinement, RGB
and RGB-D), covariance calibration, score quality, extrinsic sensitivity and latency per object.

Datasets are the correspondence bench's 4-camera workcells with depth noise, whose objects no
network saw (generated into ``--out-dir`` when missing, same seeds as ``pose_correspondence_bench``):
``test_proc`` (procedural), ``test_ycb`` (held-out YCB objects, with ``--ycb-models``) and, for
``--calibrate`` only, ``val_proc``. Every row is :func:`pose_node.evaluation.runner.run` on the
dataset's ``test_targets_multiview.json`` (per-image BOP19 scoring of the world estimates, see the
runner's multi-view protocol). "single view" scores each image with its own view's estimates.

The single-view stage runs once per dataset and mode; association and refinement reuse its
estimates (the rows differ only in what comes after it).

Calibration (``--calibrate``): on ``val_proc`` and, with ``--ycb-models``, ``val_ycb`` (the YCB
objects that are not held out: real meshes, never in a test row), per mode, the refined
covariance becomes ``s score^-k`` times the Hessian's (:func:`fit_covariance`: k from a short
list so that both workcells' 95.45 % coverages come closest to 95.45 %, s so that the pooled one
is exact); s and k go to ``models/refinement_effl0.json`` with ``--record`` (with the table).

Extrinsic sensitivity (``--sensitivity``): every camera's ``T_world_camera`` is perturbed by a
random rotation and translation of the given sizes (fixed seed) before association and refinement,
while scoring uses the true extrinsics.

``--dataset-dir NAME=DIR`` adds any multi-view BOP dataset (the out-of-domain sets of
``pose_ood_set``) to the rows.

Run it on one thread::

    pose_refinement_bench --out-dir out/bench_correspondence --ycb-models ../shared/data/ycb_dev/models --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pose_node.benchmark.correspondence import (
    TEST_SEED_PROCEDURAL, TEST_SEED_YCB, VALIDATION_SEED, ensure_workcell, holdout_models_dir,
)
from pose_node.core.geometry import so3_exp
from pose_node.datasets.splits import ycb_ids_in
from pose_node.evaluation.calibration import COVERAGE_LEVELS, POSE_DOF
from pose_node.evaluation.runner import EvalConfig, run
from pose_node.refinement.fusion import FusionConfig, MultiViewFusion, default_calibration_path
from pose_node.refinement.refiner import MIN_SCORE_FOR_SCALE

logger = logging.getLogger(__name__)

TARGETS = "test_targets_multiview.json"
VALIDATION_SEED_YCB = 3032
STAGES = ("detection", "correspondence", "refinement")


class CachedSingleView:
    """The single-view stage, run once per frame (keyed by the views' names and stamps)."""

    per_view_estimates = True

    def __init__(self, stage) -> None:
        self.stage = stage
        self.cache: dict = {}
        self.last_detections = None

    def estimate(self, views, object_models):
        key = tuple((v.name, v.stamp_ns, v.rgb.shape, float(v.rgb[::37, ::41].sum())) for v in views)
        if key not in self.cache:
            self.cache[key] = self.stage.estimate(views, object_models) + (self.stage.last_detections,)
        estimates, timings, self.last_detections = self.cache[key]
        return list(estimates), dict(timings)


class FusedStage:
    """Cached single view + a :class:`MultiViewFusion`; optionally perturbed extrinsics."""

    def __init__(self, single: CachedSingleView, fusion: MultiViewFusion, with_depth: bool,
                 extrinsic_error: tuple[float, float] | None = None, seed: int = 0) -> None:
        self.single, self.fusion, self.with_depth = single, fusion, with_depth
        self.extrinsic_error = extrinsic_error
        self.rng = np.random.default_rng(seed)
        self.last_detections = None
        self.objects_per_frame: list[int] = []
        self.refinement_ms: list[float] = []

    def estimate(self, views, object_models):
        estimates, timings = self.single.estimate(views, object_models)
        self.last_detections = self.single.last_detections
        if self.extrinsic_error is not None:
            views, estimates = self._perturb(views, estimates)
        fused, ms = self.fusion(views, estimates, self.with_depth)
        self.objects_per_frame.append(len(fused))
        self.refinement_ms.append(float(ms.get("refinement", 0.0)))
        return fused, {**timings, **ms}

    def _perturb(self, views, estimates):
        dt_m, drot_deg = self.extrinsic_error
        moved, deltas = [], []
        for v in views:
            axis = self.rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            D = np.eye(4)
            D[:3, :3] = so3_exp(torch.from_numpy(axis * math.radians(drot_deg))).numpy()
            D[:3, 3] = direction * dt_m
            T_wc = D @ v.camera.T_world_camera
            deltas.append(D)
            moved.append(replace(v, camera=replace(v.camera, T_world_camera=T_wc)))
        out = [replace(e, T_world_object=deltas[e.view_indices[0]] @ e.T_world_object) for e in estimates]
        return moved, out


def auroc(scores: list[float], correct: list[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` separating correct from wrong (None: one class)."""
    s, c = np.asarray(scores, dtype=np.float64), np.asarray(correct, dtype=bool)
    if c.all() or not c.any():
        return None
    pos, neg = s[c], s[~c]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def row(name: str, dataset: str, mode: str, r: dict, stage: "FusedStage | None") -> dict:
    """One table row from the runner's results (and the fusion's per-frame counts)."""
    m = r["matched_estimates"]
    correct = [d < 0.1 * dia for d, dia in zip(m["mssd_m"], m["diameter_m"])]
    ms_per_object = ms_per_object_median = None
    if stage is not None and sum(stage.objects_per_frame):
        ms_per_object = float(sum(stage.refinement_ms) / sum(stage.objects_per_frame))
        ms_per_object_median = float(np.median([ms / n for ms, n in zip(stage.refinement_ms, stage.objects_per_frame) if n]))
    trans = r["pose_errors"]["translation_m"]["median"]
    return {
        "dataset": dataset, "mode": mode, "method": name, "AR": r["AR"], "AR_VSD": r["AR_VSD"], "AR_MSSD": r["AR_MSSD"],
        "AR_MSPD": r["AR_MSPD"], "coverage_95": (r["covariance_coverage"] or {}).get("95"),
        "rot_err_deg_median": r["pose_errors"]["rotation_deg"]["median"],
        "trans_err_mm_median": None if trans is None else 1e3 * trans,
        "score_auroc": auroc(m["score"], correct), "refinement_ms_per_object": ms_per_object,
        "refinement_ms_per_object_median_frame": ms_per_object_median,
        "n_estimates": r["n_estimates"], "n_targets": r["n_targets"],
    }


def evaluate_dataset(path: Path, name: str, mode: str, fusion_config: FusionConfig, max_targets: int | None,
                     methods: list[str], sensitivity: list[tuple[float, float]]) -> tuple[list[dict], dict]:
    """All rows of one dataset and mode; also returns the refinement run's raw results."""
    from pose_node.evaluation.stages.correspondence import correspondence_factory
    from pose_node.datasets.bop import BopDataset

    config = EvalConfig(mode=mode, stages=STAGES, max_targets=max_targets)
    models = BopDataset(path).models(config.models_subdir)
    single = CachedSingleView(correspondence_factory(STAGES[:2], config, models))
    rows, raw = [], {}
    r = run(path, TARGETS, config, estimator=single)
    rows.append(row("single view", name, mode, r, None))
    fusions = {}
    for method in methods:
        fusions[method] = MultiViewFusion(models, variant_config(fusion_config, method))
        stage = FusedStage(single, fusions[method], with_depth=mode == "rgbd")
        r = run(path, TARGETS, config, estimator=stage)
        rows.append(row(method, name, mode, r, stage))
        raw[method] = r
        logger.info("%s %s %s: AR %.3f", name, mode, method, r["AR"])
    for dt_m, drot_deg in sensitivity:
        stage = FusedStage(single, fusions["refinement"], with_depth=mode == "rgbd", extrinsic_error=(dt_m, drot_deg))
        r = run(path, TARGETS, config, estimator=stage)
        rows.append(row(f"refinement, extrinsics off {dt_m * 1e3:g} mm / {drot_deg:g} deg", name, mode, r, stage))
    return rows, raw


#: Ablation rows of ``--ablation``: the refinement without the hypotheses' registration, without
#: render-and-compare verification, and without both and the flip hypotheses (the refinement before them).
ABLATIONS: tuple[str, ...] = ("refinement -registration", "refinement -verification", "refinement -registration -verification -flips")


def variant_config(fusion_config: FusionConfig, method: str) -> FusionConfig:
    """The fusion config of a row: ``association``, ``refinement`` or one of :data:`ABLATIONS`."""
    base, *removed = method.split(" -")
    refinement = fusion_config.refinement
    for part in removed:
        if part == "registration":
            refinement = replace(refinement, registration=replace(refinement.registration, enabled=False))
        elif part == "verification":
            refinement = replace(refinement, verification=replace(refinement.verification, enabled=False))
        elif part == "flips":
            refinement = replace(refinement, flip_hypotheses=False)
        else:
            raise ValueError(f"unknown ablation {part!r} in {method!r}")
    return replace(fusion_config, method=base, refinement=refinement)


SCORE_EXPONENTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


def fit_covariance(d2_unscaled: list[np.ndarray], scores: list[np.ndarray]) -> tuple[float, float, list[float]]:
    """Scale s and score exponent k of ``Sigma = s score^-k Sigma_0`` (module docstring).

    With ``Sigma_0`` the unscaled covariance, an estimate's d2 becomes ``d2_0 score^k / s``. For
    each k of :data:`SCORE_EXPONENTS`, s makes the pooled 95.45 % coverage exact; the k whose
    per-workcell coverages stray least from 95.45 % (worst case) wins.

    Args:
        d2_unscaled: per validation workcell, the matched estimates' d2 under ``Sigma_0``.
        scores: per workcell, their scores.
    Returns:
        s, k and the per-workcell coverages at them.
    """
    from scipy.stats import chi2

    level = COVERAGE_LEVELS["95"]
    bound = chi2.ppf(level, POSE_DOF)
    best = None
    for k in SCORE_EXPONENTS:
        weighted = [d * np.maximum(sc, MIN_SCORE_FOR_SCALE) ** k for d, sc in zip(d2_unscaled, scores)]
        pooled = np.concatenate(weighted)
        if not len(pooled):
            return 1.0, 0.0, []
        s = float(np.quantile(pooled, level) / bound)
        coverages = [float(np.mean(w / s <= bound)) for w in weighted if len(w)]
        worst = max(abs(c - level) for c in coverages)
        if best is None or worst < best[0] - 1e-9:
            best = (worst, s, k, coverages)
    return best[1], best[2], best[3]


def calibrate(vals: list[Path], modes: list[str], fusion_config: FusionConfig, max_targets: int | None
              ) -> tuple[dict[str, float], dict[str, float]]:
    """Covariance scale and score exponent per mode, fitted on the validation workcells (module docstring)."""
    unscaled = replace(fusion_config, refinement=replace(fusion_config.refinement, covariance_scale={"rgb": 1.0, "rgbd": 1.0},
                                                         covariance_score_exponent={}))
    scales, exponents = {}, {}
    for mode in modes:
        d2, scores = [], []
        for val in vals:
            raw = evaluate_dataset(val, "val", mode, unscaled, max_targets, ["refinement"], [])[1]["refinement"]
            d2.append(np.asarray(raw["covariance_d2"]))
            scores.append(np.asarray(raw["matched_estimates"]["score"]))
        scales[mode], exponents[mode], coverages = fit_covariance(d2, scores)
        logger.info("calibration %s: %d estimates, scale %.3g, score exponent %g, validation coverages %s",
                    mode, sum(len(d) for d in d2), scales[mode], exponents[mode], coverages)
    return scales, exponents


def format_table(rows: list[dict]) -> str:
    cols = ["dataset", "mode", "method", "AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "coverage_95", "rot_err_deg_median",
            "trans_err_mm_median", "score_auroc", "refinement_ms_per_object", "n_estimates", "n_targets"]
    lines = [" | ".join(cols)]
    for r in rows:
        lines.append(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("out/bench_correspondence"))
    parser.add_argument("--ycb-models", type=Path, default=None, help="YCB BOP models dir (held-out objects are evaluated)")
    parser.add_argument("--modes", nargs="+", default=["rgbd", "rgb"], choices=["rgbd", "rgb"])
    parser.add_argument("--datasets", nargs="*", default=["procedural", "ycb_holdout"], choices=["procedural", "ycb_holdout"])
    parser.add_argument("--dataset-dir", nargs="*", default=[], metavar="NAME=DIR",
                        help="also evaluate these multi-view BOP datasets, e.g. ood_test=out/ood_test (pose_ood_set)")
    parser.add_argument("--max-targets", type=int, default=None)
    parser.add_argument("--calibrate", action="store_true", help="fit the covariance scale on val_proc first")
    parser.add_argument("--record", action="store_true", help=f"write scales and table to models/{default_calibration_path().name}")
    parser.add_argument("--sensitivity", nargs="*", default=[], metavar="MM/DEG",
                        help="extrinsic errors to test, e.g. 2/0.2 5/0.5 (procedural, refinement)")
    parser.add_argument("--crop-size", type=int, default=None, help="refinement crop side, pixels (default: CropConfig's)")
    parser.add_argument("--max-points", type=int, default=None, help="refinement points per view (default: CropConfig's)")
    parser.add_argument("--ablation", action="store_true", help="also the refinement without registration, verification, both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("out/bench_refinement.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    scenes = 8
    out = args.out_dir
    datasets = {}
    if "procedural" in args.datasets:
        datasets["procedural"] = ensure_workcell(out / "test_proc", "procedural", 4, TEST_SEED_PROCEDURAL, scenes)
    if "ycb_holdout" in args.datasets:
        if args.ycb_models is None:
            logger.warning("no --ycb-models: the held-out YCB rows are skipped")
        else:
            models = holdout_models_dir(args.ycb_models, out)
            datasets["ycb_holdout"] = ensure_workcell(out / "test_ycb", str(models), 4, TEST_SEED_YCB, scenes)
    for spec in args.dataset_dir:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / TARGETS).is_file():
            parser.error(f"--dataset-dir {spec!r}: expected NAME=DIR with DIR/{TARGETS}")
        datasets[name] = Path(path)
    fusion_config = FusionConfig(device=args.device)
    crops = fusion_config.refinement.crops
    crops = replace(crops, size_px=args.crop_size or crops.size_px, max_points_per_view=args.max_points or crops.max_points_per_view)
    fusion_config = replace(fusion_config, refinement=replace(fusion_config.refinement, crops=crops))
    started = time.perf_counter()
    scales = exponents = None
    if args.calibrate:
        vals = [ensure_workcell(out / "val_proc", "procedural", 4, VALIDATION_SEED, scenes)]
        if args.ycb_models is not None:
            # Real meshes too, but never test-split objects: the training-split ones of --ycb-models (ycb_dev has no
            # validation-split objects; the out-of-domain calibration uses pose_ood_set --split validation).
            train_ids = ycb_ids_in(args.ycb_models, "train").object_ids
            models = holdout_models_dir(args.ycb_models, out, train_ids, folder="ycb_validation_models")
            vals.append(ensure_workcell(out / "val_ycb", str(models), 4, VALIDATION_SEED_YCB, scenes))
        scales, exponents = calibrate(vals, args.modes, fusion_config, args.max_targets)
        fusion_config = replace(fusion_config, refinement=replace(fusion_config.refinement, covariance_scale=scales,
                                                                  covariance_score_exponent=exponents))
        print(f"covariance scales: {scales}, score exponents: {exponents}")
    sensitivity = [tuple(float(x) for x in s.split("/")) for s in args.sensitivity]
    rows = []
    for name, path in datasets.items():
        for mode in args.modes:
            sens = [(mm / 1e3, deg) for mm, deg in sensitivity] if name == "procedural" else []
            methods = ["association", "refinement"] + (list(ABLATIONS) if args.ablation else [])
            rows += evaluate_dataset(path, name, mode, fusion_config, args.max_targets, methods, sens)[0]
    table = format_table(rows)
    print(table)
    result = {"rows": rows, "covariance_scale": scales, "covariance_score_exponent": exponents, "seconds": time.perf_counter() - started, "threads": args.threads,
              "command": "pose_refinement_bench " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        path = default_calibration_path()
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if scales is not None:
            meta["covariance_scale"] = scales
            meta["covariance_score_exponent"] = exponents
            meta["covariance_calibration"] = {
                "datasets": {"val_proc": VALIDATION_SEED, "val_ycb (YCB ids not held out)": VALIDATION_SEED_YCB},
                "rule": ("covariance = scale * score^-exponent * Hessian covariance; exponent: the one whose per-workcell 95.45 % "
                         "coverages stray least from 95.45 %; scale: the pooled 95.45 % chi-square(6) region covers 95.45 %"),
            }
        meta["evaluation"] = {"command": result["command"], "rows": rows}
        path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
