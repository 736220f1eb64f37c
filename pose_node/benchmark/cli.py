"""``pose_bench``: latency, throughput, memory and scaling of the pose pipeline, on CPU or CUDA.

Four kinds of run, each writing one JSON (``--out``):

* single configuration (default): end-to-end and per-stage latency of the node's work on a
  synchronized set (decode, sync, detection, correspondence + PnP, association, refinement,
  publishing), median / p95 / max over ``--repeats`` frames after ``--warmup``; peak host and GPU
  memory. ``--profile`` adds a cProfile of the slowest stage (``<out>_profile.txt``).
* sweep (``--sweep-cameras`` and/or ``--sweep-objects``): one axis at a time, each point in a
  fresh process; also writes ``<out>.png`` (latency and its stages against cameras and objects).
* replay (``--replay``): the running node fed from a bag at ``--rates`` (Hz or ``max``): output
  rate, image-stamp -> publish latency, dropped sets.
* dataset (``--dataset DIR``): the single-configuration latency on the frames of a BOP dataset,
  the frames ``pose_eval`` scores: one frame per group of a multi-view targets file (``im_ids``,
  camera world poses from ``scene_camera.json``) or per image of a BOP19 one (``--targets``;
  default: the dataset's ``<split>_targets_multiview.json``, else ``_bop19.json``, else every
  image). Per frame the node's messages are built (rgb8, ``--depth-encoding`` depth,
  camera_info, ``/tf`` with the cameras' world poses) and every frame is timed once after the
  warm-up (``--max-frames`` limits them; ``--repeats`` and the scenario options ``--cameras``,
  ``--objects``, ``--resolution``, ``--frames``, ``--seed`` do not apply). The objects are the
  dataset's ``models/`` (onboarded through the cache). In RGB-D mode, frames with an image
  without depth are timed as RGB and counted (``frames_without_depth``). The JSON adds
  ``dataset``, ``split``, ``targets``, ``n_frames``, ``views_per_frame`` and per-frame ids.

Scenarios (synthetic workcells) are generated once under ``--out-dir`` (default
``out/bench_perf``), one folder per configuration. Examples::

    pose_bench --cameras 3 --objects 5 --resolution vga --mode rgbd --device cpu --out bench.json
    pose_bench --sweep-cameras 1,2,3,4,6 --sweep-objects 1,5,10,15 --out sweep.json
    pose_bench --replay --rates 10,30,max --out replay.json
    pose_bench --dataset data/ycbv --targets test_targets_bop19.json --mode rgbd --device cuda --out ycbv.json
    pose_bench --dataset out/workcell --max-frames 20 --mode rgb --out workcell.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pose_node.benchmark.scenario import DEFAULT_ROOT, RESOLUTIONS, ScenarioConfig
from pose_node.core.errors import InvalidInputError, PoseNodeError
from pose_node.pipeline.config import DEVICE_PATTERN
from pose_node.ros.node_config import DEPTH_ENCODINGS

logger = logging.getLogger("pose_bench")


def _device(text: str) -> str:
    if not DEVICE_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _positive(cast, what: str):
    """An argparse type: ``cast(text)`` when it is > 0, else an error naming ``what``."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _positive(int, "a positive integer")
_positive_float = _positive(float, "a positive number")


def _int_list(text: str) -> list[int]:
    from pose_node.benchmark.sweep import parse_int_list

    try:
        return parse_int_list(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rates(text: str) -> list[float | None]:
    from pose_node.benchmark.throughput import parse_rates

    try:
        return parse_rates(text)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from pose_node.benchmark.harness import BACKENDS, BenchConfig, MODES

    defaults = BenchConfig()
    scenario = defaults.scenario
    p = argparse.ArgumentParser(prog="pose_bench", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("configuration")
    g.add_argument("--cameras", type=_positive_int, default=scenario.cameras, help="cameras (1-6)")
    g.add_argument("--objects", type=_positive_int, default=scenario.objects, help="procedural objects on the table (1-15)")
    g.add_argument("--resolution", choices=tuple(RESOLUTIONS), default=scenario.resolution,
                   help=", ".join(f"{k} = {w}x{h}" for k, (w, h) in RESOLUTIONS.items()))
    g.add_argument("--mode", choices=MODES, default=defaults.mode)
    g.add_argument("--depth-encoding", choices=DEPTH_ENCODINGS, default=defaults.depth_encoding,
                   help="depth messages: 32FC1 metres or 16UC1 millimetres")
    g.add_argument("--device", type=_device, default=defaults.device, help="cpu, cuda or cuda:N")
    g.add_argument("--backend", choices=BACKENDS, default=defaults.backend, help="correspondence network runtime")
    g.add_argument("--threads", type=_positive_int, default=defaults.threads,
                   help="torch / ONNX Runtime / OpenCV threads (1 on a shared machine)")
    g.add_argument("--frames", type=_positive_int, default=scenario.frames, help="distinct frames in the scenario")
    g.add_argument("--seed", type=int, default=scenario.seed, help="scenario seed")
    g.add_argument("--onboarding-cache", default=None, help="onboarding cache directory (default: the shared cache)")
    g = p.add_argument_group("single configuration")
    g.add_argument("--repeats", type=_positive_int, default=None,
                   help=f"timed frames (default {defaults.repeats}; not with --dataset: each frame is timed once)")
    g.add_argument("--warmup", type=_positive_int, default=defaults.warmup,
                   help="untimed frames first (the first one is reported as first_frame_ms)")
    g.add_argument("--no-ros-messages", action="store_true",
                   help="feed arrays instead of sensor_msgs and skip publishing (no ROS message packages needed)")
    g.add_argument("--profile", action="store_true", help="cProfile the slowest stage after the timed frames")
    g.add_argument("--profile-stage", default=None, help="profile this stage instead of the slowest (implies --profile)")
    g.add_argument("--profile-frames", type=_positive_int, default=5, help="frames run under the profiler")
    g = p.add_argument_group("BOP dataset frames instead of a generated scenario")
    g.add_argument("--dataset", type=Path, default=None, metavar="DIR", help="BOP dataset (holds models/ and the split)")
    g.add_argument("--targets", default=None, metavar="FILE",
                   help="targets JSON, multi-view (im_ids) or BOP19 (im_id), relative to DIR or the cwd "
                        "(default: DIR's own, else every image)")
    g.add_argument("--split", default=None, help="split folder (default: test)")
    g.add_argument("--max-frames", type=_positive_int, default=None, metavar="N", help="time only the first N frames")
    g = p.add_argument_group("sweep (one axis at a time, the other fixed; writes <out>.png)")
    g.add_argument("--sweep-cameras", type=_int_list, default=None, metavar="N,N,...", help="e.g. 1,2,3,4,6")
    g.add_argument("--sweep-objects", type=_int_list, default=None, metavar="M,M,...", help="e.g. 1,5,10,15")
    g = p.add_argument_group("replay throughput (the node as a process, pose_replay into it)")
    g.add_argument("--replay", action="store_true", help="measure throughput under replay instead")
    g.add_argument("--rates", type=_rates, default=[10.0, 30.0, None], metavar="HZ,...,max",
                   help="replay rates in frames per second, or max (default 10,30,max)")
    g.add_argument("--replay-seconds", type=_positive_float, default=10.0, help="replay time per rate (the bag loops)")
    g.add_argument("--replay-frames", type=_positive_int, default=10, help="frames in the replayed bag (>= 2; it loops)")
    g.add_argument("--settle-s", type=_positive_float, default=3.0, help="quiet time that ends a rate's collection")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=DEFAULT_ROOT / "bench.json", help="result JSON")
    g.add_argument("--out-dir", type=Path, default=DEFAULT_ROOT,
                   help="scenario cache root: one generated workcell per configuration in <out-dir>/<key>")
    g.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def bench_config(args: argparse.Namespace, *, frames: int | None = None, bag: bool = False):
    """The :class:`BenchConfig` of the parsed arguments.

    Raises:
        InvalidInputError: an out-of-range value (e.g. more cameras than a workcell holds).
    """
    from pose_node.benchmark.dataset import DatasetSource
    from pose_node.benchmark.harness import BenchConfig

    scenario = ScenarioConfig(cameras=args.cameras, objects=args.objects, resolution=args.resolution,
                              frames=frames or args.frames, seed=args.seed, bag=bag)
    dataset = None
    if args.dataset is not None:
        dataset = DatasetSource(root=str(args.dataset), split=args.split or "test", targets=args.targets,
                                max_frames=args.max_frames)
    return BenchConfig(scenario=scenario, mode=args.mode, device=args.device, backend=args.backend,
                       repeats=args.repeats or BenchConfig.repeats, warmup=args.warmup, threads=args.threads,
                       ros_messages=not args.no_ros_messages, onboarding_cache=args.onboarding_cache,
                       depth_encoding=args.depth_encoding, dataset=dataset)


def _ros_messages_available() -> bool:
    try:
        import pose_node.benchmark.ros_messages  # noqa: F401
    except ImportError as exc:
        logger.warning("ROS message packages not importable (%s): feeding arrays, no decode or publishing stage", exc)
        return False
    return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from pose_node.benchmark.harness import check_device, run_benchmark, run_dataset_benchmark
    from pose_node.benchmark.scenario import ensure_scenario

    config = bench_config(args)
    check_device(config.device)  # before minutes of scenario generation
    if config.ros_messages and not _ros_messages_available():
        config = replace(config, ros_messages=False)
    if config.dataset is not None:
        run = run_dataset_benchmark(config)
    else:
        run = run_benchmark(config, ensure_scenario(config.scenario, args.out_dir))
    result = run.result
    if args.profile or args.profile_stage:
        from pose_node.benchmark.profiling import profile_stage, slowest_stage

        stage = args.profile_stage or slowest_stage(result["stages_ms"])
        if result["stages_ms"].get(stage) is None:
            measured = [k for k, v in result["stages_ms"].items() if v is not None]
            raise InvalidInputError(f"--profile-stage {stage}: not a measured stage (measured: {', '.join(measured)})")
        report = args.out.with_name(f"{args.out.stem}_profile.txt")
        result["profile"] = profile_stage(run.runner, stage, args.profile_frames, report,
                                          frame_indices=run.frame_indices or range(config.scenario.frames))
    e2e = result["end_to_end_ms"]
    if config.dataset is not None:
        views = ", ".join(f"{n} x {c} views" for c, n in result["views_per_frame"].items())
        without = f" ({result['frames_without_depth']} without depth, timed as rgb)" if result["frames_without_depth"] else ""
        what = f"{result['dataset']} [{result['split']}], {result['n_frames']} frames ({views}){without}"
    else:
        what = f"{config.scenario.cameras} cameras, {config.scenario.objects} objects, {config.scenario.resolution}"
    print(f"pose_bench: {what}, "
          f"{config.mode}, {config.device}: end to end median {e2e['median']:.1f} ms, p95 {e2e['p95']:.1f}, "
          f"max {e2e['max']:.1f} (first frame {result['first_frame_ms']:.1f}); peak RSS {result['peak_rss_mb']:.0f} MiB")
    print("  stage medians (ms): " + ", ".join(f"{k} {_fmt(v)}" for k, v in result["stages_ms"].items()))
    if "profile" in result:
        top = result["profile"]["top_functions"][:3]
        print(f"  profile of {result['profile']['stage']}: {result['profile']['report']}; top: "
              + "; ".join(f"{t['function']} {t['own_ms_per_frame']:.1f} ms" for t in top))
    return result


def run_sweep_command(args: argparse.Namespace) -> dict[str, Any]:
    from pose_node.benchmark.plot import plot_scaling
    from pose_node.benchmark.sweep import run_sweep, subprocess_runner

    from pose_node.benchmark.harness import check_device

    base = bench_config(args)
    check_device(base.device)
    axes = {}
    if args.sweep_cameras:
        axes["cameras"] = args.sweep_cameras
    if args.sweep_objects:
        axes["objects"] = args.sweep_objects
    result = run_sweep(base, axes, subprocess_runner(args.out_dir))
    png = args.out.with_suffix(".png")
    title = f"{base.scenario.resolution} {base.mode} {base.device}, {base.threads} thread(s), {base.repeats} repeats"
    result["plot"] = str(plot_scaling(result["sweeps"], png, title))
    for axis, points in result["sweeps"].items():
        for point in points:
            label = f"{axis} sweep: {point['config']['cameras']} cameras, {point['config']['objects']} objects"
            if point.get("error"):
                print(f"  {label}: failed: {point['error'].splitlines()[0]}")
            else:
                print(f"  {label}: median {point['end_to_end_ms']['median']:.1f} ms, p95 {point['end_to_end_ms']['p95']:.1f}")
    print(f"pose_bench: plot {png}")
    return result


def run_replay_command(args: argparse.Namespace) -> dict[str, Any]:
    from pose_node.benchmark.harness import check_device
    from pose_node.benchmark.scenario import ensure_scenario
    from pose_node.benchmark.throughput import ThroughputConfig, run_throughput
    from pose_node.ros.local_env import apply_local_ros_environment

    bench = bench_config(args, frames=args.replay_frames, bag=True)
    check_device(bench.device)
    config = ThroughputConfig(bench=bench, rates_hz=tuple(args.rates), duration_s=args.replay_seconds, settle_s=args.settle_s)
    directory = ensure_scenario(bench.scenario, args.out_dir)
    # The node, the replays and this process's collector: localhost discovery, shared memory, a
    # domain of their own (set before rclpy starts; inherited by the subprocesses).
    apply_local_ros_environment()
    result = run_throughput(config, directory, args.out.with_name(f"{args.out.stem}_replay"))
    for r in result["rates"]:
        e2e = r["end_to_end_ms"]
        print(f"  {r['rate']}: {r['input_sets']} sets in ({_fmt(r['input_rate_hz'])} Hz), {r['outputs']} out "
              f"({_fmt(r['output_rate_hz'])} Hz), {r['dropped_sets']} dropped; latency median "
              f"{_fmt(e2e and e2e['median'])} ms, p95 {_fmt(e2e and e2e['p95'])} ms")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    sweeping = bool(args.sweep_cameras or args.sweep_objects)
    if sweeping and args.replay:
        parser.error("--replay and --sweep-* are separate runs; give one of them")
    if (sweeping or args.replay) and (args.profile or args.profile_stage):
        parser.error("--profile runs on a single configuration (without --sweep-* or --replay)")
    if args.dataset is not None and (sweeping or args.replay):
        parser.error("--dataset times the dataset's frames in process; --sweep-* and --replay use generated scenarios")
    if args.dataset is not None and args.repeats is not None:
        parser.error("--repeats does not apply to --dataset: every frame is timed once (use --max-frames)")
    if args.dataset is None and (args.targets or args.split or args.max_frames):
        parser.error("--targets, --split and --max-frames need --dataset")
    try:
        bench_config(args)  # range checks (e.g. --cameras 9) as usage errors, before any work
    except InvalidInputError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if sweeping:
            result = run_sweep_command(args)
        elif args.replay:
            result = run_replay_command(args)
        else:
            result = run_single(args)
    except PoseNodeError as exc:
        print(f"pose_bench: error: {exc}", file=sys.stderr)
        return 2
    _write_json(args.out, result)
    print(f"pose_bench: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
