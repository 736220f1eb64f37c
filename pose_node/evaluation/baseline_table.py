"""One table from the result files of ``scripts/ood_baseline.sh`` (markdown, for the README).

    python -m pose_node.evaluation.baseline_table --out-dir out/ood_baseline ood_test_raster ood_test

For each dataset name it reads ``NAME_detection_{rgbd,rgb}.json`` (``pose_eval --stages detection``),
``NAME_refinement.json`` (``pose_refinement_bench``) and ``NAME_bench_{rgbd,rgb}.json``
(``pose_bench --dataset``); a missing file leaves its cells empty ("-").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES: tuple[str, ...] = ("rgbd", "rgb")
COLUMNS: tuple[str, ...] = (
    "set", "mode", "det. recall", "det. precision", "mask AP", "single-view AR", "4-view AR (assoc.)",
    "4-view AR (refined)", "95 % coverage (single / refined)", "latency median / p95 (s per frame)",
)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(out_dir: Path, name: str) -> list[list[str]]:
    """The table's rows (one per mode) of one dataset."""
    refinement = _read(out_dir / f"{name}_refinement.json")
    methods = {(r["mode"], r["method"]): r for r in (refinement or {}).get("rows", [])}
    rows = []
    for mode in MODES:
        detection = (_read(out_dir / f"{name}_detection_{mode}.json") or {}).get("detection") or {}
        bench = (_read(out_dir / f"{name}_bench_{mode}.json") or {}).get("end_to_end_ms") or {}
        single = methods.get((mode, "single view"), {})
        association = methods.get((mode, "association"), {})
        refined = methods.get((mode, "refinement"), {})
        latency = "-" if not bench else f"{bench['median'] / 1e3:.2f} / {bench['p95'] / 1e3:.2f}"
        rows.append([
            name, "RGB-D" if mode == "rgbd" else "RGB", _num(detection.get("recall")), _num(detection.get("precision")),
            _num(detection.get("mask_ap")), _num(single.get("AR"), 3), _num(association.get("AR"), 3), _num(refined.get("AR"), 3),
            f"{_num(single.get('coverage_95'))} / {_num(refined.get('coverage_95'))}", latency,
        ])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="baseline_table", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="dataset names used with scripts/ood_baseline.sh")
    p.add_argument("--out-dir", type=Path, default=Path("out/ood_baseline"))
    args = p.parse_args(argv)
    print(markdown([row for name in args.names for row in table_rows(args.out_dir, name)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
