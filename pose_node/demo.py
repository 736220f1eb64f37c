"""``pose_demo`` (``make demo``): a synthetic 3-camera workcell, end to end with the stages that exist.

1. Generate (or reuse) a workcell with procedural objects: BOP dataset + rosbag2 + ground truth.
2. Run the pose pipeline over its multi-view targets with ``pose_eval``'s runner (stages that are
   not implemented yet are reported as missing and produce no estimates).
3. Write overlay images (ground truth in green, estimates in magenta) and a results JSON, and
   print per-object errors and the latency summary.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pose_node.datasets.bop import BopDataset, read_estimates_csv
from pose_node.evaluation.runner import EvalConfig, run
from pose_node.ros.local_env import apply_local_ros_environment
from pose_node.scene.generator import WorkcellConfig, generate_workcell, read_scene_world
from pose_node.scene.layout import LayoutConfig
from pose_node.visualization import draw_pose_overlay

logger = logging.getLogger(__name__)

GT_COLOR_RGB = (0, 255, 0)
ESTIMATE_COLOR_RGB = (255, 0, 255)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates; a dataset generated with the same config is reused."""

    out_dir: Path = Path("out/demo")
    num_cameras: int = 3
    num_objects: int = 4
    frames: int = 5
    seed: int = 7
    mode: str = "rgbd"

    def workcell(self) -> WorkcellConfig:
        return WorkcellConfig(
            out_dir=self.out_dir / "workcell", num_objects=self.num_objects, frames_per_scene=self.frames,
            seed=self.seed, overwrite=True, layout=LayoutConfig(num_cameras=self.num_cameras),
        )

    def signature(self) -> str:
        return json.dumps({"cameras": self.num_cameras, "objects": self.num_objects, "frames": self.frames, "seed": self.seed})


def ensure_workcell(config: DemoConfig, regenerate: bool) -> Path:
    """Generate the workcell unless one with the same signature is already there."""
    dataset_dir = config.out_dir / "workcell"
    stamp = dataset_dir / ".demo_signature"
    if not regenerate and stamp.is_file() and stamp.read_text() == config.signature():
        print(f"[1/3] reusing workcell {dataset_dir} (--regenerate to make a new one)")
        return dataset_dir
    t0 = time.perf_counter()
    generate_workcell(config.workcell())
    stamp.write_text(config.signature())
    print(f"[1/3] generated workcell {dataset_dir} in {time.perf_counter() - t0:.1f} s")
    return dataset_dir


def write_overlays(dataset_dir: Path, estimates_csv: Path | None, out_dir: Path, frame_index: int = 0) -> list[Path]:
    """Overlay GT and estimated poses on every camera image of one frame; returns the PNG paths."""
    dataset = BopDataset(dataset_dir)
    models = {m.object_id: m for m in dataset.models()}
    scene_id = dataset.scene_ids()[0]
    world = read_scene_world(dataset_dir / "scene_world.json")
    num_cameras = len(world["cameras"])
    estimates = read_estimates_csv(estimates_csv) if estimates_csv and estimates_csv.is_file() else []
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cam_index in range(num_cameras):
        im_id = frame_index * num_cameras + cam_index
        camera = dataset.camera(scene_id, im_id)
        image = dataset.rgb(scene_id, im_id)
        for gt in dataset.gts(scene_id, im_id):
            image = draw_pose_overlay(image, models[gt.obj_id], camera.K, gt.T_camera_object, color_rgb=GT_COLOR_RGB,
                                      label=f"gt {models[gt.obj_id].name}")
        for est in estimates:
            if est.scene_id == scene_id and est.im_id == im_id:
                image = draw_pose_overlay(image, models[est.obj_id], camera.K, est.T_camera_object,
                                          color_rgb=ESTIMATE_COLOR_RGB, label=f"est {est.score:.2f}")
        path = out_dir / f"overlay_frame{frame_index:03d}_cam{cam_index}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pose_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DemoConfig.out_dir, help="output directory (default: out/demo)")
    parser.add_argument("--cameras", type=int, default=DemoConfig.num_cameras)
    parser.add_argument("--objects", type=int, default=DemoConfig.num_objects)
    parser.add_argument("--frames", type=int, default=DemoConfig.frames)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--mode", choices=("rgb", "rgbd"), default=DemoConfig.mode)
    parser.add_argument("--regenerate", action="store_true", help="generate a new workcell even if one exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Every process the demo starts inherits a local-only ROS environment on a domain of its own
    # (today it starts none; bag replay into the node joins it once the node exists).
    apply_local_ros_environment()

    config = DemoConfig(out_dir=args.out, num_cameras=args.cameras, num_objects=args.objects, frames=args.frames,
                        seed=args.seed, mode=args.mode)
    dataset_dir = ensure_workcell(config, args.regenerate)

    results_path = config.out_dir / "results.json"
    t0 = time.perf_counter()
    results = run(dataset_dir, dataset_dir / "test_targets_multiview.json", EvalConfig(mode=config.mode),
                  csv_path=results_path.with_suffix(".csv"))
    results_path.write_text(json.dumps(results, indent=2))
    print(f"[2/3] evaluated {results['n_targets']} multi-view targets in {time.perf_counter() - t0:.1f} s -> {results_path}")
    for stage, status in results["stages"].items():
        print(f"      stage {stage:<15} {status}")

    overlays = write_overlays(dataset_dir, results_path.with_suffix(".csv"), config.out_dir / "overlays")
    print(f"[3/3] overlays (green: ground truth, magenta: estimates): {overlays[0].parent}/")

    detection = results.get("detection")
    if detection:
        lat = detection["latency_ms"]
        print(f"\ndetection ({detection['mode']}, {detection['n_images']} views): recall {detection['recall']:.3f}, "
              f"precision {detection['precision']:.3f}, mask AP {detection['mask_ap']:.3f}; per view median "
              f"{lat['median']:.0f} ms (proposals {lat['proposals_median']:.0f} ms, matching {lat['matching_median']:.0f} ms)")
    print("\nper object (world frame):")
    per_object = results.get("per_object", {})
    if not results["n_estimates"]:
        print("  no pose estimates: the pose stages are not available (see 'stage ... missing' above)")
    for obj_id, stats in sorted(per_object.items(), key=lambda kv: int(kv[0])):
        print(f"  obj {int(obj_id):>3}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
    latency = results["latency_ms"]["total"]
    print(f"\nAR {results['AR']} (VSD {results['AR_VSD']}, MSSD {results['AR_MSSD']}, MSPD {results['AR_MSPD']})")
    if latency["median"] is not None:
        print(f"latency per multi-view frame ({config.num_cameras} views): median {latency['median']:.0f} ms, "
              f"p95 {latency['p95']:.0f} ms")
    print(f"bag: {dataset_dir / 'bag'}   results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
