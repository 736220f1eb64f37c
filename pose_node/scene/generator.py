"""Synthetic multi-camera workcell: a BOP dataset, a rosbag2 and the world-frame ground truth.

One call of :func:`generate_workcell` builds one workcell (a table and ``C`` calibrated cameras,
fixed for the whole run, as in a real cell) and records ``S`` scenes of ``F`` frames each. A scene
is one static arrangement of objects on the table; its frames differ by a slightly moving light
and by sensor noise. Between scenes the objects are re-arranged, and the light, the backgrounds
and the table texture (one of a pool of eight) are drawn anew.

Output (``DIR``)::

    models/                      obj_XXXXXX.ply (mm) + texture + models_info.json
    test/<scene_id:06d>/         rgb/ depth/ mask/ mask_visib/ scene_camera.json scene_gt.json scene_gt_info.json
    test_targets_bop19.json      per image and obj_id: instances with visib_fract >= 0.1
    test_targets_multiview.json  per frame and obj_id: im_ids of all cameras of the frame,
                                 instances with visib_fract >= 0.1 in at least one of them
    scene_world.json             cameras, objects, per scene T_world_object and per frame stamps
    bag/                         rosbag2 (MCAP), topics in :mod:`pose_node.scene.bag_writer`

Image ids: ``im_id = frame_index * C + camera_index`` within each scene (``C`` cameras), so the
images of one synchronized frame are ``frame_index * C .. frame_index * C + C - 1``.

Stamps: frame ``f`` of scene ``s`` is taken at ``start_stamp_ns + (s * (F + gap) + f) / rate``
(``gap`` = ``scene_gap_s * rate`` frames), every camera of a frame at the same stamp unless
``camera_stamp_jitter_ms`` > 0 (then each camera's stamp moves by U(-j, j) ms, for sync tests).

Masks: ``mask/`` is the unoccluded silhouette (the instance rendered alone), ``mask_visib/``
the visible part in the full render; ``visib_fract`` = visible / unoccluded pixels, where the
unoccluded count includes the part outside the image (rendered on a canvas three times the image
size, as the BOP toolkit does), so objects cut by the image border get a lower visib_fract.

Photoreal mode (``WorkcellConfig.photoreal``): colour images are path-traced with Mitsuba
(:mod:`pose_node.scene.photoreal`) with principled materials per object, an HDR environment, area,
point and spot lights, a room (floor, partition walls, table legs) and distractors on the table
(:mod:`pose_node.scene.clutter`), then pass through a camera model; depth comes from the depth sensor
model (:mod:`pose_node.scene.sensor_model`). Room and distractors are part of the rasterized
geometry pass (they occlude objects and have depth) but are not GT instances; every GT file
(``scene_gt``, ``mask``, ``mask_visib``, ``scene_gt_info``) is computed exactly as without it, and
``scene_world.json`` records the clutter of each scene. Without it, outputs are those of the
rasterizer, unchanged.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.core.types import Camera, ObjectModel
from pose_node.core.geometry import invert_rigid
from pose_node.datasets.bop import BopGt, BopImageCamera, BopSceneWriter, bbox_xywh_from_mask, write_bop_models
from pose_node.datasets.bop import write_targets_bop19, write_targets_multiview
from pose_node.scene.appearance import (
    AppearanceConfig, Lighting, add_depth_noise, add_rgb_noise, background_image, jitter_lighting, procedural_texture,
    sample_lighting,
)
from pose_node.scene.bag_writer import DEPTH_ENCODINGS, WorkcellBagWriter
from pose_node.scene.clutter import ClutterItem, clutter_model, place_distractors, sample_room
from pose_node.scene.layout import LayoutConfig, WorkcellLayout, make_table_model, sample_layout
from pose_node.scene.path_tracer import PathTracer
from pose_node.scene.photoreal import (
    GLOSSY, MATTE, METAL, PhotorealConfig, PhotorealScene, PhotorealShape, appearance_model, jitter_lights, sample_lights,
    sample_material,
)
from pose_node.scene.placement import PlacedInstance, PlacementConfig, compute_rest_poses, place_objects
from pose_node.scene.sensor_model import apply_camera_model, luminance, sample_camera_params, simulate_depth_sensor

logger = logging.getLogger(__name__)

PROCEDURAL = "procedural"
# Generated paths under the output directory (only these are replaced with overwrite=True).
_OUTPUTS = ("models", "test", "bag", "scene_world.json", "test_targets_bop19.json", "test_targets_multiview.json")


@dataclass(frozen=True)
class WorkcellConfig:
    """Everything :func:`generate_workcell` needs.

    Attributes:
        out_dir: output directory (created; must be empty or absent unless ``overwrite``).
        objects: ``"procedural"``, a BOP ``models/`` directory (PLY in mm + models_info.json), the
            node's YAML file (``.yaml``/``.yml``: its ``objects:`` list) or mesh files
            ``"PATH:UNITS"`` (a tuple; see :mod:`pose_node.scene.objects`).
        num_objects: distinct object models per scene (procedural: generated; BOP: drawn from the
            directory without replacement; a YAML file or mesh files: unused, every listed object
            is in the workcell).
        max_instances_per_object: each model appears 1..this many times in a scene.
        objects_per_scene: ``(lo, hi)``: each scene shows a random subset of lo..hi of the loaded
            models, each once, and with probability ``duplicate_probability`` one of them twice
            (``max_instances_per_object`` is then unused). None: every model in every scene.
        duplicate_probability: see ``objects_per_scene``.
        num_scenes, frames_per_scene: recording length.
        frame_rate_hz: frame rate of the recording (bag stamps).
        start_stamp_ns: stamp of the first frame.
        scene_gap_s: time between the last frame of a scene and the first of the next.
        camera_stamp_jitter_ms: per camera stamp offset U(-j, j) ms (0: perfectly synchronized).
        clock_rate_hz: /clock publication rate.
        depth_encoding: depth image encoding in the bag (``32FC1`` metres, ``16UC1`` millimetres).
        write_bag: also write the rosbag2.
        depth_scale_mm: BOP depth PNG unit.
        visib_fract_threshold: minimum visible fraction for an instance to be a target.
        seed: the single source of randomness.
        overwrite: replace earlier outputs in ``out_dir``.
        photoreal: path-traced colour images, clutter and sensor models (module docstring); None:
            rasterized images (``appearance`` noise settings apply).
    """

    out_dir: Path
    objects: str | tuple[str, ...] = PROCEDURAL
    num_objects: int = 4
    max_instances_per_object: int = 1
    objects_per_scene: tuple[int, int] | None = None
    duplicate_probability: float = 0.0
    num_scenes: int = 1
    frames_per_scene: int = 5
    frame_rate_hz: float = 10.0
    start_stamp_ns: int = 1_700_000_000_000_000_000
    scene_gap_s: float = 1.0
    camera_stamp_jitter_ms: float = 0.0
    clock_rate_hz: float = 100.0
    depth_encoding: str = "32FC1"
    write_bag: bool = True
    depth_scale_mm: float = 0.1
    visib_fract_threshold: float = 0.1
    seed: int = 0
    overwrite: bool = False
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    photoreal: PhotorealConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if not isinstance(self.objects, str):  # one source of a list (the CLI's nargs) is that source
            objects = tuple(self.objects)
            object.__setattr__(self, "objects", objects[0] if len(objects) == 1 else objects)
        checks = [
            ("num_objects", self.num_objects >= 1), ("max_instances_per_object", self.max_instances_per_object >= 1),
            ("num_scenes", self.num_scenes >= 1), ("frames_per_scene", self.frames_per_scene >= 1),
            ("frame_rate_hz", self.frame_rate_hz > 0), ("clock_rate_hz", self.clock_rate_hz > 0),
            ("scene_gap_s", self.scene_gap_s >= 0), ("camera_stamp_jitter_ms", self.camera_stamp_jitter_ms >= 0),
            ("depth_scale_mm", self.depth_scale_mm > 0), ("visib_fract_threshold", 0 <= self.visib_fract_threshold <= 1),
            ("depth_encoding", self.depth_encoding in DEPTH_ENCODINGS),
            ("objects_per_scene", self.objects_per_scene is None
             or (len(self.objects_per_scene) == 2 and 1 <= self.objects_per_scene[0] <= self.objects_per_scene[1] <= self.num_objects)),
            ("duplicate_probability", 0 <= self.duplicate_probability <= 1),
            ("objects", all(isinstance(o, str) for o in ((self.objects,) if isinstance(self.objects, str) else self.objects))
             and len(self.objects) > 0),
        ]
        check_fields(self, checks)
        if self.camera_stamp_jitter_ms * 2e-3 >= 1.0 / self.frame_rate_hz:
            raise InvalidInputError(
                f"WorkcellConfig.camera_stamp_jitter_ms ({self.camera_stamp_jitter_ms}) must stay below half the frame "
                f"period ({500.0 / self.frame_rate_hz} ms at frame_rate_hz={self.frame_rate_hz})"
            )


def load_objects(config: WorkcellConfig, rng: np.random.Generator) -> tuple[list[ObjectModel], dict[int, dict] | None]:
    """The scene's object models and their BOP symmetry entries (mm) to write (None or a missing id:
    from the model's own transforms).

    Raises:
        InvalidInputError: a bad source (the message names it), too few objects for the config.
        MeshLoadError: an unreadable or broken mesh, or a size implausible for its declared units.
    """
    sources = (config.objects,) if isinstance(config.objects, str) else config.objects
    if sources == (PROCEDURAL,):
        from pose_node.onboarding.procedural import make_procedural_objects

        return make_procedural_objects(config.num_objects, config.seed), None
    if len(sources) > 1 or not Path(sources[0]).is_dir():
        from pose_node.scene.objects import load_listed_objects

        models, symmetries = load_listed_objects(sources)
        if config.objects_per_scene is not None and config.objects_per_scene[1] > len(models):
            raise InvalidInputError(f"WorkcellConfig.objects_per_scene: {config.objects_per_scene} but "
                                    f"{' '.join(sources)} lists {len(models)} objects")
        return models, symmetries
    from pose_node.onboarding.mesh_loading import load_bop_models

    models_dir = Path(sources[0])
    info_path = models_dir / "models_info.json"
    if not info_path.is_file():
        raise InvalidInputError(
            f"WorkcellConfig.objects: {models_dir} is neither 'procedural' nor a BOP models directory (no models_info.json)"
        )
    info = {int(k): v for k, v in json.loads(info_path.read_text()).items()}
    if config.num_objects > len(info):
        raise InvalidInputError(f"WorkcellConfig.num_objects: {config.num_objects} requested but {models_dir} has {len(info)} models")
    ids = sorted(int(i) for i in rng.choice(sorted(info), size=config.num_objects, replace=False))
    symmetries = {i: {k: v for k, v in info[i].items() if k.startswith("symmetries_")} for i in ids}
    return load_bop_models(models_dir, object_ids=ids), symmetries


def frame_stamp_ns(config: WorkcellConfig, scene_index: int, frame_index: int) -> int:
    """Nominal stamp of a frame (see the module docstring)."""
    gap_frames = config.scene_gap_s * config.frame_rate_hz
    slot = scene_index * (config.frames_per_scene + gap_frames) + frame_index
    return int(config.start_stamp_ns + round(slot * 1e9 / config.frame_rate_hz))


def _prepare_out_dir(config: WorkcellConfig) -> Path:
    out = config.out_dir
    if out.exists() and any(out.iterdir()):
        if not config.overwrite:
            raise InvalidInputError(f"WorkcellConfig.out_dir: {out} is not empty (set overwrite to replace earlier outputs)")
        for name in _OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass(frozen=True)
class _StaticScene:
    """What stays the same over the frames of a scene (V views, M instances; the table is last).

    Attributes:
        placed: the M instances.
        T_camera_object: (V, M + 1, 4, 4) metres, the table last.
        handles: M + 1 renderer handles.
        depth: (V, H, W) float32 metres, exact (0 = nothing: beyond the table).
        masks: (V, M, H, W) bool unoccluded silhouettes (each instance rendered alone).
        masks_visib: (V, M, H, W) bool visible parts.
        px_counts_all: (V, M) silhouette sizes including the parts outside the image.
        bboxes_obj: (V, M, 4) int64 xywh boxes of the whole silhouettes in image coordinates (BOP
            ``bbox_obj``: may extend beyond the image).
        backgrounds: (V, H, W, 3) uint8 seen beyond the table.
        instance: (V, H, W) int32 labels of the geometry pass: instance m is m + 1, the table
            M + 1, clutter item k is M + 2 + k, 0 = nothing.
        table: the table model of this scene.
    """

    placed: list[PlacedInstance]
    T_camera_object: np.ndarray
    handles: list[int]
    depth: np.ndarray
    masks: np.ndarray
    masks_visib: np.ndarray
    px_counts_all: np.ndarray
    bboxes_obj: np.ndarray
    backgrounds: np.ndarray
    instance: np.ndarray
    table: ObjectModel


class _WorkcellRenderer:
    """Renders the workcell views.

    Owns two renderers: one at the image size, and one on a canvas three times larger (the image
    in its centre) for the full silhouettes of objects cut by the image border. The table is one
    of a small pool of textured tables (the renderer keeps every uploaded mesh, so a new texture
    per scene would grow its memory with the number of scenes).
    """

    TABLE_POOL_SIZE = 8

    def __init__(self, layout: WorkcellLayout, models: list[ObjectModel], texture_size_px: int):
        from pose_node.render.renderer import Renderer

        self.layout = layout
        camera = layout.cameras[0]
        self.width, self.height = camera.width, camera.height
        self.renderer = Renderer(self.width, self.height)
        self.canvas = Renderer(3 * self.width, 3 * self.height)
        self.handles = [self.renderer.add_object(m) for m in models]
        self.canvas_handles = [self.canvas.add_object(m) for m in models]
        self.tables: list[int] = []
        self.table_models: list[ObjectModel] = []
        self.K = np.stack([c.K for c in layout.cameras])
        self.K_canvas = self.K.copy()
        self.K_canvas[:, 0, 2] += self.width
        self.K_canvas[:, 1, 2] += self.height
        self.T_camera_world = np.stack([invert_rigid(c.T_world_camera) for c in layout.cameras])
        self._texture_size_px = texture_size_px

    def release(self) -> None:
        self.renderer.release()
        self.canvas.release()

    def _table(self, rng: np.random.Generator) -> int:
        """Index of this scene's table in the pool."""
        index = int(rng.integers(self.TABLE_POOL_SIZE))
        while len(self.tables) <= index:
            size = self._texture_size_px
            table = make_table_model(self.layout.table_size_m, self.layout.table_thickness_m, procedural_texture(rng, size, size))
            self.tables.append(self.renderer.add_object(table))
            self.table_models.append(table)
        return index

    def static_scene(self, placed: list[PlacedInstance], rng: np.random.Generator,
                     clutter: list[tuple[ObjectModel, np.ndarray]] = ()) -> _StaticScene:
        """Render geometry, masks and backgrounds of one arrangement.

        Args:
            placed: the M instances. rng: draws the table and the backgrounds.
            clutter: (model, T_world_object) of extra occluders drawn after the table (labels M + 2 ...).
        """
        V, M = len(self.layout.cameras), len(placed)
        T_world_objects = np.stack([p.T_world_object for p in placed] + [np.eye(4)] + [T for _, T in clutter])
        T_camera_object = self.T_camera_world[:, None] @ T_world_objects[None]
        table_index = self._table(rng)
        # Only depth and labels are rasterized for clutter: upload it without texture.
        clutter_handles = [self.renderer.add_object(replace(model, uv=None, texture=None)) for model, _ in clutter]
        handles = [self.handles[p.model_index] for p in placed] + [self.tables[table_index]] + clutter_handles
        geometry = self.renderer.render(self.K, T_camera_object, handles, outputs=("depth", "instance"))
        masks = np.zeros((V, M, self.height, self.width), bool)
        px_counts_all = np.zeros((V, M), np.int64)
        bboxes_obj = np.full((V, M, 4), -1, np.int64)
        canvas_offset = np.array([self.width, self.height, 0, 0])
        for m, p in enumerate(placed):
            alone = self.canvas.render(
                self.K_canvas, T_camera_object[:, m : m + 1], [self.canvas_handles[p.model_index]], outputs=("instance",)
            )
            full = alone.instance > 0
            px_counts_all[:, m] = full.reshape(V, -1).sum(1)
            for v in range(V):
                if px_counts_all[v, m]:
                    bboxes_obj[v, m] = bbox_xywh_from_mask(full[v]) - canvas_offset
            masks[:, m] = full[:, self.height : 2 * self.height, self.width : 2 * self.width]
        masks_visib = geometry.instance[:, None] == (np.arange(M) + 1)[None, :, None, None]
        backgrounds = np.stack([background_image(rng, self.height, self.width) for _ in range(V)])
        return _StaticScene(placed, T_camera_object, handles, geometry.depth, masks, masks_visib, px_counts_all, bboxes_obj,
                            backgrounds, geometry.instance, self.table_models[table_index])

    def rgb(self, scene: _StaticScene, light: Lighting) -> np.ndarray:
        """(V, H, W, 3) uint8 colour images of a scene under one light."""
        V = len(self.layout.cameras)
        return self.renderer.render(
            self.K, scene.T_camera_object, scene.handles, outputs=("rgb",),
            light_dir_cam=np.stack([light.travel_direction_in_camera(c.T_world_camera) for c in self.layout.cameras]),
            ambient=np.full(V, light.ambient), diffuse=np.full(V, light.diffuse), background=scene.backgrounds,
        ).rgb


def _scene_instances(config: WorkcellConfig, num_models: int, rng: np.random.Generator) -> list[int]:
    """Model index of each instance of one scene (see ``objects_per_scene``), grouped by model."""
    if config.objects_per_scene is None:
        counts = rng.integers(1, config.max_instances_per_object + 1, num_models)
    else:
        lo, hi = config.objects_per_scene
        counts = np.zeros(num_models, np.int64)
        chosen = rng.choice(num_models, size=int(rng.integers(lo, hi + 1)), replace=False)
        counts[chosen] = 1
        if rng.random() < config.duplicate_probability:
            counts[rng.choice(chosen)] = 2
    return [i for i, n in enumerate(counts) for _ in range(int(n))]


class _PhotorealWorkcell:
    """The photoreal parts of a run: clutter, materials and lights per scene, path tracing, sensor models.

    All its randomness comes from its own generator, so a seed gives the same objects, poses,
    cameras and unoccluded masks with and without photoreal rendering (distractors can only hide
    pixels of ``mask_visib``).
    """

    def __init__(self, config: PhotorealConfig, models: list[ObjectModel], layout: WorkcellLayout, rng: np.random.Generator):
        self.config = config
        self.layout = layout
        self.rng = rng
        self.tracer = PathTracer(config.render_quality, config.resolved_cache_dir())
        # An object's finish and colours are part of its identity: drawn once per run, not per scene.
        self.materials = [sample_material(rng) for _ in models]
        self.render_models = [appearance_model(m, rng) for m in models]
        self.shapes: tuple[PhotorealShape, ...] = ()
        self.lights = None
        self.glossy_labels = None

    def sample_clutter(self, placed: list[PlacedInstance]) -> tuple[list[ClutterItem], list[ObjectModel]]:
        """Room and distractors of a scene, with their models (walls and floor textured)."""
        c = self.config
        items = sample_room(self.rng, self.layout.table_size_m, self.layout.table_thickness_m, c.clutter)
        items += place_distractors(self.rng, placed, self.layout.table_size_m, c.clutter)
        size = c.texture_size_px
        models = [clutter_model(item, procedural_texture(self.rng, size, size) if item.kind == "wall" else None) for item in items]
        return items, models

    def begin_scene(self, placed: list[PlacedInstance], scene: _StaticScene, clutter: list[ClutterItem],
                    clutter_models: list[ObjectModel]) -> None:
        """Shapes (labels as in the geometry pass), materials and lights of a new arrangement."""
        M = len(placed)
        shapes = [PhotorealShape(self.render_models[p.model_index], p.T_world_object, self.materials[p.model_index], m + 1)
                  for m, p in enumerate(placed)]
        shapes.append(PhotorealShape(scene.table, np.eye(4), sample_material(self.rng, (MATTE, GLOSSY)[int(self.rng.integers(2))]),
                                     M + 1))
        for k, (item, model) in enumerate(zip(clutter, clutter_models)):
            finish = {"wall": MATTE, "floor": MATTE, "leg": METAL}.get(item.role)
            shapes.append(PhotorealShape(model, item.T_world_object, sample_material(self.rng, finish), M + 2 + k))
        self.shapes = tuple(shapes)
        centre = np.append(np.mean([p.T_world_object[:2, 3] for p in placed], 0), 0.0)
        self.lights = sample_lights(self.rng, self.config.lighting, centre)
        self.glossy_labels = PhotorealScene(self.shapes, self.lights).glossy_labels(M + 2 + len(clutter))

    def frame(self, frame_index: int) -> PhotorealScene:
        """The scene of one frame (the first frame has the scene's lights, later ones move them slightly)."""
        lights = self.lights if frame_index == 0 else jitter_lights(self.lights, self.rng, self.config.lighting)
        return PhotorealScene(self.shapes, lights)

    def view(self, frame_scene: PhotorealScene, scene: _StaticScene, v: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 colour image and (H, W) float32 sensor depth (metres) of view ``v``."""
        render = self.tracer.render(frame_scene, self.layout.cameras[v], seed=int(self.rng.integers(2**31)))
        logger.info("view %d: %s", v, "render cache hit" if render.cached else f"path-traced in {render.seconds:.1f} s")
        rgb = apply_camera_model(render.linear, sample_camera_params(self.rng, self.config.camera), self.rng)
        depth = simulate_depth_sensor(scene.depth[v], scene.instance[v], self.glossy_labels, render.albedo,
                                      luminance(render.linear), self.rng, self.config.depth)
        return rgb, depth


def _instance_counts(placed: list[PlacedInstance], selected: np.ndarray) -> dict[int, int]:
    """obj_id -> number of selected instances (objects with none are left out), sorted by obj_id."""
    counts: dict[int, int] = {}
    for p, chosen in zip(placed, selected):
        if chosen:
            counts[p.object_id] = counts.get(p.object_id, 0) + 1
    return dict(sorted(counts.items()))


def generate_workcell(config: WorkcellConfig) -> Path:
    """Generate the dataset described in the module docstring. Returns the output directory.

    Raises:
        InvalidInputError: bad configuration, non-empty output directory without ``overwrite``.
        PlacementError: the objects do not fit on the table.
    """
    started = time.perf_counter()
    out = _prepare_out_dir(config)
    # Child i of a SeedSequence does not depend on how many are spawned: the first five streams
    # are those of the rasterized generator, the sixth is photoreal's own.
    rng_objects, rng_layout, rng_place, rng_look, rng_noise, rng_photo = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(6)
    )
    models, symmetries = load_objects(config, rng_objects)
    write_bop_models(out / "models", models, symmetries)
    rest_poses = [compute_rest_poses(m) for m in models]
    layout = sample_layout(rng_layout, config.layout)
    C = len(layout.cameras)
    app = config.appearance
    targets_bop19, targets_multiview, world_scenes = [], [], []
    workcell = bag = None
    photo = None if config.photoreal is None else _PhotorealWorkcell(config.photoreal, models, layout, rng_photo)
    clock_period_ns = int(round(1e9 / config.clock_rate_hz))
    next_clock_ns = config.start_stamp_ns
    try:
        workcell = _WorkcellRenderer(layout, models, app.table_texture_size_px)
        if config.write_bag:
            bag = WorkcellBagWriter(out / "bag", layout.cameras, layout.camera_names, depth_encoding=config.depth_encoding)
        for scene_id in range(config.num_scenes):
            instance_models = _scene_instances(config, len(models), rng_place)
            placed = place_objects(
                models, instance_models, rng_place, table_size_m=layout.table_size_m, config=config.placement, rest_poses=rest_poses
            )
            clutter, clutter_models = photo.sample_clutter(placed) if photo is not None else ([], [])
            scene = workcell.static_scene(placed, rng_look, [(m, c.T_world_object) for m, c in zip(clutter_models, clutter)])
            lighting = sample_lighting(rng_look, app)
            if photo is not None:
                photo.begin_scene(placed, scene, clutter, clutter_models)
            frames = []
            with BopSceneWriter(out / "test", scene_id, depth_scale=config.depth_scale_mm) as writer:
                for frame_index in range(config.frames_per_scene):
                    light = lighting if frame_index == 0 else jitter_lighting(lighting, rng_look, app)
                    if photo is None:
                        rgb = workcell.rgb(scene, light)
                    else:
                        frame_scene = photo.frame(frame_index)
                    nominal = frame_stamp_ns(config, scene_id, frame_index)
                    jitter_ns = np.rint(rng_noise.uniform(-1, 1, C) * config.camera_stamp_jitter_ms * 1e6).astype(np.int64)
                    stamps = [int(nominal + j) for j in jitter_ns]
                    im_ids = [frame_index * C + v for v in range(C)]
                    rgbs, depths = [], []
                    seen_in_frame = np.zeros(len(placed), bool)
                    for v, (camera, im_id) in enumerate(zip(layout.cameras, im_ids)):
                        if photo is None:
                            rgbs.append(add_rgb_noise(rgb[v], rng_noise, app.rgb_noise_sigma))
                            depths.append(add_depth_noise(scene.depth[v], rng_noise, app) if app.depth_noise else scene.depth[v])
                        else:
                            rgb_v, depth_v = photo.view(frame_scene, scene, v)
                            rgbs.append(rgb_v)
                            depths.append(depth_v)
                        bop_camera = BopImageCamera(
                            camera.K, workcell.T_camera_world[v], config.depth_scale_mm, camera.width, camera.height
                        )
                        gts = [BopGt(p.object_id, scene.T_camera_object[v, m]) for m, p in enumerate(placed)]
                        infos = writer.add_image(im_id, rgbs[v], depths[v], bop_camera, gts, list(scene.masks[v]),
                                                 list(scene.masks_visib[v]), px_counts_all=list(scene.px_counts_all[v]),
                                                 bboxes_obj=list(scene.bboxes_obj[v]))
                        seen = np.array([info.visib_fract >= config.visib_fract_threshold for info in infos])
                        seen_in_frame |= seen
                        targets_bop19 += [{"scene_id": scene_id, "im_id": im_id, "obj_id": o, "inst_count": n}
                                          for o, n in _instance_counts(placed, seen).items()]
                    targets_multiview += [{"scene_id": scene_id, "im_ids": im_ids, "obj_id": o, "inst_count": n}
                                          for o, n in _instance_counts(placed, seen_in_frame).items()]
                    if bag is not None:
                        while next_clock_ns < min(stamps):
                            bag.write_clock(next_clock_ns)
                            next_clock_ns += clock_period_ns
                        bag.write_frame(stamps, rgbs, depths)
                    frames.append({"frame_index": frame_index, "im_ids": im_ids, "stamp_ns": nominal, "camera_stamps_ns": stamps})
            world_scenes.append({
                "scene_id": scene_id,
                "first_stamp_ns": frames[0]["stamp_ns"],
                "last_stamp_ns": frames[-1]["stamp_ns"],
                "instances": [
                    {"instance_index": m, "obj_id": p.object_id, "name": models[p.model_index].name,
                     "T_world_object": p.T_world_object.tolist()}
                    for m, p in enumerate(placed)
                ],
                "frames": frames,
            })
            if photo is not None:
                world_scenes[-1]["clutter"] = [item.to_json() for item in clutter]
            logger.info("scene %d: %d instances, %d frames x %d cameras", scene_id, len(placed), config.frames_per_scene, C)
    finally:
        if workcell is not None:
            workcell.release()
        if bag is not None:
            bag.close()
    write_targets_bop19(out / "test_targets_bop19.json", targets_bop19)
    write_targets_multiview(out / "test_targets_multiview.json", targets_multiview)
    _write_scene_world(out / "scene_world.json", config, layout, models, world_scenes)
    logger.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    return out


def _write_scene_world(path: Path, config: WorkcellConfig, layout: WorkcellLayout, models: list[ObjectModel], scenes: list[dict]) -> None:
    cameras = [
        {"name": name, "frame_id": c.frame_id, "width": c.width, "height": c.height, "K": c.K.tolist(),
         "T_world_camera": c.T_world_camera.tolist()}
        for name, c in zip(layout.camera_names, layout.cameras)
    ]
    data = {
        "description": "Ground truth of a pose_scene workcell. Poses are row-major 4x4 T_a_b (metres) mapping frame b into a.",
        "world_frame": "world",
        "frame_rate_hz": config.frame_rate_hz,
        "im_id_rule": "im_id = frame_index * num_cameras + camera_index",
        "depth_encoding": config.depth_encoding,
        "table": {"size_m": list(layout.table_size_m), "top_z_m": 0.0},
        "cameras": cameras,
        "objects": [{"obj_id": m.object_id, "name": m.name, "diameter_m": m.diameter_m, "source": m.source_path} for m in models],
        "scenes": scenes,
        "config": _config_json(config),
    }
    path.write_text(json.dumps(data, indent=1))


def _config_json(config: WorkcellConfig) -> dict:
    raw = asdict(config)
    raw["out_dir"] = str(config.out_dir)
    if config.photoreal is None:
        del raw["photoreal"]  # keeps rasterized runs' scene_world.json as it was
    elif config.photoreal.cache_dir is not None:
        raw["photoreal"]["cache_dir"] = str(config.photoreal.cache_dir)
    return raw


def read_scene_world(path: str | Path) -> dict:
    """Read ``scene_world.json`` with the 4x4 lists converted to (4, 4) float64 arrays."""
    data = json.loads(Path(path).read_text())
    for camera in data["cameras"]:
        camera["K"] = np.asarray(camera["K"], float)
        camera["T_world_camera"] = np.asarray(camera["T_world_camera"], float)
    for scene in data["scenes"]:
        for instance in scene["instances"]:
            instance["T_world_object"] = np.asarray(instance["T_world_object"], float)
    return data


def cameras_from_scene_world(data: dict) -> list[Camera]:
    """The workcell cameras (core :class:`Camera`) from :func:`read_scene_world` output."""
    return [
        Camera(K=c["K"], width=c["width"], height=c["height"], T_world_camera=c["T_world_camera"], distortion=np.zeros(5),
               frame_id=c["frame_id"])
        for c in data["cameras"]
    ]
