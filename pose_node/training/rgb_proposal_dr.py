"""Domain-randomized training images for the RGB proposal head (issue 14, item 3).

The plain training split (:data:`pose_node.training.rgb_proposals.TRAIN_SPLIT`) shows procedural
shapes on a textured table in front of a flat textured background, lit by one soft directional
light, with faint Gaussian noise. Path-traced photoreal workcells (``pose_ood_set``) differ in
what a 2000-step head cannot extrapolate to: real object shapes and textures, a room (floor,
walls, table legs), untextured distractors among the objects, strong light pools and shadows,
and a colour camera (white-balance error, auto exposure, vignetting, shot and read noise, blur,
JPEG). This module renders rasterized images with all of these drawn at random, cheaply enough
to generate a few hundred images in minutes on one CPU core.

What counts as foreground: every object resting on the table, *distractor primitives included*
(``DrWorkcellConfig.distractors_are_foreground``). The head is class-agnostic and runs
before matching; an untextured box distractor cannot be told apart from an untextured procedural
box object by its look, so teaching "plain primitive = background" would teach the head to miss
the plain objects (procedural shapes, geometry-only YCB meshes). Rejecting distractors is the job
of matching and verification, which know the object meshes. The room (floor, walls, legs), the
table and everything beyond are background.

Objects never include validation or test objects: real meshes come only from
:func:`pose_node.datasets.splits.training_ycb_models` and are checked again after loading;
procedural shapes use the training split's seed block (:data:`pose_node.datasets.splits.PROCEDURAL_SEEDS`).

Randomness: each workcell seed spawns two streams, one for the scene (objects, cameras,
placement, clutter, textures, light) and one for the camera effects, so a config with
``camera=None`` (plain images) and one with camera effects give the same geometry and labels
for a seed, and each is reproducible.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pose_node.core.errors import check_fields
from pose_node.core.types import ObjectModel
from pose_node.datasets.splits import (
    PROCEDURAL_FIRST_IDS, PROCEDURAL_SEEDS, check_training_objects, default_ycb_models_dirs, training_ycb_models,
)
from pose_node.scene.appearance import AppearanceConfig, add_rgb_noise, background_image, procedural_texture, sample_lighting
from pose_node.scene.clutter import ClutterConfig, clutter_model, place_distractors, sample_room
from pose_node.scene.layout import LayoutConfig, make_table_model, sample_layout
from pose_node.scene.photoreal import appearance_model, procedural_vertex_colours
from pose_node.scene.placement import PlacementError, compute_rest_poses, place_objects
from pose_node.scene.sensor_model import CameraModelConfig, apply_camera_model, sample_camera_params, srgb_decode

logger = logging.getLogger(__name__)

_DONE_FILE = "generation.json"

# Wider than the photoreal set's own camera (CameraModelConfig defaults): a head trained on the
# exact test-time ranges would still meet other cameras in use.
STRONG_CAMERA = CameraModelConfig(
    exposure_target_range=(0.35, 0.95),
    vignetting_range=(0.0, 0.45),
    wb_temperature_error_mired_range=(-60.0, 60.0),
    wb_tint_error_range=(-0.08, 0.08),
    full_well_range_e=(1500.0, 12000.0),
    read_noise_range_e=(2.0, 10.0),
    blur_sigma_range_px=(0.0, 1.5),
    jpeg_quality_range=(60, 98),
)

# Light from grazing to overhead, from dim and flat (ambient-dominated) to hard and contrasty.
STRONG_LIGHTING = AppearanceConfig(ambient_range=(0.05, 0.6), diffuse_range=(0.2, 1.3), light_elevation_range_deg=(12.0, 88.0))


@dataclass(frozen=True)
class DrWorkcellConfig:
    """One domain-randomized image set: ``num_workcells`` workcells with seeds ``first_seed + i``.

    Attributes:
        name: cache folder name.
        first_seed: seed of the first workcell (disjoint from the plain splits' 100k-400k).
        num_workcells, scenes_per_workcell, num_cameras: images = their product.
        width_px, height_px: image size.
        distance_range_m: camera distance range.
        objects_range: distinct objects per scene (both ends included); with probability
            ``duplicate_probability`` one of them appears twice.
        duplicate_probability: see ``objects_range``.
        ycb_share: share of workcells showing real training-split YCB meshes (the others show
            procedural training-split shapes); no YCB folder found: procedural only.
        ycb_models_dirs: BOP models folders to draw real meshes from (None:
            :func:`pose_node.datasets.splits.default_ycb_models_dirs`); only ``train`` ids load.
        untextured_pattern_probability: an untextured object gets a random solid two-colour
            pattern with this probability, else one plain random colour (a material's base colour).
        room_probability: share of scenes with a floor, partition walls and table legs around the
            table (else the flat background image behind everything, as in the plain split).
        clutter: room and distractor ranges (:class:`pose_node.scene.clutter.ClutterConfig`).
        distractors_are_foreground: distractor primitives are foreground targets (module docstring).
        lighting: light direction and intensity ranges.
        light_pool_strength_range: a smooth random gain field (a spotlight pool, a shadow of
            something outside the view) multiplies the linear image: gain in ``[1 - s, 1 + 2 s]``.
        camera: colour camera ranges applied to the linear render; None: plain images (the raster
            output with ``plain_noise_sigma`` Gaussian noise, as the plain split).
        plain_noise_sigma: 8-bit noise of plain images.
        table_texture_px: side of the table texture (512 keeps generation fast).
    """

    name: str = "train_dr"
    first_seed: int = 500_000
    num_workcells: int = 100
    scenes_per_workcell: int = 2
    num_cameras: int = 3
    width_px: int = 640
    height_px: int = 480
    distance_range_m: tuple[float, float] = (0.45, 1.5)
    objects_range: tuple[int, int] = (3, 8)
    duplicate_probability: float = 0.35
    ycb_share: float = 0.6
    ycb_models_dirs: tuple[str, ...] | None = None
    untextured_pattern_probability: float = 0.5
    room_probability: float = 0.8
    clutter: ClutterConfig = field(default_factory=lambda: ClutterConfig(num_distractors=(0, 8)))
    distractors_are_foreground: bool = True
    lighting: AppearanceConfig = STRONG_LIGHTING
    light_pool_strength_range: tuple[float, float] = (0.0, 0.6)
    camera: CameraModelConfig | None = STRONG_CAMERA
    plain_noise_sigma: float = 2.0
    table_texture_px: int = 512

    def __post_init__(self) -> None:
        checks = [
            ("num_workcells", self.num_workcells >= 1), ("scenes_per_workcell", self.scenes_per_workcell >= 1),
            ("num_cameras", 1 <= self.num_cameras <= 8), ("objects_range", 1 <= self.objects_range[0] <= self.objects_range[1]),
            ("duplicate_probability", 0.0 <= self.duplicate_probability <= 1.0), ("ycb_share", 0.0 <= self.ycb_share <= 1.0),
            ("untextured_pattern_probability", 0.0 <= self.untextured_pattern_probability <= 1.0),
            ("room_probability", 0.0 <= self.room_probability <= 1.0),
            ("light_pool_strength_range", 0.0 <= self.light_pool_strength_range[0] <= self.light_pool_strength_range[1] < 1.0),
            ("table_texture_px", self.table_texture_px >= 8),
        ]
        check_fields(self, checks)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class DrImage:
    """One generated image.

    Attributes:
        rgb: (H, W, 3) uint8.
        labels: (H, W) int32 visible foreground instances 1..K (0 = background: table, room, beyond).
        object_ids: (K,) obj_id of each label (0 for a distractor).
        name: ``wc<seed>/<scene>/<view>``.
    """

    rgb: np.ndarray
    labels: np.ndarray
    object_ids: list[int]
    name: str


def training_ycb_sources(config: DrWorkcellConfig) -> list[tuple[Path, tuple[int, ...]]]:
    """(models folder, training-split ids) of every YCB folder with at least one training object."""
    dirs = [Path(d) for d in config.ycb_models_dirs] if config.ycb_models_dirs is not None else default_ycb_models_dirs()
    return [(found.models_dir, found.object_ids) for found in training_ycb_models(dirs) if found.object_ids]


def _load_objects(config: DrWorkcellConfig, index: int, rng: np.random.Generator,
                  sources: list[tuple[Path, tuple[int, ...]]]) -> list[ObjectModel]:
    from pose_node.onboarding.mesh_loading import load_bop_models
    from pose_node.onboarding.procedural import make_procedural_objects

    n = config.objects_range[1]
    if sources and rng.uniform() < config.ycb_share:
        weights = np.array([len(ids) for _, ids in sources], float)
        folder, ids = sources[int(rng.choice(len(sources), p=weights / weights.sum()))]
        chosen = sorted(int(i) for i in rng.choice(ids, size=min(n, len(ids)), replace=False))
        check_training_objects(chosen)
        models = load_bop_models(folder, object_ids=chosen)
    else:
        models = make_procedural_objects(n, PROCEDURAL_SEEDS["train"] + index, first_id=PROCEDURAL_FIRST_IDS["train"])
    check_training_objects([m.object_id for m in models])
    return [appearance_model(m, rng, config.untextured_pattern_probability) for m in models]


def _plain_colour(model: ObjectModel, rng: np.random.Generator, pattern_probability: float) -> ObjectModel:
    """An untextured clutter primitive with a random plain colour or solid pattern."""
    if rng.uniform() < pattern_probability:
        colours = procedural_vertex_colours(model.vertices, rng)
    else:
        hsv = np.uint8([[[rng.uniform(0, 180), rng.uniform(0, 220), rng.uniform(40, 240)]]])
        colours = np.repeat(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0], len(model.vertices), 0)
    return replace(model, vertex_colors=colours.astype(np.uint8))


def light_pool_gain(rng: np.random.Generator, height: int, width: int, strength: float) -> np.ndarray:
    """(H, W) float32 smooth random gain in ``[1 - strength, 1 + 2 strength]`` (a few soft blobs)."""
    if strength <= 0:
        return np.ones((height, width), np.float32)
    cells = int(rng.integers(2, 6))
    grid = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
    field_ = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    field_ = (field_ - field_.min()) / max(float(field_.max() - field_.min()), 1e-6)
    return (1.0 - strength + 3.0 * strength * field_ ** 2).astype(np.float32)


def finish_image(rgb_raster: np.ndarray, config: DrWorkcellConfig, rng: np.random.Generator) -> np.ndarray:
    """The delivered image of one raster view: light pool and colour camera, or plain noise.

    Args:
        rgb_raster: (H, W, 3) uint8 sRGB from the rasterizer.
        rng: the camera stream (draws everything of this step).
    Returns:
        (H, W, 3) uint8.
    """
    if config.camera is None:
        return add_rgb_noise(rgb_raster, rng, config.plain_noise_sigma)
    linear = srgb_decode(rgb_raster.astype(np.float32) / 255.0).astype(np.float32)
    gain = light_pool_gain(rng, *rgb_raster.shape[:2], float(rng.uniform(*config.light_pool_strength_range)))
    return apply_camera_model(linear * gain[..., None], sample_camera_params(rng, config.camera), rng)


def generate_workcell_images(config: DrWorkcellConfig, index: int,
                             sources: list[tuple[Path, tuple[int, ...]]] | None = None) -> list[DrImage]:
    """Images of workcell ``index`` (seed ``first_seed + index``), scenes x cameras.

    Raises:
        PlacementError: the objects do not fit on the table.
        InvalidInputError: a validation or test object would be loaded.
    """
    from pose_node.core.geometry import invert_rigid
    from pose_node.render.renderer import Renderer

    seed = config.first_seed + index
    rng, rng_camera = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    sources = training_ycb_sources(config) if sources is None else sources
    models = _load_objects(config, index, rng, sources)
    rest_poses = [compute_rest_poses(m) for m in models]
    layout = sample_layout(rng, LayoutConfig(num_cameras=config.num_cameras, width_px=config.width_px,
                                             height_px=config.height_px, distance_range_m=config.distance_range_m))
    K = np.stack([c.K for c in layout.cameras])
    T_camera_world = np.stack([invert_rigid(c.T_world_camera) for c in layout.cameras])
    V, H, W = len(layout.cameras), config.height_px, config.width_px
    images = []
    renderer = Renderer(W, H)
    try:
        handles = [renderer.add_object(m) for m in models]
        for scene in range(config.scenes_per_workcell):
            lo, hi = config.objects_range
            chosen = rng.choice(len(models), size=int(rng.integers(lo, min(hi, len(models)) + 1)), replace=False)
            instances = sorted(int(c) for c in chosen)
            if rng.uniform() < config.duplicate_probability:
                instances.append(int(rng.choice(chosen)))
            placed = place_objects(models, instances, rng, table_size_m=layout.table_size_m, rest_poses=rest_poses)
            clutter = sample_room(rng, layout.table_size_m, layout.table_thickness_m, config.clutter) \
                if rng.uniform() < config.room_probability else []
            clutter += place_distractors(rng, placed, layout.table_size_m, config.clutter)
            clutter_models = []
            for item in clutter:
                if item.kind == "wall":
                    clutter_models.append(clutter_model(item, procedural_texture(rng, 256, 256)))
                else:
                    clutter_models.append(_plain_colour(clutter_model(item), rng, config.untextured_pattern_probability))
            size = config.table_texture_px
            table = make_table_model(layout.table_size_m, layout.table_thickness_m, procedural_texture(rng, size, size))
            scene_handles = ([handles[p.model_index] for p in placed] + [renderer.add_object(table)]
                             + [renderer.add_object(m) for m in clutter_models])
            T_world = np.stack([p.T_world_object for p in placed] + [np.eye(4)] + [c.T_world_object for c in clutter])
            T_camera_object = T_camera_world[:, None] @ T_world[None]
            light = sample_lighting(rng, config.lighting)
            backgrounds = np.stack([background_image(rng, H, W) for _ in range(V)])
            out = renderer.render(
                K, T_camera_object, scene_handles, outputs=("rgb", "instance"),
                light_dir_cam=np.stack([light.travel_direction_in_camera(c.T_world_camera) for c in layout.cameras]),
                ambient=np.full(V, light.ambient), diffuse=np.full(V, light.diffuse), background=backgrounds,
            )
            M = len(placed)
            # Geometry-pass labels: instance m is m + 1, the table M + 1, clutter item k is M + 2 + k.
            foreground_labels = list(range(1, M + 1))
            object_ids = [p.object_id for p in placed]
            if config.distractors_are_foreground:
                for k, item in enumerate(clutter):
                    if item.role == "distractor":
                        foreground_labels.append(M + 2 + k)
                        object_ids.append(0)
            lut = np.zeros(M + 2 + len(clutter), np.int32)
            lut[foreground_labels] = np.arange(1, len(foreground_labels) + 1)
            for v in range(V):
                images.append(DrImage(finish_image(out.rgb[v], config, rng_camera), lut[out.instance[v]], object_ids,
                                      f"wc{seed}/{scene}/{v}"))
    finally:
        renderer.release()
    return images


def generate_dr_split(config: DrWorkcellConfig, cache_dir: Path) -> Path:
    """Generate (or reuse) a domain-randomized set under ``cache_dir/<name>-<key>``: per image
    ``<i>.png`` (RGB) and ``<i>_labels.png`` (16-bit instance labels). Returns that folder."""
    root = cache_dir / f"{config.name}-{config.key()}"
    done = root / _DONE_FILE
    if done.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sources = training_ycb_sources(config)
    names, object_ids, skipped = [], set(), []
    for i in range(config.num_workcells):
        try:
            images = generate_workcell_images(config, i, sources)
        except PlacementError as err:
            logger.warning("%s: workcell seed %d skipped: %s", config.name, config.first_seed + i, err)
            skipped.append(config.first_seed + i)
            continue
        for image in images:
            n = len(names)
            cv2.imwrite(str(root / f"{n:06d}.png"), cv2.cvtColor(image.rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"{n:06d}_labels.png"), image.labels.astype(np.uint16))
            names.append(image.name)
            object_ids.update(image.object_ids)
        if (i + 1) % 10 == 0:
            logger.info("%s: %d/%d workcells (%.0f s)", config.name, i + 1, config.num_workcells, time.perf_counter() - started)
    done.write_text(json.dumps({"config": asdict(config), "images": names, "object_ids": sorted(object_ids),
                                "ycb_sources": {str(d): list(ids) for d, ids in sources}, "skipped_seeds": skipped,
                                "seconds": time.perf_counter() - started}, indent=1, default=str))
    logger.info("%s: %d images in %.0f s", config.name, len(names), time.perf_counter() - started)
    return root


def is_dr_split(root: Path) -> bool:
    """True for a folder written by :func:`generate_dr_split`."""
    done = root / _DONE_FILE
    return done.is_file() and "images" in json.loads(done.read_text())


def iter_dr_split(root: Path) -> Iterator[tuple[np.ndarray, list[np.ndarray], str]]:
    """(rgb (H, W, 3) uint8, visible masks (H, W) bool, name) of every image of a generated set."""
    names = json.loads((root / _DONE_FILE).read_text())["images"]
    for n, name in enumerate(names):
        rgb = cv2.cvtColor(cv2.imread(str(root / f"{n:06d}.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        labels = cv2.imread(str(root / f"{n:06d}_labels.png"), cv2.IMREAD_UNCHANGED).astype(np.int32)
        yield rgb, [labels == k for k in range(1, int(labels.max()) + 1)], name
