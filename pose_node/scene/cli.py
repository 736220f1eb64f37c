"""``pose_scene``: generate a synthetic multi-camera workcell (BOP dataset + rosbag2 + world GT).

Example::

    pose_scene --out out/workcell --objects procedural --num-objects 4 --cameras 3 --frames-per-scene 5
    pose_scene --out out/ycb --objects /path/to/bop/models --depth-encoding 16UC1 --depth-noise
    pose_scene --out out/photoreal --photoreal --photoreal-quality preview --render-cache /tmp/pose_render_cache
    pose_scene --out out/cell --objects config/pose_node.yaml
    pose_scene --out out/mine --objects meshes/mug.ply:mm meshes/bracket.obj:cm

Objects (``--objects``): ``procedural`` (``--num-objects`` generated), a BOP models folder
(``--num-objects`` drawn), the node's YAML file or mesh files. The YAML file is the node's whole
configuration file or one with only an ``objects:`` list; every object in it is rendered with its
id, name, mesh (relative to the YAML file), declared units and symmetries, as the node loads them.
Mesh files are ``PATH:UNITS`` with UNITS one of m, cm, mm, in (meshes carry no reliable unit); they get
ids 1..N in argument order and the file stems as names. The written ``models/obj_XXXXXX.ply`` keep
these ids and ``scene_world.json`` lists the names, so the bag replays into a node configured with
the same objects (YAML entries ``{id, name, mesh, units}``) under matching TF frames ``<name>_<k>``.
A bad source (missing file, no objects, unknown units, broken mesh) exits with status 2 and one line.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace

from pose_node.core.errors import PoseNodeError
from pose_node.scene.bag_writer import DEPTH_ENCODINGS
from pose_node.scene.generator import PROCEDURAL, WorkcellConfig, generate_workcell
from pose_node.scene.layout import LayoutConfig
from pose_node.scene.photoreal import QUALITY_PRESETS, PhotorealConfig

logger = logging.getLogger("pose_scene")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help; the examples of the module docstring kept as written."""


def build_parser() -> argparse.ArgumentParser:
    defaults = WorkcellConfig(out_dir=".")
    p = argparse.ArgumentParser(prog="pose_scene", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1].replace("``", ""), formatter_class=_HelpFormatter)
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--objects", nargs="+", default=PROCEDURAL, metavar="SOURCE",
                   help="'procedural', a BOP models directory (PLY in mm + models_info.json), the node's YAML file "
                        "(its objects: list) or mesh files PATH:UNITS with UNITS m, cm or mm (ids 1..N, names = file stems)")
    p.add_argument("--num-objects", type=int, default=defaults.num_objects,
                   help="distinct object models per scene (procedural and BOP sources; a YAML file or mesh files use every object)")
    p.add_argument("--max-instances", type=int, default=defaults.max_instances_per_object, help="each model appears 1..N times")
    p.add_argument("--scenes", type=int, default=defaults.num_scenes, help="object arrangements")
    p.add_argument("--frames-per-scene", type=int, default=defaults.frames_per_scene, help="frames per arrangement (static scene)")
    p.add_argument("--cameras", type=int, default=defaults.layout.num_cameras, help="calibrated cameras around the table")
    p.add_argument("--width", type=int, default=defaults.layout.width_px, help="image width, pixels")
    p.add_argument("--height", type=int, default=defaults.layout.height_px, help="image height, pixels")
    p.add_argument("--depth-encoding", choices=DEPTH_ENCODINGS, default=defaults.depth_encoding, help="bag depth encoding")
    p.add_argument("--depth-noise", action="store_true", help="z^2 depth noise and holes (BOP depth and bag)")
    p.add_argument("--rgb-noise", type=float, default=defaults.appearance.rgb_noise_sigma, help="Gaussian pixel noise sigma, 8-bit levels")
    p.add_argument("--frame-rate", type=float, default=defaults.frame_rate_hz, help="Hz")
    p.add_argument("--camera-jitter-ms", type=float, default=defaults.camera_stamp_jitter_ms,
                   help="per camera stamp offset U(-j, j) ms (0: all cameras of a frame share one stamp)")
    p.add_argument("--photoreal", action="store_true",
                   help="path-traced colour images (Mitsuba), room and distractors, camera and depth sensor models "
                        "(replaces --rgb-noise and --depth-noise)")
    p.add_argument("--photoreal-quality", choices=sorted(QUALITY_PRESETS), default=PhotorealConfig().quality,
                   help="path tracer samples per pixel and path depth: " +
                        ", ".join(f"{k} {q.spp} spp / depth {q.max_depth}" for k, q in QUALITY_PRESETS.items()))
    p.add_argument("--render-cache", default=None,
                   help="photoreal render cache directory (default: $POSE_NODE_CACHE/photoreal or ~/.cache/pose_node/photoreal)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="the single source of randomness")
    p.add_argument("--bag", action=argparse.BooleanOptionalAction, default=True, help="write the rosbag2 (MCAP)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier pose_scene outputs in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def config_from_args(args: argparse.Namespace) -> WorkcellConfig:
    defaults = WorkcellConfig(out_dir=".")
    return WorkcellConfig(
        out_dir=args.out, objects=args.objects, num_objects=args.num_objects, max_instances_per_object=args.max_instances,
        num_scenes=args.scenes, frames_per_scene=args.frames_per_scene, frame_rate_hz=args.frame_rate,
        camera_stamp_jitter_ms=args.camera_jitter_ms, depth_encoding=args.depth_encoding, write_bag=args.bag,
        seed=args.seed, overwrite=args.overwrite,
        layout=LayoutConfig(num_cameras=args.cameras, width_px=args.width, height_px=args.height),
        appearance=replace(defaults.appearance, depth_noise=args.depth_noise, rgb_noise_sigma=args.rgb_noise),
        photoreal=PhotorealConfig(quality=args.photoreal_quality, cache_dir=args.render_cache) if args.photoreal else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.photoreal and (args.depth_noise or args.rgb_noise != WorkcellConfig(out_dir=".").appearance.rgb_noise_sigma):
        logger.warning("--photoreal replaces --depth-noise and --rgb-noise with its camera and depth sensor models; ignoring them")
    started = time.perf_counter()
    try:
        out = generate_workcell(config_from_args(args))
    except PoseNodeError as exc:  # bad arguments or inputs: one clear line, no traceback
        print(f"pose_scene: error: {exc}", file=sys.stderr)
        return 2
    print(f"pose_scene: wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
