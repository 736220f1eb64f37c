"""``pose_metrics_bench``: how fast the BOP pose-error functions run on this machine.

Times VSD (GL depth renders at 640x480), MSSD, MSPD and ADD-S for one 16k-face procedural object,
without and with a continuous symmetry (discretized as bop_toolkit does: 315 transforms), and
prints calls per second (median of repeats after a warm-up).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pose_node.core.geometry import so3_exp
from pose_node.evaluation import metrics
from pose_node.evaluation.runner import RendererDepthAdapter
from pose_node.onboarding.mesh_loading import symmetry_transforms
from pose_node.onboarding.procedural import make_procedural_object

WIDTH_PX, HEIGHT_PX = 640, 480
K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (GL context, KD-tree construction, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def run_benchmark(repeats: int = 20, target_faces: int = 16000) -> dict[str, float]:
    """Returns ``{metric: median milliseconds per call}``."""
    import torch

    model = make_procedural_object(1, seed=0, target_faces=target_faces, shape="ellipsoid")
    points = model.vertices.astype(np.float64)
    rng = np.random.default_rng(0)
    T_gt = np.eye(4)
    T_gt[:3, :3] = so3_exp(torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)).numpy()
    T_gt[:3, 3] = [0.02, -0.01, 0.6]
    T_est = T_gt.copy()
    T_est[:3, :3] = so3_exp(torch.tensor(rng.normal(0, 0.05, 3))).numpy() @ T_gt[:3, :3]
    T_est[:3, 3] += rng.normal(0, 0.005, 3)
    continuous = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]})
    hull = metrics.hull_points(points)
    render = RendererDepthAdapter([model])
    depth_test = render(1, K, T_gt, WIDTH_PX, HEIGHT_PX)
    results = {
        "vsd_640x480_ms": _median_ms(lambda: metrics.vsd(render, 1, T_est, T_gt, depth_test, K, model.diameter_m), repeats),
        "mssd_ms": _median_ms(lambda: metrics.mssd(T_est, T_gt, hull), repeats),
        "mssd_315_symmetries_ms": _median_ms(lambda: metrics.mssd(T_est, T_gt, hull, continuous), repeats),
        "mspd_ms": _median_ms(lambda: metrics.mspd(T_est, T_gt, K, hull), repeats),
        "mspd_315_symmetries_ms": _median_ms(lambda: metrics.mspd(T_est, T_gt, K, hull, continuous), repeats),
        "add_s_ms": _median_ms(lambda: metrics.add_s(T_est, T_gt, points), repeats),
    }
    results.update({"n_vertices": float(len(points)), "n_hull_vertices": float(len(hull)), "n_faces": float(len(model.faces))})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pose_metrics_bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    results = run_benchmark(args.repeats)
    print(f"object: {int(results['n_faces'])} faces, {int(results['n_vertices'])} vertices "
          f"({int(results['n_hull_vertices'])} on the convex hull)")
    for key, value in results.items():
        if key.endswith("_ms"):
            print(f"{key[:-3]:<26} {value:8.2f} ms/call  {1e3 / value:9.1f} calls/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
