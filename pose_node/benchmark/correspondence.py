"""``pose_correspondence_bench``: single-view accuracy, covariance calibration and latency of the
correspondence stage (detection -> network -> PnP), on workcells whose objects it never saw.

Datasets (generated into ``--out-dir`` when missing, deterministic for the seeds):

- ``test_proc``: procedural objects (seeds ``2026 * 1000 + i``; training uses ``50_000_000 + i``);
- ``test_ycb``: the YCB objects held out of training (ids 2, 5, 8, 11), when a YCB BOP models
  directory is given (``--ycb-models``, e.g. ../shared/data/ycb_dev/models);
- ``val_proc``: other procedural objects, only for ``--calibrate`` (fits the covariance scale
  per mode so that the 95 % chi-square region covers 95 % of the estimates; written next to the
  weights as ``<weights stem>.json``; the test sets are never used for it).

Each dataset is scored with :func:`pose_node.evaluation.runner.run` on its
``test_targets_bop19.json`` (BOP AR, ADD(-S), covariance coverage) per mode; latency per detection
is the median over frames of (network + PnP time) / detections. Run it on one thread on a shared CPU
(``--threads 1``)::

    pose_correspondence_bench --out-dir out/bench_correspondence --ycb-models ../shared/data/ycb_dev/models --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pose_node.datasets.splits import TEST_YCB_IDS, ycb_ids_in
from pose_node.evaluation.calibration import COVERAGE_LEVELS, POSE_DOF
from pose_node.evaluation.runner import EvalConfig, run
from pose_node.pipeline.estimate import CorrespondenceStageConfig, default_weights_path

logger = logging.getLogger(__name__)

HOLDOUT_YCB_IDS: tuple[int, ...] = TEST_YCB_IDS  # test-split objects: pose_train never sees them
TEST_SEED_PROCEDURAL = 2026
TEST_SEED_YCB = 2027
VALIDATION_SEED = 3031


def holdout_models_dir(ycb_models: Path, out_dir: Path, ids: tuple[int, ...] = HOLDOUT_YCB_IDS,
                       folder: str = "ycb_holdout_models") -> Path:
    """A BOP models directory ``out_dir / folder`` with only the objects ``ids`` (copied)."""
    dst = out_dir / folder
    dst.mkdir(parents=True, exist_ok=True)
    info = json.loads((ycb_models / "models_info.json").read_text())
    keep = {k: v for k, v in info.items() if int(k) in ids}
    for k in keep:
        for ext in ("ply", "png"):
            src = ycb_models / f"obj_{int(k):06d}.{ext}"
            if src.exists():
                shutil.copy(src, dst / src.name)
    (dst / "models_info.json").write_text(json.dumps(keep))
    return dst


def ensure_workcell(out: Path, objects: str, num_objects: int, seed: int, scenes: int) -> Path:
    """Generate a 4-camera workcell with depth noise unless ``out`` already holds one."""
    from pose_node.scene.appearance import AppearanceConfig
    from pose_node.scene.generator import WorkcellConfig, generate_workcell
    from pose_node.scene.layout import LayoutConfig

    if (out / "test_targets_bop19.json").is_file():
        return out
    generate_workcell(WorkcellConfig(
        out_dir=out, objects=objects, num_objects=num_objects, num_scenes=scenes, frames_per_scene=1, seed=seed,
        write_bag=False, overwrite=True, layout=LayoutConfig(num_cameras=4),
        appearance=AppearanceConfig(depth_noise=True),
    ))
    return out


def evaluate(dataset: Path, mode: str, stage: CorrespondenceStageConfig, max_targets: int | None) -> dict:
    """Run and score the correspondence stage on a dataset's BOP19 targets."""
    config = EvalConfig(mode=mode, stages=("detection", "correspondence"), max_targets=max_targets, correspondence=stage)
    return run(dataset, "test_targets_bop19.json", config)


def per_detection_ms(results: dict) -> float | None:
    """Median over frames of (network + PnP) per estimate, from the runner's per-stage latency."""
    stages = results["latency_ms"]["per_stage"]
    if "correspondence" not in stages or not results["n_estimates"]:
        return None
    frames = max(1, results["n_frames"])
    per_frame = (stages["correspondence"]["median"] or 0.0) + (stages["pnp"]["median"] or 0.0)
    return per_frame / (results["n_estimates"] / frames)


def calibrate(val: Path, stage: CorrespondenceStageConfig, weights: Path, modes: list[str], max_targets: int | None) -> dict[str, float]:
    """Covariance scale per mode making the validation 95 % coverage 0.95 (written to the
    weights' json)."""
    from scipy.stats import chi2

    scales = {}
    for mode in modes:
        unscaled = replace(stage, estimator=replace(stage.estimator, covariance_scale=1.0))
        config = EvalConfig(mode=mode, stages=("detection", "correspondence"), max_targets=max_targets, correspondence=unscaled)
        d2 = np.asarray(run(val, "test_targets_bop19.json", config)["covariance_d2"])
        # Scaling the covariance by s divides every d2 by s: pick s so that the share of d2 / s
        # inside the "95" region (chi-square(6), 95.45 %) is 95.45 %.
        level = COVERAGE_LEVELS["95"]
        scales[mode] = float(np.quantile(d2, level) / chi2.ppf(level, POSE_DOF)) if len(d2) else 1.0
        logger.info("calibration %s: %d estimates, scale %.3g", mode, len(d2), scales[mode])
    meta_path = weights.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["covariance_scale"] = {**meta.get("covariance_scale", {}), **scales}
    meta["covariance_calibration"] = {"dataset": str(val), "seed": VALIDATION_SEED, "rule": "the 95.45 % chi-square(6) region covers 95.45 % of validation estimates"}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return scales


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("out/bench_correspondence"))
    parser.add_argument("--weights", type=Path, default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--ycb-models", type=Path, default=None, help="YCB BOP models dir (held-out objects are evaluated)")
    parser.add_argument("--modes", nargs="+", default=["rgbd", "rgb"], choices=["rgbd", "rgb"])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenes", type=int, default=6, help="scenes per test workcell (4 cameras each)")
    parser.add_argument("--max-targets", type=int, default=None)
    parser.add_argument("--calibrate", action="store_true", help="fit the covariance scales on the validation workcell first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--record", action="store_true", help="also store the summary in the weights' json (what shipped weights do)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    weights = args.weights or default_weights_path()
    stage = CorrespondenceStageConfig(weights_path=str(weights), backend=args.backend, device=args.device)
    out = args.out_dir
    if args.calibrate:
        val = ensure_workcell(out / "val_proc", "procedural", 5, VALIDATION_SEED, 4)
        print("covariance scales:", calibrate(val, stage, weights, args.modes, args.max_targets))
    datasets = {"procedural": ensure_workcell(out / "test_proc", "procedural", 5, TEST_SEED_PROCEDURAL, args.scenes)}
    if args.ycb_models is not None:
        models = holdout_models_dir(args.ycb_models, out)
        datasets["ycb_holdout"] = ensure_workcell(out / "test_ycb", str(models), len(ycb_ids_in(models, "test").object_ids), TEST_SEED_YCB, args.scenes)
    rows = []
    for name, path in datasets.items():
        for mode in args.modes:
            started = time.perf_counter()
            r = evaluate(path, mode, stage, args.max_targets)
            cov = r["covariance_coverage"] or {}
            rows.append({
                "dataset": name, "mode": mode, "AR": r["AR"], "AR_VSD": r["AR_VSD"], "AR_MSSD": r["AR_MSSD"], "AR_MSPD": r["AR_MSPD"],
                "ADD(-S)@0.1d": r["ADD(-S)_recall_0.1d"], "coverage_95": cov.get("95"), "coverage_68": cov.get("68"),
                "n_targets": r["n_targets"], "n_estimates": r["n_estimates"],
                "rot_err_deg_median": r["pose_errors"]["rotation_deg"]["median"],
                "trans_err_mm_median": None if r["pose_errors"]["translation_m"]["median"] is None else 1e3 * r["pose_errors"]["translation_m"]["median"],
                "ms_per_detection": per_detection_ms(r), "wall_s": round(time.perf_counter() - started, 1),
            })
    header = ["dataset", "mode", "AR", "AR_VSD", "AR_MSSD", "AR_MSPD", "ADD(-S)@0.1d", "coverage_95", "rot_err_deg_median",
              "trans_err_mm_median", "ms_per_detection", "n_targets", "n_estimates"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[h]:.3f}" if isinstance(row[h], float) else str(row[h]) for h in header))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.record:
        meta_path = weights.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta["evaluation"] = {"command": "pose_correspondence_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "threads": args.threads, "rows": rows}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
