"""``pose_ood_set``: the fixed out-of-domain multi-camera set every accuracy claim is measured on.

Example::

    pose_ood_set --out out/ood_test                       # test split, path-traced (the reference set)
    pose_ood_set --out out/ood_val --split validation     # for calibration and thresholds
    pose_ood_set --out out/ood_test_raster --no-photoreal # the same scenes from our own rasterizer

Each scene is a 4-camera workcell frame with 3-7 objects of one split (:mod:`pose_node.datasets.splits`):
the split's YCB meshes from ``shared/data/ycb_dev`` and ``shared/data/ycb_train`` where they exist,
plus procedural objects of the split's own seeds, some touching or occluding each other, and in
about a third of the scenes two instances of one object. Images are path-traced
(``pose_scene --photoreal``); ``--no-photoreal`` renders the same scenes (same objects, poses and
cameras, without the path tracer's room and distractors) with the project's rasterizer: the
in-domain twin, which differs by the image domain and the clutter.

The output is a ``pose_scene`` dataset (BOP ``test/`` split, ``test_targets_bop19.json``,
``test_targets_multiview.json``, ``scene_world.json``, ``bag/``) plus ``ood_set.json``, which
records the split, the objects and where they came from. Without the YCB folders (a user's fresh
clone) the set is procedural only, and ``ood_set.json`` says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pose_node.core.errors import PoseNodeError
from pose_node.datasets.bop import models_info_entry, write_bop_ply
from pose_node.datasets.splits import (
    PROCEDURAL_FIRST_IDS, PROCEDURAL_SEEDS, default_ycb_models_dirs, ycb_ids_in,
)
from pose_node.scene.appearance import AppearanceConfig
from pose_node.scene.generator import WorkcellConfig, generate_workcell
from pose_node.scene.layout import LayoutConfig

logger = logging.getLogger("pose_ood_set")

OOD_SPLITS: tuple[str, ...] = ("validation", "test")


@dataclass(frozen=True)
class OodSetConfig:
    """The fixed set. The defaults are the reference set of the README; change them only for previews.

    Attributes:
        out_dir: output directory.
        split: ``test`` (reported numbers only) or ``validation`` (calibration, thresholds).
        num_scenes: scenes (one 4-camera frame each).
        num_cameras: cameras of the workcell.
        objects_per_scene: (lo, hi) objects in each scene.
        duplicate_probability: share of scenes with two instances of one object.
        num_procedural: procedural objects of the split added to the YCB ones.
        ycb_models_dirs: BOP model folders to take the split's YCB objects from (missing: none).
        photoreal: path-traced images; False renders the same scenes with the rasterizer.
        quality: path-tracer quality preset (``pose_scene --photoreal-quality``).
        render_cache: path-tracer cache directory (None: its default).
        seed: the set's seed (each split has its own default).
        overwrite: replace an earlier set in ``out_dir``.
    """

    out_dir: Path
    split: str = "test"
    num_scenes: int = 12
    num_cameras: int = 4
    objects_per_scene: tuple[int, int] = (3, 7)
    duplicate_probability: float = 0.35
    num_procedural: int = 4
    ycb_models_dirs: tuple[Path, ...] = ()
    photoreal: bool = True
    quality: str = "default"
    render_cache: Path | None = None
    seed: int | None = None
    overwrite: bool = False


DEFAULT_SEEDS: dict[str, int] = {"validation": 9100, "test": 9200}
DEFAULT_SCENES: dict[str, int] = {"validation": 8, "test": 12}


def build_object_pool(pool_dir: Path, split: str, num_procedural: int, ycb_models_dirs: tuple[Path, ...]) -> list[dict]:
    """Write the split's objects as one BOP models folder. Returns one record per object.

    YCB files are copied unchanged (with their ``models_info.json`` entries, symmetries included);
    procedural objects are generated from the split's seed.
    """
    from pose_node.onboarding.procedural import make_procedural_objects

    pool_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, dict] = {}
    records: list[dict] = []
    for models_dir in ycb_models_dirs:
        found = ycb_ids_in(models_dir, split)
        source_info = json.loads((models_dir / "models_info.json").read_text())
        for obj_id in found.object_ids:
            for ext in ("ply", "png"):
                src = models_dir / f"obj_{obj_id:06d}.{ext}"
                if src.exists():
                    shutil.copy(src, pool_dir / src.name)
            info[str(obj_id)] = source_info[str(obj_id)]
            records.append({"obj_id": obj_id, "source": str(models_dir)})
    procedural = make_procedural_objects(num_procedural, PROCEDURAL_SEEDS[split], first_id=PROCEDURAL_FIRST_IDS[split])
    for model in procedural:
        write_bop_ply(pool_dir / f"obj_{model.object_id:06d}.ply", model)
        info[str(model.object_id)] = models_info_entry(model)
        records.append({"obj_id": model.object_id, "source": model.source_path, "name": model.name})
    (pool_dir / "models_info.json").write_text(json.dumps(dict(sorted(info.items(), key=lambda kv: int(kv[0]))), indent=1))
    return sorted(records, key=lambda r: r["obj_id"])


def workcell_config(config: OodSetConfig, pool_dir: Path, num_objects: int) -> WorkcellConfig:
    """The ``pose_scene`` configuration of the set (the objects come from ``pool_dir``)."""
    photoreal = None
    if config.photoreal:
        from pose_node.scene.photoreal import PhotorealConfig

        photoreal = PhotorealConfig(quality=config.quality, cache_dir=config.render_cache)
    return WorkcellConfig(
        out_dir=config.out_dir, objects=str(pool_dir), num_objects=num_objects,
        objects_per_scene=(min(config.objects_per_scene[0], num_objects), min(config.objects_per_scene[1], num_objects)),
        duplicate_probability=config.duplicate_probability, num_scenes=config.num_scenes, frames_per_scene=1,
        seed=DEFAULT_SEEDS[config.split] if config.seed is None else config.seed, overwrite=config.overwrite,
        layout=LayoutConfig(num_cameras=config.num_cameras), appearance=AppearanceConfig(depth_noise=True),
        photoreal=photoreal,
    )


def build_ood_set(config: OodSetConfig) -> Path:
    """Build the set described in the module docstring. Returns the output directory."""
    if config.split not in OOD_SPLITS:
        raise PoseNodeError(f"pose_ood_set: split must be one of {OOD_SPLITS}, got {config.split!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pose_ood_pool_") as tmp:
        records = build_object_pool(Path(tmp), config.split, config.num_procedural, config.ycb_models_dirs)
        if not records:
            raise PoseNodeError("pose_ood_set: no objects (no YCB folders found and --procedural 0)")
        out = generate_workcell(workcell_config(config, Path(tmp), len(records)))
    real = [r for r in records if not r["source"].startswith("procedural")]
    manifest = {
        "description": "pose_node out-of-domain set: objects of one split only (pose_node.datasets.splits)",
        "split": config.split,
        "photoreal": config.photoreal,
        "quality": config.quality if config.photoreal else None,
        "num_scenes": config.num_scenes,
        "num_cameras": config.num_cameras,
        "objects_per_scene": list(config.objects_per_scene),
        "duplicate_probability": config.duplicate_probability,
        "objects": records,
        "ycb_models_dirs": [str(p) for p in config.ycb_models_dirs],
        "procedural_only": not real,
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "ood_set.json").write_text(json.dumps(manifest, indent=1))
    if not real:
        logger.warning("no YCB model folders: the set has procedural objects only")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pose_ood_set", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--split", choices=OOD_SPLITS, default="test", help="object split (pose_node.datasets.splits)")
    p.add_argument("--scenes", type=int, default=None, help="scenes, one frame each (default: 12 test, 8 validation)")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--procedural", type=int, default=OodSetConfig(out_dir=Path(".")).num_procedural,
                   help="procedural objects of the split added to its YCB objects")
    p.add_argument("--ycb-models", type=Path, nargs="*", default=None,
                   help="BOP model folders holding YCB objects (default: ../shared/data/ycb_{dev,train}/models where present)")
    p.add_argument("--photoreal", action=argparse.BooleanOptionalAction, default=True,
                   help="path-traced images (--no-photoreal: the same scenes from the rasterizer)")
    p.add_argument("--quality", default="default", help="path-tracer quality preset (pose_scene --photoreal-quality)")
    p.add_argument("--render-cache", type=Path, default=None, help="path-tracer cache directory")
    p.add_argument("--seed", type=int, default=None, help="default: a fixed seed per split")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    ycb_dirs = tuple(default_ycb_models_dirs() if args.ycb_models is None else args.ycb_models)
    config = OodSetConfig(
        out_dir=args.out, split=args.split, num_scenes=args.scenes or DEFAULT_SCENES[args.split], num_cameras=args.cameras,
        num_procedural=args.procedural, ycb_models_dirs=ycb_dirs, photoreal=args.photoreal, quality=args.quality,
        render_cache=args.render_cache, seed=args.seed, overwrite=args.overwrite,
    )
    started = time.perf_counter()
    try:
        out = build_ood_set(config)
    except PoseNodeError as exc:
        print(f"pose_ood_set: error: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "ood_set.json").read_text())
    print(f"pose_ood_set: wrote {out} ({config.split} split, {len(manifest['objects'])} objects, "
          f"{config.num_scenes} scenes x {config.num_cameras} cameras, "
          f"{'path-traced' if config.photoreal else 'rasterized'}) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
