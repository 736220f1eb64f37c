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
``--calibrate-dataset NAME=DIR`` adds out-of-domain validation sets (``pose_ood_set --split
validation``; a set with a test-split object is refused); without ``--calibrate`` they are used alone. Either way the
publishing threshold comes first (the lowest refined score whose poses are correct, MSSD < 0.1
diameter, at least 95 % of the time: ``pose_score_threshold``, the node's default ``pose_score``),
then s and k on the poses it publishes (:func:`calibrate`).
Every single-view and multi-view row gets a coverage report: 68 / 95 / 99.7 % coverage overall
and per bin (views that see the object, visible fraction) and the median NLL.

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pose_node.benchmark.correspondence import (
    TEST_SEED_PROCEDURAL, TEST_SEED_YCB, VALIDATION_SEED, ensure_workcell, holdout_models_dir,
)
from pose_node.core.geometry import so3_exp
from pose_node.datasets.splits import check_not_test_set, ycb_ids_in
from pose_node.evaluation.calibration import (
    COVERAGE_LEVELS, POSE_DOF, coverage_by_bin, coverage_from_mahalanobis, score_threshold_for_precision,
)
from pose_node.evaluation.runner import EvalConfig, run
from pose_node.refinement.fusion import FusionConfig, MultiViewFusion, default_calibration_path
from pose_node.refinement.refiner import MIN_SCORE_FOR_SCALE
from pose_node.ros.node_config import default_publish_pose_score

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


def _median_finite(values) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else None


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
        "AR_MSPD": r["AR_MSPD"], "coverage_68": (r["covariance_coverage"] or {}).get("68"),
        "coverage_95": (r["covariance_coverage"] or {}).get("95"), "coverage_99.7": (r["covariance_coverage"] or {}).get("99.7"),
        "nll_median": _median_finite(m.get("nll", [])),
        "rot_err_deg_median": r["pose_errors"]["rotation_deg"]["median"],
        "trans_err_mm_median": None if trans is None else 1e3 * trans,
        "score_auroc": auroc(m["score"], correct), "refinement_ms_per_object": ms_per_object,
        "refinement_ms_per_object_median_frame": ms_per_object_median,
        "n_estimates": r["n_estimates"], "n_targets": r["n_targets"],
    }


def evaluate_dataset(path: Path, name: str, mode: str, fusion_config: FusionConfig, max_targets: int | None,
                     methods: list[str], sensitivity: list[tuple[float, float]],
                     weights_path: Path | None = None) -> tuple[list[dict], dict]:
    """All rows of one dataset and mode; also returns the raw results of the single view and each method.

    ``weights_path``: the correspondence network to run (None: the shipped one).
    """
    from pose_node.datasets.bop import BopDataset
    from pose_node.evaluation.stages.correspondence import correspondence_factory
    from pose_node.pipeline.estimate import CorrespondenceStageConfig

    stage_config = CorrespondenceStageConfig(weights_path=None if weights_path is None else str(weights_path))
    config = EvalConfig(mode=mode, stages=STAGES, max_targets=max_targets, correspondence=stage_config)
    models = BopDataset(path).models(config.models_subdir)
    single = CachedSingleView(correspondence_factory(STAGES[:2], config, models))
    rows, raw = [], {}
    r = run(path, TARGETS, config, estimator=single)
    rows.append(row("single view", name, mode, r, None))
    raw["single view"] = r
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
#: render-and-compare verification, without both and the flip hypotheses (the refinement before them),
#: and refining candidates only one view detected too (``min_supporting_views`` 1).
ABLATIONS: tuple[str, ...] = ("refinement -registration", "refinement -verification", "refinement -registration -verification -flips",
                              "refinement -multiview-support")


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
        elif part == "multiview-support":
            refinement = replace(refinement, min_supporting_views=1)
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


#: Bins of the coverage report: views that see the object, its mean visible fraction.
VIEW_BINS: tuple[tuple[str, int, int], ...] = (("1 view", 1, 1), ("2 views", 2, 2), ("3+ views", 3, 99))
VISIB_BINS: tuple[tuple[str, float, float], ...] = (("visib < 0.5", 0.0, 0.5), ("visib 0.5-0.8", 0.5, 0.8),
                                                    ("visib >= 0.8", 0.8, 1.01))
#: A published pose must be correct (MSSD < 0.1 diameter) at least this often on the validation split.
PUBLISH_PRECISION = 0.95


def correct_estimates(matched: dict) -> tuple[list[float], list[bool]]:
    """Scores of every estimate (matched and unmatched) and whether each is correct (MSSD < 0.1 d)."""
    scores = list(matched["score"]) + list(matched.get("unmatched_scores", []))
    correct = [d < 0.1 * dia for d, dia in zip(matched["mssd_m"], matched["diameter_m"])]
    return scores, correct + [False] * len(matched.get("unmatched_scores", []))


def coverage_report(raw: dict, threshold: float | None = None) -> dict:
    """Coverage of the 68 / 95 / 99.7 % regions overall, of the poses ``threshold`` publishes
    (score >= it; None: no such row) and per bin (views that see the object, visible fraction), and
    the median NLL, of one run's matched estimates."""
    m = raw["matched_estimates"]
    d2 = np.asarray(raw["covariance_d2"], dtype=np.float64)
    published = None
    if threshold is not None:
        kept = np.asarray(m["score"], dtype=np.float64) >= threshold
        scores, correct = correct_estimates(m)
        published_correct = [c for sc, c in zip(scores, correct) if sc >= threshold]
        published = {"n": int(kept.sum()), "threshold": float(threshold),
                     "precision": float(np.mean(published_correct)) if published_correct else None,
                     **coverage_from_mahalanobis(d2[kept])}
    views = np.asarray(m.get("views_visible", []), dtype=np.int64)
    visib = np.asarray(m.get("visib_fract", []), dtype=np.float64)
    out = {"all": {"n": int(len(d2)), **coverage_from_mahalanobis(d2)}, "nll_median": _median_finite(m.get("nll", []))}
    if published is not None:
        out["published"] = published
    if len(views) == len(d2) and len(d2):
        view_keys = [next((name for name, lo, hi in VIEW_BINS if lo <= v <= hi), "0 views") for v in views]
        out["views"] = coverage_by_bin(d2, view_keys)
        visib_keys = [next((name for name, lo, hi in VISIB_BINS if lo <= f < hi), "visib unknown") for f in visib]
        out["visibility"] = coverage_by_bin(d2, visib_keys)
    return out


@dataclass
class Calibration:
    """What ``--calibrate`` fits per mode on the validation sets (module docstring).

    Attributes:
        scales, exponents: the refined covariance's scale s and score exponent k.
        single_view_scales: the single-view covariance factors the single-view 95.45 % coverage would
            need on the validation sets (reported, not applied: :func:`calibrate`).
        pose_score_thresholds: the lowest refined score whose published poses are correct at least
            :data:`PUBLISH_PRECISION` of the time, with that precision and the recall of correct poses kept.
        datasets: name -> path of the validation sets used.
    """

    scales: dict[str, float] = field(default_factory=dict)
    exponents: dict[str, float] = field(default_factory=dict)
    single_view_scales: dict[str, float] = field(default_factory=dict)
    pose_score_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)


def _score_terciles(d2: np.ndarray, scores: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``d2`` and ``scores`` split into three groups by score (one group under 9 estimates)."""
    if len(d2) < 9:
        return [d2], [scores]
    order = np.argsort(scores, kind="stable")
    parts = np.array_split(order, 3)
    return [d2[p] for p in parts], [scores[p] for p in parts]


def calibrate(vals: dict[str, Path], modes: list[str], fusion_config: FusionConfig, max_targets: int | None,
              single_view_scales: dict[str, float], weights_path: Path | None = None) -> Calibration:
    """Publishing thresholds, covariance scales and score exponents per mode, fitted on the validation sets.

    Per mode: (1) the threshold: the highest of the sets' own (:data:`PUBLISH_PRECISION`,
    :func:`score_threshold_for_precision` over every refined estimate of the set, the unmatched
    ones counting as wrong), so published poses are right that often on every set; (2) s and k
    (:func:`fit_covariance`) on the poses that threshold publishes, per set (one set: split into
    score terciles) so that k evens out their coverages: the covariance must be honest for what the robot receives,
    and a wrong pose below the threshold is never published. The single-view factor that would
    make the single-view 95.45 % coverage exact is reported (``single_view_scales``), not applied:
    the association's covariance gate reads those covariances, and flips out of the domain would
    inflate them until every hypothesis links.

    Args:
        vals: name -> validation dataset (never test-split objects: :func:`pose_node.datasets.splits.check_not_test_set`).
        single_view_scales: the single-view covariance factors the runs use (the weights' metadata).
        weights_path: the correspondence network (None: the shipped one).
    """
    from scipy.stats import chi2

    unscaled = replace(fusion_config, refinement=replace(fusion_config.refinement, covariance_scale={"rgb": 1.0, "rgbd": 1.0},
                                                         covariance_score_exponent={}))
    out = Calibration(datasets={k: str(v) for k, v in vals.items()})
    bound = chi2.ppf(COVERAGE_LEVELS["95"], POSE_DOF)
    for mode in modes:
        d2, scores, single_d2, per_set = [], [], [], {}
        for name, val in vals.items():
            raw = evaluate_dataset(val, "val", mode, unscaled, max_targets, ["refinement"], [], weights_path)[1]
            d2.append(np.asarray(raw["refinement"]["covariance_d2"], dtype=np.float64))
            scores.append(np.asarray(raw["refinement"]["matched_estimates"]["score"], dtype=np.float64))
            single_d2.append(np.asarray(raw["single view"]["covariance_d2"], dtype=np.float64))
            per_set[name] = correct_estimates(raw["refinement"]["matched_estimates"])
        # The highest of the sets' thresholds: published poses are right >= PUBLISH_PRECISION on every set
        # (pooling would let the easy in-domain sets lower the bar the out-of-domain one sets).
        fits = {name: score_threshold_for_precision(sc, c, PUBLISH_PRECISION) for name, (sc, c) in per_set.items()}
        threshold = max(t for t, _, _ in fits.values())
        all_scores = [x for sc, _ in per_set.values() for x in sc]
        all_correct = [x for _, c in per_set.values() for x in c]
        kept = [c for sc, c in zip(all_scores, all_correct) if sc >= threshold]
        precision = float(np.mean(kept)) if kept else float("nan")
        recall = float(sum(kept) / max(sum(all_correct), 1))
        out.pose_score_thresholds[mode] = {"threshold": threshold, "precision": precision, "recall_of_correct": recall,
                                           "n_estimates": len(all_scores),
                                           "per_set": {name: {"threshold": t, "precision": pr, "recall_of_correct": rc}
                                                       for name, (t, pr, rc) in fits.items()}}
        published = [sc >= threshold for sc in scores]
        if sum(int(p.sum()) for p in published) < 3:  # too few published poses to fit on: all matched estimates
            published = [np.ones_like(p) for p in published]
        if len(vals) > 1:  # k evens out the sets' coverages
            groups = ([d[p] for d, p in zip(d2, published)], [sc[p] for sc, p in zip(scores, published)])
        else:  # one set: k evens out its score terciles' coverages
            groups = _score_terciles(d2[0][published[0]], scores[0][published[0]])
        out.scales[mode], out.exponents[mode], coverages = fit_covariance(*groups)
        pooled = np.concatenate(single_d2)
        factor = float(np.quantile(pooled, COVERAGE_LEVELS["95"]) / bound) if len(pooled) else 1.0
        out.single_view_scales[mode] = float(single_view_scales.get(mode, 1.0)) * factor
        logger.info("calibration %s: pose_score threshold %.3f (precision %.3f, keeps %.2f of correct poses); %d published "
                    "poses: scale %.3g, score exponent %g, coverages per set (one set: per score tercile) %s; single view would need x%.3g", mode, threshold,
                    precision, recall, sum(int(p.sum()) for p in published), out.scales[mode], out.exponents[mode], coverages, factor)
    return out


def format_coverage(rows: list[dict]) -> str:
    """Coverage of the 68 / 95 / 99.7 % regions per row and bin (rows with a coverage report)."""
    lines = ["dataset | mode | method | bin | n | 68 % | 95 % | 99.7 % | precision (published)"]
    for r in rows:
        report = r.get("coverage_report")
        if not report:
            continue
        bins = {"all": report["all"], **({"published": report["published"]} if "published" in report else {}),
                **report.get("views", {}), **report.get("visibility", {})}
        for name, b in bins.items():
            cells = [f"{b[k]:.2f}" if b[k] is not None else "-" for k in COVERAGE_LEVELS]
            precision = "-" if b.get("precision") is None else f"{b['precision']:.2f}"
            lines.append(" | ".join([r["dataset"], r["mode"], r["method"], name, str(b["n"]), *cells, precision]))
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    cols = ["dataset", "mode", "method", "AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "coverage_95", "nll_median", "rot_err_deg_median",
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
    parser.add_argument("--calibrate-dataset", nargs="*", default=[], metavar="NAME=DIR",
                        help="calibrate on these validation-split sets (pose_ood_set --split validation); with --calibrate "
                             "also on the in-domain validation workcells, else on these alone")
    parser.add_argument("--record", action="store_true", help=f"write scales and table to models/{default_calibration_path().name}")
    parser.add_argument("--sensitivity", nargs="*", default=[], metavar="MM/DEG",
                        help="extrinsic errors to test, e.g. 2/0.2 5/0.5 (procedural, refinement)")
    parser.add_argument("--crop-size", type=int, default=None, help="refinement crop side, pixels (default: CropConfig's)")
    parser.add_argument("--max-points", type=int, default=None, help="refinement points per view (default: CropConfig's)")
    parser.add_argument("--ablation", action="store_true", help="also the refinement without registration, verification, both, and without multi-view support")
    parser.add_argument("--weights", type=Path, default=None,
                        help="correspondence network checkpoint to evaluate (default: the shipped models/correspondence_effl0.pt)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("out/bench_refinement.json"))
    args = parser.parse_args(argv)
    if args.weights is not None and not args.weights.is_file():
        parser.error(f"--weights {args.weights}: no such file")
    if args.weights is not None and args.record:
        parser.error("--record writes the shipped network's calibration: evaluate candidate --weights without it")
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
    calibration = None
    if args.calibrate or args.calibrate_dataset:
        vals = {}
        for spec in args.calibrate_dataset:
            name, sep, path = spec.partition("=")
            if not sep or not (Path(path) / TARGETS).is_file():
                parser.error(f"--calibrate-dataset {spec!r}: expected NAME=DIR with DIR/{TARGETS}")
            check_not_test_set(path, f"calibrate on {name}")
            vals[name] = Path(path)
        if args.calibrate or not vals:  # the in-domain validation workcells: validation seeds, training-split YCB objects
            vals["val_proc"] = ensure_workcell(out / "val_proc", "procedural", 4, VALIDATION_SEED, scenes)
            if args.ycb_models is not None:
                # Real meshes too, but never test-split objects: the training-split ones of --ycb-models (ycb_dev has
                # no validation-split objects; the out-of-domain sets come with --calibrate-dataset).
                train_ids = ycb_ids_in(args.ycb_models, "train").object_ids
                models = holdout_models_dir(args.ycb_models, out, train_ids, folder="ycb_validation_models")
                vals["val_ycb"] = ensure_workcell(out / "val_ycb", str(models), 4, VALIDATION_SEED_YCB, scenes)
        from pose_node.pipeline.estimate import covariance_scales, default_weights_path

        calibration = calibrate(vals, args.modes, fusion_config, args.max_targets,
                                covariance_scales(args.weights or default_weights_path()), args.weights)
        fusion_config = replace(fusion_config, refinement=replace(fusion_config.refinement, covariance_scale=calibration.scales,
                                                                  covariance_score_exponent=calibration.exponents))
        print(f"calibration: {json.dumps(asdict(calibration))}")
    sensitivity = [tuple(float(x) for x in s.split("/")) for s in args.sensitivity]
    rows = []
    for name, path in datasets.items():
        for mode in args.modes:
            sens = [(mm / 1e3, deg) for mm, deg in sensitivity] if name == "procedural" else []
            methods = ["association", "refinement"] + (list(ABLATIONS) if args.ablation else [])
            new_rows, raw = evaluate_dataset(path, name, mode, fusion_config, args.max_targets, methods, sens, args.weights)
            threshold = (calibration.pose_score_thresholds[mode]["threshold"] if calibration is not None
                         else default_publish_pose_score(mode))
            for r in new_rows:  # the coverage report of each single-view and multi-view row
                if r["method"] in raw:
                    r["coverage_report"] = coverage_report(raw[r["method"]], None if r["method"] == "single view" else threshold)
            rows += new_rows
    table = format_table(rows)
    print(table)
    print(format_coverage(rows))
    result = {"rows": rows, "calibration": None if calibration is None else asdict(calibration),
              "weights": str(args.weights) if args.weights is not None else "shipped",
              "seconds": time.perf_counter() - started, "threads": args.threads,
              "command": "pose_refinement_bench " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.record:
        path = default_calibration_path()
        meta = json.loads(path.read_text()) if path.is_file() else {}
        if calibration is not None:
            meta["covariance_scale"] = calibration.scales
            meta["covariance_score_exponent"] = calibration.exponents
            meta["pose_score_threshold"] = calibration.pose_score_thresholds
            meta["covariance_calibration"] = {
                "datasets": calibration.datasets,
                "rule": (f"pose_score_threshold: the lowest score whose published poses are correct >= {PUBLISH_PRECISION:.0%}; "
                         "covariance = scale * score^-exponent * Hessian covariance, fitted on the published poses: exponent: "
                         "the one whose score-tercile 95.45 % coverages stray least from 95.45 %; scale: the pooled 95.45 % "
                         "chi-square(6) region covers 95.45 %"),
                "single_view_scale_needed": calibration.single_view_scales,
            }
        meta["evaluation"] = {"command": result["command"], "rows": rows}
        path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
