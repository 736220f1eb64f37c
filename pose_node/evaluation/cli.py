"""``pose_eval``: run the pipeline over BOP targets and write BOP scores.

    pose_eval --dataset DIR [--targets FILE] [--mode rgb|rgbd] [--max-targets N]
              [--stages detection|correspondence|refinement|full ...] [--multiview refinement|association]
              [--cache-dir DIR] [--detection-without multiview untextured-grey] --out results.json

Writes ``results.json`` (AR, AR_VSD / AR_MSSD / AR_MSPD, recalls, ADD-S recall, latency,
covariance coverage, per-object scores, stage status, config, and the ``detection`` block:
recall, precision, mask AP, per-view latency) and the estimates in the BOP19 CSV format next to
it (same stem, ``.csv``), and prints a summary. Missing pipeline stages are reported as missing
and yield zero estimates (AR 0); nothing is faked. ``--stages detection`` runs and scores
detection only (the detection benchmark).

Real datasets (YCB-V, LM-O, ...) and recordings may lack ``mask_visib/``, ``scene_gt_info.json``
or some depth images, and store RGB as JPEG: detection is then skipped with the reason, the GT
visibility is computed from the models (cached in ``<out stem>.gt_info.json``, never in the
dataset), and frames whose images have no depth run in RGB (see
:mod:`pose_node.evaluation.runner`). Without ``--targets`` the BOP19 targets are derived from the
GT (instances with visib_fract >= 0.1).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pose_node.core.errors import PoseNodeError
from pose_node.evaluation.runner import (
    KNOWN_STAGES,
    MODES,
    STAGE_ALIASES,
    VSD_WITHOUT_DEPTH,
    EvalConfig,
    expand_stages,
    run,
)
from pose_node.pipeline.budget import TimeBudgetConfig

#: Detection parts ``--detection-without`` can switch off (ablation rows).
DETECTION_ABLATIONS: tuple[str, ...] = ("multiview", "untextured-grey")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pose_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, type=Path, help="BOP dataset directory (holds models/ and the split)")
    p.add_argument("--targets", default=None, type=Path,
                   help="targets JSON: BOP19 ({im_id}) or multi-view ({im_ids}); relative to --dataset or the cwd "
                        "(default: derived from scene_gt, GT instances with visib_fract >= 0.1)")
    p.add_argument("--mode", choices=MODES, default="rgbd", help="give the pipeline depth (rgbd) or not (rgb)")
    p.add_argument("--max-targets", type=int, default=None, metavar="N", help="only the first N targets")
    p.add_argument("--stages", nargs="+", default=["full"], choices=[*KNOWN_STAGES, *STAGE_ALIASES],
                   help="pipeline stages to run (full = all)")
    p.add_argument("--split", default="test", help="split folder, e.g. test, test_primesense (default: test)")
    p.add_argument("--vsd-without-depth", default="gt_render", choices=VSD_WITHOUT_DEPTH,
                   help="VSD of images without a depth file: test depth = GT instances rendered at the GT poses "
                        "(gt_render), or VSD and AR null (unavailable)")
    p.add_argument("--cache-dir", default=None, help="onboarding cache directory (default: $POSE_NODE_CACHE/onboarding "
                   "or ~/.cache/pose_node/onboarding)")
    p.add_argument("--out", required=True, type=Path, help="results JSON path")
    p.add_argument("--weights", default=None, help="correspondence network checkpoint (default: models/correspondence_effl0.pt)")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                   help="inference backend of the correspondence network")
    p.add_argument("--multiview", default="refinement", choices=["refinement", "association"],
                   help="refinement stage: association + feature-metric refinement, or association only (ablation)")
    p.add_argument("--device", default="cpu", help="torch device of the pose stages (cpu, cuda:0)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice; 1 is steadier on a CPU shared with other processes)")
    p.add_argument("--max-proposals-per-view", type=int, default=32, metavar="N",
                   help="proposals matched per view, highest proposal score first (0: no cap; the node's "
                        "pipeline.max_proposals_per_view, default 32)")
    p.add_argument("--time-budget-ms", type=float, default=0.0, metavar="MS",
                   help="per-set time budget of the refinement stage, milliseconds (0: off; the node's pipeline.time_budget_ms)")
    p.add_argument("--detection-without", nargs="+", default=[], choices=DETECTION_ABLATIONS, metavar="PART",
                   help="ablation: switch detection parts off (multiview: the other views' confirmation of RGB-D "
                        "detections; untextured-grey: the grey colour variant for untextured objects)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_summary(r: dict) -> str:
    """A readable multi-line summary of a results dictionary."""
    cfg = r["config"]
    lines = [
        f"pose_eval: {cfg['dataset']} [{cfg['split']}], mode {r['mode']}: {r['n_targets']} targets in "
        f"{r['n_frames']} frames, {r['n_gt']} GT instances, {r['n_estimates']} estimates",
        "stages: " + ", ".join(f"{k} {v}" for k, v in r["stages"].items()),
    ]
    if (r.get("targets_source") or {}).get("kind") == "derived":
        lines.append(f"targets: derived from the GT ({r['targets_source']['rule']})")
    lines += format_data_gaps(r)
    if any(v == "missing" for v in r["stages"].values()):
        lines.append("  -> a requested stage is missing: no estimates were produced, every recall is 0")
    lines.append(f"AR {_fmt(r['AR'])}  (VSD {_fmt(r['AR_VSD'])}, MSSD {_fmt(r['AR_MSSD'])}, MSPD {_fmt(r['AR_MSPD'])})"
                 f"   ADD-S@0.1d {_fmt(r['ADD_S_recall_0.1d'])}   ADD(-S)@0.1d {_fmt(r['ADD(-S)_recall_0.1d'])}")
    if r.get("vsd_unavailable_reason"):
        lines.append(f"  VSD unavailable: {r['vsd_unavailable_reason']}")
    def med_p95(s: dict) -> str:
        return "n/a" if s["median"] is None else f"{s['median']:.1f}/{s['p95']:.1f}"

    stages = ", ".join(f"{k} {med_p95(v)}" for k, v in r["latency_ms"]["per_stage"].items())
    lines.append(f"latency ms (median/p95): total {med_p95(r['latency_ms']['total'])}" + (f"; {stages}" if stages else ""))
    cov = r["covariance_coverage"]
    if cov is None:
        lines.append("covariance coverage: n/a (no estimates matched to GT)")
    else:
        lines.append("covariance coverage (nominal 0.683/0.955/0.997): "
                     + " / ".join(_fmt(cov[k]) for k in ("68", "95", "99.7")) + f"  (n={r['covariance_coverage_n']})")
    pe = r["pose_errors"]
    if pe["n"]:
        lines.append(f"pose errors of estimates matched to GT (median): rotation {pe['rotation_deg']['median']:.2f} deg, "
                     f"translation {pe['translation_m']['median'] * 1000:.1f} mm  (n={pe['n']})")
    if r["per_object"]:
        lines.append("per object: " + ", ".join(f"{k}: AR {_fmt(v['AR'])} (n={v['n_gt']})" for k, v in r["per_object"].items()))
    if r.get("detection"):
        d = r["detection"]
        lines.append(f"detection: skipped ({d['skipped']})" if "skipped" in d else format_detection(d))
    for stage, reason in (r.get("stage_errors") or {}).items():
        lines.append(f"stage {stage} unavailable: {reason}")
    if r.get("frame_errors"):
        lines.append(f"{len(r['frame_errors'])} frames failed, first: {r['frame_errors'][0]}")
    if r.get("multiview_protocol"):
        lines.append(f"multi-view: {r['multiview_protocol']}")
    return "\n".join(lines)


def _image_list(ids: list, truncated: bool) -> str:
    return ", ".join(f"{s}/{i}" for s, i in ids) + (", ..." if truncated else "")


def format_data_gaps(r: dict) -> list[str]:
    """Lines on what the dataset lacked and how it was handled (visibility, depth)."""
    lines = []
    vis = r.get("visibility") or {}
    if vis.get("scenes_without_gt_info"):
        lines.append(f"visibility ({vis['source']}): {len(vis['scenes_without_gt_info'])} scenes without scene_gt_info.json; "
                     f"{vis['n_images_computed']} images rendered, {vis['n_images_from_cache']} from cache, "
                     f"{vis['n_images_targets_as_given']} with the targets taken as given")
    nd = r.get("images_without_depth") or {}
    if nd.get("count"):
        line = f"images without depth: {nd['count']} (scene/im: {_image_list(nd['ids'], nd['truncated'])})"
        if r["mode"] == "rgbd":
            line += f"; {nd['frames_run_rgb']} frames run in RGB"
        if nd.get("vsd_depth"):
            line += f"; VSD test depth there: {nd['vsd_depth']}"
        lines.append(line)
    return lines


def format_detection(d: dict) -> str:
    """One line of detection scores and per-view latency (a results["detection"] block)."""
    lat = d["latency_ms"]
    latency = "n/a" if lat["median"] is None else (
        f"{lat['median']:.1f} ms median / {lat['p95']:.1f} p95 per view (proposals {lat['proposals_median']:.1f}, "
        f"matching {lat['matching_median']:.1f})")
    return (f"detection ({d['mode']}): recall {_fmt(d['recall'])}  precision {_fmt(d['precision'])}  mask AP {_fmt(d['mask_ap'])}"
            f"  ({d['n_gt']} GT with visib >= {d['visib_fract_min']:g}, {d['n_detections']} detections, {d['n_images']} images); latency {latency}")


def _stage_config(args: argparse.Namespace, stage: str, build: Callable[[], object]):
    """``build()``, the settings of ``stage``; None when that stage is not requested (so its module
    is not imported) or its module cannot be imported (the runner reports it missing, with the reason)."""
    if stage not in expand_stages(args.stages):
        return None
    try:
        return build()
    except ImportError:
        return None


def _correspondence_config(args: argparse.Namespace):
    def build():
        from pose_node.pipeline.estimate import CorrespondenceStageConfig

        return CorrespondenceStageConfig(weights_path=args.weights, backend=args.backend, device=args.device)
    return _stage_config(args, "correspondence", build)


def _detector_config(args: argparse.Namespace):
    def build():
        from pose_node.detection.detector import DetectorConfig
        from pose_node.detection.matching import MatchingConfig
        from pose_node.detection.multiview import MultiViewEvidenceConfig

        off = set(args.detection_without)
        return DetectorConfig(max_proposals_per_view=args.max_proposals_per_view,
                              multiview=MultiViewEvidenceConfig(min_views=1) if "multiview" in off else MultiViewEvidenceConfig(),
                              matching=MatchingConfig(untextured_grey_margin=None) if "untextured-grey" in off else MatchingConfig())
    return _stage_config(args, "detection", build)


def _refinement_config(args: argparse.Namespace):
    def build():
        from pose_node.refinement.fusion import FusionConfig

        return FusionConfig(method=args.multiview, device=args.device)
    return _stage_config(args, "refinement", build)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.max_targets is not None and args.max_targets < 0:
        print("pose_eval: --max-targets must be >= 0", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("pose_eval: --threads must be >= 1", file=sys.stderr)
            return 2
        import torch  # only when asked: the runner itself does not need torch

        torch.set_num_threads(args.threads)
    if args.max_proposals_per_view < 0 or not 0 <= args.time_budget_ms < float("inf"):
        print("pose_eval: --max-proposals-per-view and --time-budget-ms must be >= 0 (0: off)", file=sys.stderr)
        return 2
    config = EvalConfig(mode=args.mode, stages=expand_stages(args.stages), max_targets=args.max_targets, cache_dir=args.cache_dir,
                        correspondence=_correspondence_config(args), refinement=_refinement_config(args),
                        vsd_without_depth=args.vsd_without_depth, detector=_detector_config(args),
                        time_budget=TimeBudgetConfig(time_budget_ms=args.time_budget_ms))
    csv_path = args.out.with_suffix(".csv")
    try:
        results = run(args.dataset, args.targets, config, split=args.split, csv_path=csv_path,
                      gt_info_cache=args.out.with_suffix(".gt_info.json"))
    except PoseNodeError as exc:
        print(f"pose_eval: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_summary(results))
    print(f"results: {args.out}   estimates (BOP CSV): {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
