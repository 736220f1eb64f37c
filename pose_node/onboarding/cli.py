"""``pose_onboard``: render, describe and cache the templates of object meshes ahead of a start.

Examples::

    pose_onboard --models /data/ycbv/models                     # BOP models (PLY in mm)
    pose_onboard --models meshes/ --units mm --num-viewpoints 162
    pose_onboard --procedural 3 --device cuda --cache-dir /tmp/onboarding

A second run with the same meshes, backbone and settings loads everything from the cache.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pose_node.core.errors import MeshLoadError, PoseNodeError
from pose_node.core.types import ObjectModel
from pose_node.features import BackboneConfig, available_backbones, create_backbone
from pose_node.onboarding.cache import RendererPool, cache_path, default_cache_dir, load_or_onboard, onboarding_cache_key
from pose_node.onboarding.mesh_loading import UNIT_TO_METRES, load_bop_models, load_object_model
from pose_node.onboarding.procedural import make_procedural_objects
from pose_node.onboarding.templates import VIEWPOINT_SUBDIVISIONS, TemplateConfig

MESH_SUFFIXES = (".ply", ".obj", ".glb", ".gltf", ".stl", ".off")


def build_parser() -> argparse.ArgumentParser:
    # The detector's template settings, so that what this command caches is what the node loads.
    from pose_node.detection.detector import DetectorConfig

    defaults = DetectorConfig().templates
    p = argparse.ArgumentParser(prog="pose_onboard", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--models", type=Path, help="a BOP models directory (models_info.json, PLY in mm) or a "
                        "directory of mesh files (ids 1..N in file-name order; needs --units)")
    source.add_argument("--procedural", type=int, metavar="N", help="N procedural textured objects (ids 1..N)")
    p.add_argument("--units", choices=sorted(UNIT_TO_METRES), help="units of the mesh files (BOP models: mm)")
    p.add_argument("--procedural-seed", type=int, default=0, help="seed of the procedural objects")
    p.add_argument("--procedural-faces", type=int, default=4000, help="approximate faces per procedural object")
    p.add_argument("--num-viewpoints", type=int, choices=sorted(VIEWPOINT_SUBDIVISIONS), default=defaults.num_viewpoints)
    p.add_argument("--in-plane-rotations", type=int, default=defaults.in_plane_rotations, help="per viewpoint")
    p.add_argument("--template-size", type=int, default=defaults.template_size_px, help="template side, pixels")
    p.add_argument("--backbone", default="efficientnet_lite0", help=f"one of {', '.join(available_backbones())}")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the packaged one, if any)")
    p.add_argument("--device", default="cpu", help="torch device of the backbone: cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, default=32, help="templates per backbone call")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help=f"cache directory (default: $POSE_NODE_CACHE/onboarding or {default_cache_dir()})")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def load_models(args: argparse.Namespace) -> list[ObjectModel]:
    """The objects named on the command line.

    Raises:
        MeshLoadError: unreadable meshes, missing or contradicting units, empty directory.
    """
    if args.procedural is not None:
        if args.procedural < 1:
            raise MeshLoadError(f"--procedural: expected N >= 1, got {args.procedural}")
        return make_procedural_objects(args.procedural, args.procedural_seed, target_faces=args.procedural_faces)
    models_dir: Path = args.models
    if not models_dir.is_dir():
        raise MeshLoadError(f"--models: {models_dir} is not a directory")
    if (models_dir / "models_info.json").is_file():
        if args.units not in (None, "mm"):
            raise MeshLoadError(f"--units {args.units}: {models_dir} is a BOP models directory, whose meshes are in mm")
        return load_bop_models(models_dir)
    files = sorted(f for f in models_dir.iterdir() if f.suffix.lower() in MESH_SUFFIXES)
    if not files:
        raise MeshLoadError(f"--models: no mesh files ({', '.join(MESH_SUFFIXES)}) in {models_dir}")
    if args.units is None:
        raise MeshLoadError("--units: required for a directory of mesh files (meshes carry no reliable unit)")
    return [load_object_model(f, units=args.units, object_id=i + 1) for i, f in enumerate(files)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    try:
        config = TemplateConfig(num_viewpoints=args.num_viewpoints, in_plane_rotations=args.in_plane_rotations,
                                template_size_px=args.template_size)
        models = load_models(args)
        backbone = create_backbone(BackboneConfig(name=args.backbone, weights_path=args.weights, device=args.device))
        cache_dir = args.cache_dir or default_cache_dir()
        print(f"pose_onboard: {len(models)} object(s), {config.num_templates} templates of {config.template_size_px} px, "
              f"backbone {backbone.cache_key} on {backbone.device}, cache {cache_dir}")
        with RendererPool() as renderers:
            for model in models:
                t0 = time.perf_counter()
                templates, from_cache = load_or_onboard(model, renderers, backbone, config, cache_dir, batch_size=args.batch_size)
                elapsed = time.perf_counter() - t0
                if from_cache:
                    detail = "from cache"
                else:
                    times = templates.build_times_s
                    detail = (f"onboarded: render {times.get('render', 0.0):.2f} s, descriptors "
                              f"{times.get('descriptors', 0.0):.2f} s, surface {times.get('surface', 0.0):.2f} s")
                key = onboarding_cache_key(model, backbone.cache_key, config)
                print(f"  obj {model.object_id:>3} {model.name:<20} {len(model.faces):>7} faces  {elapsed:7.2f} s  {detail}  "
                      f"[{cache_path(cache_dir, key).name}]")
    except PoseNodeError as exc:  # bad arguments or inputs: one clear line, no traceback
        print(f"pose_onboard: error: {exc}", file=sys.stderr)
        return 2
    print(f"pose_onboard: done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
