"""``pose_demo`` (``make demo``): the ROS 2 node on a synthetic 3-camera workcell, end to end.

1. Generate (or reuse) a workcell with procedural objects: BOP dataset, rosbag2, ground truth.
2. Write a node config for it (its cameras' topics, the same procedural objects) into the output
   folder.
3. Start ``pose_node`` (subprocess, autostart), replay the bag into it with ``pose_replay``,
   collect its ``Detection3DArray`` results and ``/diagnostics``, stop both with SIGINT.
4. Match every result to the ground truth of its frame (by stamp), print per-object rotation and
   translation errors and the node's reported latency, write overlay images (ground truth in
   green, estimates in magenta) and a results JSON.

Every ROS process runs local-only (localhost discovery, shared memory, a domain of its own).
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

from pose_node.datasets.bop import BopDataset
from pose_node.ros.local_env import apply_local_ros_environment
from pose_node.scene.generator import WorkcellConfig, generate_workcell, read_scene_world
from pose_node.scene.layout import LayoutConfig
from pose_node.visualization import draw_pose_overlay

logger = logging.getLogger(__name__)

GT_COLOR_RGB = (0, 255, 0)
ESTIMATE_COLOR_RGB = (255, 0, 255)
STEPS = 4


@dataclass(frozen=True)
class DemoConfig:
    """What the demo generates and how it replays; a workcell generated with the same config is reused.

    ``rate`` is the replay speed: the node keeps only the latest multi-camera set, so frames
    must come slower than it processes them (10 Hz recording x 0.1 = one frame a second).
    """

    out_dir: Path = Path("out/demo")
    num_cameras: int = 3
    num_objects: int = 4
    frames: int = 5
    seed: int = 7
    mode: str = "rgbd"
    rate: float = 0.1

    def workcell(self) -> WorkcellConfig:
        return WorkcellConfig(
            out_dir=self.out_dir / "workcell", num_objects=self.num_objects, frames_per_scene=self.frames,
            seed=self.seed, overwrite=True, layout=LayoutConfig(num_cameras=self.num_cameras),
        )

    def signature(self) -> str:
        return json.dumps({"cameras": self.num_cameras, "objects": self.num_objects, "frames": self.frames, "seed": self.seed})


@dataclass(frozen=True)
class Estimate:
    """One pose of the node's output (world frame)."""

    obj_id: int
    class_id: str
    instance_id: str
    score: float
    T_world_object: np.ndarray


def ensure_workcell(config: DemoConfig, regenerate: bool) -> Path:
    """Generate the workcell unless one with the same signature is already there."""
    dataset_dir = config.out_dir / "workcell"
    stamp = dataset_dir / ".demo_signature"
    if not regenerate and stamp.is_file() and stamp.read_text() == config.signature():
        print(f"[1/{STEPS}] reusing workcell {dataset_dir} (--regenerate to make a new one)")
        return dataset_dir
    t0 = time.perf_counter()
    generate_workcell(config.workcell())
    stamp.write_text(config.signature())
    print(f"[1/{STEPS}] generated workcell {dataset_dir} in {time.perf_counter() - t0:.1f} s")
    return dataset_dir


def write_demo_node_config(config: DemoConfig, world: dict) -> tuple[Path, dict]:
    """The node's YAML config for the workcell (same procedural seed and count), in the output folder."""
    from pose_node.ros.replay_session import workcell_node_config, write_node_config

    node_config = workcell_node_config([c["name"] for c in world["cameras"]], seed=config.seed,
                                       num_objects=config.num_objects, mode=config.mode,
                                       depth_encoding=world["depth_encoding"])
    path = write_node_config(config.out_dir / "pose_node.yaml", node_config)
    print(f"[2/{STEPS}] node config {path}")
    return path, node_config


def run_node(config: DemoConfig, dataset_dir: Path, config_file: Path, node_config: dict, num_frames: int):
    """Run the node on the workcell's bag; returns :class:`pose_node.ros.replay_session.ReplayRun`."""
    from pose_node.ros.replay_session import replay_topics, run_node_on_bag

    print(f"[3/{STEPS}] starting pose_node, replaying {dataset_dir / 'bag'} at rate {config.rate} ...", flush=True)
    run = run_node_on_bag(config_file, dataset_dir / "bag", replay_topics(node_config), num_frames,
                          config.out_dir / "logs", rate=config.rate)
    print(f"      node active after {run.start_s:.1f} s (onboarding, engines, warm-up); replay + results "
          f"{run.replay_s:.1f} s; {len(run.detections)} results; exit status node {run.node_exit}, "
          f"replay {run.replay_exit}; logs in {run.node_log.parent}/")
    return run


def estimates_by_stamp(detections) -> dict[int, list[Estimate]]:
    """The node's Detection3DArray messages as world-frame estimates, keyed by header stamp (ns)."""
    from pose_node.ros.conversions import msg_to_matrix, stamp_to_ns

    by_stamp: dict[int, list[Estimate]] = {}
    for msg in detections:
        estimates = []
        for det in msg.detections:
            hyp = det.results[0]
            class_id = hyp.hypothesis.class_id
            obj_id = int(class_id.rsplit("_", 1)[-1]) if class_id.rsplit("_", 1)[-1].isdigit() else -1
            estimates.append(Estimate(obj_id, class_id, det.id, float(hyp.hypothesis.score), msg_to_matrix(hyp.pose.pose)))
        by_stamp[stamp_to_ns(msg.header.stamp)] = estimates
    return by_stamp


def frames_by_stamp(world: dict) -> dict[int, tuple[dict, dict]]:
    """Stamp (ns) -> (scene, frame) of ``scene_world.json`` (nominal and per-camera stamps)."""
    index = {}
    for scene in world["scenes"]:
        for frame in scene["frames"]:
            for stamp in {frame["stamp_ns"], *frame.get("camera_stamps_ns", [])}:
                index[int(stamp)] = (scene, frame)
    return index


def match_frame(scene: dict, estimates: list[Estimate]) -> list[dict]:
    """Per GT instance of the scene, the nearest estimate of the same object and its errors."""
    from pose_node.ros.replay_session import rotation_error_deg

    rows = []
    for inst in scene["instances"]:
        T_true = inst["T_world_object"]
        candidates = [e for e in estimates if e.obj_id == inst["obj_id"]]
        row = {"obj_id": inst["obj_id"], "instance_index": inst["instance_index"], "found": bool(candidates)}
        if candidates:
            best = min(candidates, key=lambda e: np.linalg.norm(e.T_world_object[:3, 3] - T_true[:3, 3]))
            row.update(translation_error_mm=1000.0 * float(np.linalg.norm(best.T_world_object[:3, 3] - T_true[:3, 3])),
                       rotation_error_deg=rotation_error_deg(best.T_world_object[:3, :3], T_true[:3, :3]),
                       score=best.score, instance_id=best.instance_id)
        rows.append(row)
    return rows


def evaluate(world: dict, by_stamp: dict[int, list[Estimate]]) -> tuple[list[dict], list[int]]:
    """Per result: its frame and per-GT errors; also the stamps that match no frame."""
    index = frames_by_stamp(world)
    frames, unmatched = [], []
    for stamp, estimates in sorted(by_stamp.items()):
        if stamp not in index:
            unmatched.append(stamp)
            continue
        scene, frame = index[stamp]
        frames.append({"stamp_ns": stamp, "scene_id": scene["scene_id"], "frame_index": frame["frame_index"],
                       "im_ids": frame["im_ids"], "n_estimates": len(estimates),
                       "estimates": [{"obj_id": e.obj_id, "class_id": e.class_id, "instance_id": e.instance_id,
                                      "score": e.score, "T_world_object": e.T_world_object.tolist()} for e in estimates],
                       "objects": match_frame(scene, estimates)})
    return frames, unmatched


def per_object_summary(frames: list[dict]) -> dict[int, dict]:
    """Per object: frames found in, and median / max translation (mm) and rotation (deg) errors."""
    summary: dict[int, dict] = {}
    for frame in frames:
        for row in frame["objects"]:
            entry = summary.setdefault(row["obj_id"], {"frames": 0, "found": 0, "t_mm": [], "r_deg": []})
            entry["frames"] += 1
            if row["found"]:
                entry["found"] += 1
                entry["t_mm"].append(row["translation_error_mm"])
                entry["r_deg"].append(row["rotation_error_deg"])
    out = {}
    for obj_id, e in sorted(summary.items()):
        stats = {"frames": e["frames"], "found": e["found"]}
        for key in ("t_mm", "r_deg"):
            stats[f"{key}_median"] = float(np.median(e[key])) if e[key] else None
            stats[f"{key}_max"] = float(np.max(e[key])) if e[key] else None
        out[obj_id] = stats
    return out


def latency_summary(diagnostics) -> dict:
    """Median / p95 / max of the node's reported per-stage latency (ms) over the sets it reported."""
    from pose_node.ros.replay_session import set_latencies_ms

    sets = set_latencies_ms(diagnostics)
    stages = sorted({k for s in sets for k in s}, key=lambda k: (k != "total", k))
    summary = {"n_sets": len(sets)}
    for stage in stages:
        values = [s[stage] for s in sets if stage in s]
        summary[stage] = {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)), "max": float(np.max(values))}
    return summary


def write_overlays(dataset_dir: Path, world: dict, frames: list[dict], out_dir: Path) -> list[Path]:
    """Overlay GT (green) and the node's estimates (magenta) on every camera image of every result's frame."""
    dataset = BopDataset(dataset_dir)
    models = {m.object_id: m for m in dataset.models()}
    scenes = {s["scene_id"]: s for s in world["scenes"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("overlay_*.png"):  # from an earlier run
        stale.unlink()
    paths = []
    for frame in frames:
        scene = scenes[frame["scene_id"]]
        for cam_index, im_id in enumerate(frame["im_ids"]):
            camera = dataset.camera(frame["scene_id"], im_id)
            image = dataset.rgb(frame["scene_id"], im_id)
            for inst in scene["instances"]:
                image = draw_pose_overlay(image, models[inst["obj_id"]], camera.K, camera.T_camera_world @ inst["T_world_object"],
                                          color_rgb=GT_COLOR_RGB, label=f"gt {models[inst['obj_id']].name}")
            for est in frame["estimates"]:
                if est["obj_id"] in models:
                    T_camera_object = camera.T_camera_world @ np.asarray(est["T_world_object"])
                    image = draw_pose_overlay(image, models[est["obj_id"]], camera.K, T_camera_object,
                                              color_rgb=ESTIMATE_COLOR_RGB, label=f"est {est['score']:.2f}")
            path = out_dir / f"overlay_scene{frame['scene_id']:03d}_frame{frame['frame_index']:03d}_cam{cam_index}.png"
            cv2.imwrite(str(path), image[..., ::-1])
            paths.append(path)
    return paths


def print_report(per_object: dict[int, dict], latency: dict, frames: list[dict], num_frames: int, config: DemoConfig) -> None:
    """Per-object errors and the latency summary."""
    print(f"\nper object (world frame, {len(frames)} of {num_frames} frames with a result):")
    for obj_id, s in per_object.items():
        if s["found"]:
            print(f"  obj_{obj_id:06d}: found in {s['found']}/{s['frames']} frames, translation error median "
                  f"{s['t_mm_median']:.1f} mm (max {s['t_mm_max']:.1f}), rotation error median "
                  f"{s['r_deg_median']:.2f} deg (max {s['r_deg_max']:.2f})")
        else:
            print(f"  obj_{obj_id:06d}: not found in any of {s['frames']} frames")
    total = latency.get("total")
    if total:
        stages = ", ".join(f"{k} {v['median']:.0f}" for k, v in latency.items() if k not in ("n_sets", "total"))
        print(f"\nnode latency per {config.num_cameras}-camera set ({config.mode}, node-reported, {latency['n_sets']} sets): "
              f"median {total['median']:.0f} ms, p95 {total['p95']:.0f} ms, max {total['max']:.0f} ms")
        if stages:
            print(f"  stage medians (ms): {stages}")
    else:
        print("\nnode latency: no per-set latency reported in /diagnostics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pose_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DemoConfig.out_dir, help="output directory (default: out/demo)")
    parser.add_argument("--cameras", type=int, default=DemoConfig.num_cameras)
    parser.add_argument("--objects", type=int, default=DemoConfig.num_objects)
    parser.add_argument("--frames", type=int, default=DemoConfig.frames)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--mode", choices=("rgb", "rgbd"), default=DemoConfig.mode)
    parser.add_argument("--rate", type=float, default=DemoConfig.rate,
                        help=f"replay speed factor (default {DemoConfig.rate}; the node drops sets it cannot keep up with)")
    parser.add_argument("--regenerate", action="store_true", help="generate a new workcell even if one exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The node, the replay and the demo's own subscriber run local-only on a domain of their own;
    # set before rclpy creates a context, inherited by the subprocesses.
    apply_local_ros_environment()

    config = DemoConfig(out_dir=args.out, num_cameras=args.cameras, num_objects=args.objects, frames=args.frames,
                        seed=args.seed, mode=args.mode, rate=args.rate)
    dataset_dir = ensure_workcell(config, args.regenerate)
    world = read_scene_world(dataset_dir / "scene_world.json")
    num_frames = sum(len(s["frames"]) for s in world["scenes"])
    config_file, node_config = write_demo_node_config(config, world)
    from pose_node.ros.replay_session import ReplaySessionError

    try:
        run = run_node(config, dataset_dir, config_file, node_config, num_frames)
    except ReplaySessionError as exc:
        print(f"pose_demo: {exc}", file=sys.stderr)
        return 1

    frames, unmatched = evaluate(world, estimates_by_stamp(run.detections))
    per_object = per_object_summary(frames)
    latency = latency_summary(run.diagnostics)
    overlays = write_overlays(dataset_dir, world, frames, config.out_dir / "overlays")
    results_path = config.out_dir / "results.json"
    results_path.write_text(json.dumps({
        "mode": config.mode, "cameras": config.num_cameras, "n_frames": num_frames, "n_results": len(run.detections),
        "unmatched_stamps_ns": unmatched, "frames": frames, "per_object": {str(k): v for k, v in per_object.items()},
        "latency_ms": latency, "node_start_s": run.start_s, "node_exit": run.node_exit, "replay_exit": run.replay_exit,
        "node_config": str(config_file), "overlays": [str(p) for p in overlays],
    }, indent=1))
    print(f"[4/{STEPS}] results {results_path}; overlays (green: ground truth, magenta: estimates) "
          f"{overlays[0].parent if overlays else 'none'}/")
    print_report(per_object, latency, frames, num_frames, config)
    if unmatched:
        print(f"\n{len(unmatched)} result(s) with a stamp of no frame: {unmatched}")
    print(f"\nbag: {dataset_dir / 'bag'}   results: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
