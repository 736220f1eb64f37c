"""Depth-only instance proposals on generated workcells and on analytic depth maps.

The generated workcell (procedural objects, most of them touching a neighbour) is written once
per module and read back through the BOP reader; the noisy variant applies the generator's own
sensor model (:func:`pose_node.scene.appearance.add_depth_noise`: z^2 noise, hole blobs,
dropouts at depth edges) to the same depth maps.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import pytest

from pose_node.core.errors import InvalidInputError
from pose_node.detection.proposal_types import Proposal, box_from_mask, mask_iou
from pose_node.detection.proposals_depth import (
    DepthProposalConfig,
    depth_proposals,
    fill_depth_holes,
    fit_support_plane,
    fit_table_surface,
    world_support_plane,
)
from pose_node.scene.appearance import AppearanceConfig, add_depth_noise
from pose_node.scene.generator import WorkcellConfig, read_scene_world
from pose_node.scene.layout import LayoutConfig
from pose_node.scene.sensor_model import DepthSensorConfig, simulate_depth_sensor
from helpers.scene import look_at, raycast_table_scene

WIDTH, HEIGHT = 320, 240
MIN_VISIB_FRACT = 0.3
MATCH_IOU = 0.5


@dataclass
class Frame:
    """One generated image: depth (H, W) metres, K (3, 3), T_world_camera (4, 4), GT visible masks."""

    depth_m: np.ndarray
    K: np.ndarray
    T_world_camera: np.ndarray
    masks_visib: list[np.ndarray]
    visib_fracts: list[float]


@dataclass
class Workcell:
    frames: list[Frame]
    config: DepthProposalConfig  # gated by the diameters of the generated objects


@pytest.fixture(scope="module")
def workcell(tmp_path_factory, make_workcell) -> Workcell:
    out = tmp_path_factory.mktemp("proposals_workcell")
    config = WorkcellConfig(
        out_dir=out, num_objects=4, num_scenes=3, frames_per_scene=1, write_bag=False, seed=7,
        layout=LayoutConfig(num_cameras=2, width_px=WIDTH, height_px=HEIGHT),
    )
    dataset = make_workcell(config)
    frames = []
    for scene_id in dataset.scene_ids():
        for im_id in dataset.image_ids(scene_id):
            camera = dataset.camera(scene_id, im_id)
            infos = dataset.gt_infos(scene_id, im_id)
            frames.append(Frame(
                depth_m=dataset.depth_m(scene_id, im_id), K=camera.K, T_world_camera=camera.T_world_camera,
                masks_visib=[dataset.mask_visib(scene_id, im_id, g) for g in range(len(infos))],
                visib_fracts=[info.visib_fract for info in infos],
            ))
    diameters = [o["diameter_m"] for o in read_scene_world(out / "scene_world.json")["objects"]]
    gate = DepthProposalConfig(min_object_diameter_m=0.8 * min(diameters), max_object_diameter_m=1.2 * max(diameters))
    return Workcell(frames, gate)


def _noisy(depth_m: np.ndarray, seed: int) -> np.ndarray:
    return add_depth_noise(depth_m, np.random.default_rng(seed), AppearanceConfig(depth_noise=True))


def _recall_and_false(frames: list[Frame], proposals: list[list[Proposal]]) -> tuple[int, int, int, int]:
    """(found, targets, false proposals, proposals): a GT with visib_fract >= 0.3 is found when a
    proposal overlaps its visible mask with IoU >= 0.5; a proposal is false when it overlaps no
    GT (of any visibility) that well."""
    found = targets = false = total = 0
    for frame, props in zip(frames, proposals):
        iou = np.array([[mask_iou(p.mask, m) for m in frame.masks_visib] for p in props]).reshape(len(props), -1)
        for g, visib in enumerate(frame.visib_fracts):
            if visib >= MIN_VISIB_FRACT:
                targets += 1
                found += bool(len(props)) and iou[:, g].max() >= MATCH_IOU
        false += int((iou.max(1, initial=0.0) < MATCH_IOU).sum())
        total += len(props)
    return found, targets, false, total


@pytest.mark.parametrize("noise", [False, True], ids=["clean", "noisy"])
def test_recall_and_false_proposals_on_generated_workcell(workcell: Workcell, noise: bool) -> None:
    depths = [_noisy(f.depth_m, i) if noise else f.depth_m for i, f in enumerate(workcell.frames)]
    proposals = [depth_proposals(d, f.K, workcell.config) for d, f in zip(depths, workcell.frames)]
    found, targets, false, total = _recall_and_false(workcell.frames, proposals)
    assert targets >= 15
    assert found / targets >= 0.9, f"recall {found}/{targets}"
    assert false <= max(2, 0.15 * total), f"{false} of {total} proposals match no object"


def test_proposals_are_consistent_and_deterministic(workcell: Workcell) -> None:
    frame = workcell.frames[0]
    depth = _noisy(frame.depth_m, 0)
    proposals = depth_proposals(depth, frame.K, workcell.config)
    again = depth_proposals(depth, frame.K, workcell.config)
    assert len(proposals) > 0
    assert [p.score for p in proposals] == sorted((p.score for p in proposals), reverse=True)
    plane = fit_support_plane(_grid_points(depth, frame.K), workcell.config)
    assert plane is not None
    table = fit_table_surface(_grid_points(depth, frame.K), plane, workcell.config)
    assert table is not None
    for p, q in zip(proposals, again, strict=True):
        assert np.array_equal(p.mask, q.mask) and p.score == q.score
        assert p.source == "depth" and p.mask.shape == depth.shape and 0.0 <= p.score <= 1.0
        assert np.array_equal(p.box_xyxy, box_from_mask(p.mask))
        assert p.area_px >= workcell.config.min_area_px
        assert p.points_cam.shape[1] == 3 and np.all(np.isfinite(p.points_cam)) and np.all(p.points_cam[:, 2] > 0)
        # The samples stand on the table: above it (flat objects need only the low-relief
        # height), and no farther from it than the largest object.
        height = table.height_m(p.points_cam.astype(np.float64))
        assert height.min() >= workcell.config.low_relief_min_height_m - 1e-6
        assert height.max() <= workcell.config.max_object_diameter_m
    # Proposals do not overlap.
    overlap = np.sum([p.mask for p in proposals], axis=0)
    assert overlap.max() == 1


def _grid_points(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """(N, 3) back-projected valid pixels, metres, camera frame."""
    v, u = np.nonzero(depth > 0)
    z = depth[v, u].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)


def test_ransac_plane_and_world_plane_agree(workcell: Workcell) -> None:
    for frame in workcell.frames[:2]:
        points = _grid_points(_noisy(frame.depth_m, 1), frame.K)
        fitted = fit_support_plane(points, workcell.config)
        world = world_support_plane(frame.T_world_camera)
        assert fitted is not None and fitted.inlier_fraction > 0.5
        angle_deg = np.degrees(np.arccos(np.clip(fitted.normal @ world.normal, -1, 1)))
        assert angle_deg < 0.5
        assert abs(fitted.offset_m - world.offset_m) < 2e-3  # camera height above the table
        # Plane from the extrinsics instead of RANSAC: same proposals.
        by_ransac = depth_proposals(frame.depth_m, frame.K, workcell.config)
        config = replace(workcell.config, plane_source="world")
        by_world = depth_proposals(frame.depth_m, frame.K, config, T_world_camera=frame.T_world_camera)
        assert len(by_world) == len(by_ransac)
        for p in by_world:
            assert max(mask_iou(p.mask, q.mask) for q in by_ransac) > 0.95


def test_nan_inf_and_zero_depth_regions(workcell: Workcell) -> None:
    frame = workcell.frames[1]
    depth = frame.depth_m.copy()
    depth[:, : WIDTH // 4] = np.nan
    depth[: HEIGHT // 5] = 0.0
    depth[-5:] = -1.0
    depth[HEIGHT // 2, ::7] = np.inf
    proposals = depth_proposals(depth, frame.K, workcell.config)
    untouched = [m for m, v in zip(frame.masks_visib, frame.visib_fracts)
                 if v >= MIN_VISIB_FRACT and not np.any(m & ~np.isfinite(depth)) and not np.any(m & (depth <= 0))
                 and not np.any(m[HEIGHT // 2])]
    for p in proposals:
        assert np.all(np.isfinite(p.points_cam))
    # Objects away from the damaged regions are still found.
    for m in untouched:
        assert max((mask_iou(p.mask, m) for p in proposals), default=0.0) >= MATCH_IOU


def test_all_invalid_depth_gives_no_proposals() -> None:
    K = _K()
    assert depth_proposals(np.zeros((HEIGHT, WIDTH), np.float32), K) == []
    assert depth_proposals(np.full((HEIGHT, WIDTH), np.nan, np.float32), K) == []
    assert depth_proposals(np.full((HEIGHT, WIDTH), 50.0, np.float32), K) == []  # beyond max_depth_m


def _K() -> np.ndarray:
    return np.array([[300.0, 0.0, (WIDTH - 1) / 2], [0.0, 300.0, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]])


def _plane_depth(K: np.ndarray, normal: np.ndarray, offset_m: float) -> np.ndarray:
    """(H, W) float32 depth of the plane ``normal . p + offset_m = 0`` (camera frame), metres."""
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    return (-offset_m / (rays @ normal)).astype(np.float32)


def test_plane_only_depth_gives_no_proposals() -> None:
    K = _K()
    tilt = np.radians(50.0)  # the table seen at 40 degrees elevation
    normal = np.array([0.0, -np.sin(tilt), -np.cos(tilt)])  # toward the camera, table "up"
    depth = _plane_depth(K, normal, 0.9)
    assert depth.min() > 0
    assert depth_proposals(depth, K) == []
    assert depth_proposals(_noisy(depth, 3), K) == []


def _boxes_on_table(K: np.ndarray, boxes: list[tuple[float, float, float, float, float]]) -> np.ndarray:
    """Depth of boxes on a table 1 m below a camera looking straight down (only the tops are seen).

    Args:
        boxes: (x_min, x_max, y_min, y_max, height) metres, camera frame x/y on the table.
    """
    depth = np.full((HEIGHT, WIDTH), 1.0, np.float32)
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    for x0, x1, y0, y1, height in boxes:
        z = 1.0 - height
        x, y = (u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z
        depth[(x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)] = z
    return depth


def test_size_gates() -> None:
    K = _K()
    small = (0.15, 0.25, -0.05, 0.05, 0.08)  # 10 cm cube top
    large = (-0.45, 0.05, -0.15, 0.15, 0.10)  # 50 x 30 cm slab, far larger than any object
    depth = _boxes_on_table(K, [small, large])
    small_mask = _boxes_on_table(K, [small]) < 1.0
    large_mask = _boxes_on_table(K, [large]) < 1.0

    proposals = depth_proposals(depth, K, DepthProposalConfig(min_object_diameter_m=0.05, max_object_diameter_m=0.3))
    assert len(proposals) == 1
    assert mask_iou(proposals[0].mask, small_mask) > 0.9
    # The gate, not the clustering, dropped the slab: with a larger maximum it is proposed too.
    proposals = depth_proposals(depth, K, DepthProposalConfig(min_object_diameter_m=0.05, max_object_diameter_m=0.8))
    assert len(proposals) == 2
    assert max(mask_iou(p.mask, large_mask) for p in proposals) > 0.9
    # The lower gate: the cube (extent diagonal about 0.14 m) is below 0.3 x 0.6 m.
    proposals = depth_proposals(depth, K, DepthProposalConfig(min_object_diameter_m=0.6, max_object_diameter_m=0.8))
    assert len(proposals) == 1 and mask_iou(proposals[0].mask, large_mask) > 0.9


def test_no_plane_warns_and_still_gates(caplog) -> None:
    K = _K()
    # A tiny patch of depth: too few points to hold a plane with 95 % of them.
    depth = np.zeros((HEIGHT, WIDTH), np.float32)
    depth[100:140, 150:190] = 1.0
    depth[110:130, 160:180] = 0.9
    config = DepthProposalConfig(plane_min_inlier_fraction=0.95, min_object_diameter_m=0.02, max_object_diameter_m=0.3)
    with caplog.at_level("WARNING", logger="pose_node.detection.proposals_depth"):
        proposals = depth_proposals(depth, K, config)
    assert "no support plane" in caplog.text
    # Everything is clustered: the two depth levels are two clusters, both within the gates.
    assert len(proposals) == 2


def test_invalid_inputs_raise() -> None:
    K = _K()
    depth = np.ones((HEIGHT, WIDTH), np.float32)
    with pytest.raises(InvalidInputError, match="depth_m"):
        depth_proposals(np.ones((2, HEIGHT, WIDTH), np.float32), K)
    with pytest.raises(InvalidInputError, match="dtype"):
        depth_proposals(np.ones((HEIGHT, WIDTH), np.uint16), K)
    with pytest.raises(InvalidInputError, match="K"):
        depth_proposals(depth, np.eye(4))
    with pytest.raises(InvalidInputError, match="T_world_camera"):
        depth_proposals(depth, K, T_world_camera=np.eye(3))
    with pytest.raises(InvalidInputError, match="plane_source"):
        depth_proposals(depth, K, DepthProposalConfig(plane_source="world"))
    for field, value in [("stride_px", 0), ("plane_source", "floor"), ("max_object_diameter_m", 0.01),
                         ("concave_turn_deg", 0.0), ("split_threshold_scale", 1.0), ("depth_jump_max_slope_deg", 90.0)]:
        with pytest.raises(InvalidInputError, match=f"DepthProposalConfig.{field}"):
            DepthProposalConfig(**{field: value})


def test_proposal_validation_and_helpers() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    box = box_from_mask(mask)
    assert box.tolist() == [3, 2, 9, 5]
    p = Proposal(mask=mask, box_xyxy=box, score=0.5, source="depth", points_cam=np.zeros((4, 3)))
    assert p.area_px == 18 and p.points_cam.dtype == np.float32
    with pytest.raises(ValueError):
        p.mask[0, 0] = True  # stored read-only
    mask[0, 0] = True
    assert not p.mask[0, 0]  # and copied
    with pytest.raises(InvalidInputError, match="box_xyxy"):
        Proposal(mask=mask, box_xyxy=[3, 2, 13, 5], score=0.5, source="depth")
    with pytest.raises(InvalidInputError, match="box_xyxy"):
        Proposal(mask=mask, box_xyxy=[3, 2, 3, 5], score=0.5, source="depth")
    with pytest.raises(InvalidInputError, match="score"):
        Proposal(mask=mask, box_xyxy=box, score=1.5, source="depth")
    with pytest.raises(InvalidInputError, match="source"):
        Proposal(mask=mask, box_xyxy=box, score=0.5, source="lidar")
    with pytest.raises(InvalidInputError, match="points_cam"):
        Proposal(mask=mask, box_xyxy=box, score=0.5, source="rgb", points_cam=np.zeros((4, 2)))
    with pytest.raises(InvalidInputError, match="empty"):
        box_from_mask(np.zeros((4, 4), bool))
    other = np.zeros_like(mask)
    other[2:5, 6:12] = True
    assert mask_iou(p.mask, other) == pytest.approx(9 / 27)
    assert mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0


# --------------------------------------------------------------------------------------------
# Ray-cast tables seen obliquely through a sensor model (z^2 noise, flying pixels at depth
# edges, edge shadows; optional hole blobs): the cases real depth brings.
# --------------------------------------------------------------------------------------------

OBLIQUE_K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])
OBLIQUE_SIZE = (640, 480)
OBLIQUE_GATE = DepthProposalConfig(min_object_diameter_m=0.05, max_object_diameter_m=0.3)


def _table_scene(boxes, *, sag_m_per_m2: float = 0.0, seed: int | None = 0, hole_fraction: float = 0.0):
    """Depth (sensor-like unless ``seed`` is None) and labels of boxes on a table seen at 45
    degrees from 0.85 m (``raycast_table_scene``)."""
    width, height = OBLIQUE_SIZE
    depth, labels = raycast_table_scene(OBLIQUE_K, look_at((0.0, -0.6, 0.6)), width, height, boxes,
                                        table_sag_m_per_m2=sag_m_per_m2)
    if seed is None:
        return depth, labels
    rng = np.random.default_rng(seed)
    depth = simulate_depth_sensor(depth, labels, np.zeros(len(boxes) + 1, bool), np.full(depth.shape, 0.5),
                                  np.ones(depth.shape), rng, DepthSensorConfig())
    if hole_fraction > 0:  # sensor dropouts in blobs of a few pixels
        field = cv2.resize(rng.uniform(0, 1, (height // 6, width // 6)).astype(np.float32), (width, height))
        depth[field < hole_fraction] = 0.0
    return depth, labels


def _best_ious(proposals: list[Proposal], labels: np.ndarray, count: int) -> list[float]:
    return [max((mask_iou(p.mask, labels == k) for p in proposals), default=0.0) for k in range(1, count + 1)]


def test_objects_touching_in_the_image_at_different_depths_are_split() -> None:
    # A low box in front of a taller one 3 cm behind it: in the image the front box covers the
    # lower part of the back box's face, so their silhouettes touch along a whole edge.
    boxes = [(-0.05, 0.05, -0.06, 0.0, 0.08), (-0.04, 0.06, 0.03, 0.09, 0.16)]
    for seed in (None, 1, 2):
        depth, labels = _table_scene(boxes, seed=seed)
        assert np.count_nonzero(labels == 2) > 3000  # both well visible
        proposals = depth_proposals(depth, OBLIQUE_K, OBLIQUE_GATE)
        assert len(proposals) == 2
        assert min(_best_ious(proposals, labels, 2)) > 0.85


def test_a_flat_object_a_few_millimetres_proud_of_the_table_is_found() -> None:
    # A 10 x 6 cm card 4 mm high (half of min_height_above_plane_m) next to a box, noisy depth.
    card = (-0.05, 0.05, -0.2, -0.14, 0.004)
    boxes = [(0.05, 0.12, -0.02, 0.05, 0.06), card]
    for seed in (0, 1, 2):
        depth, labels = _table_scene(boxes, seed=seed)
        proposals = depth_proposals(depth, OBLIQUE_K, OBLIQUE_GATE)
        assert len(proposals) == 2  # the box and the card; no specks of table noise
        assert min(_best_ious(proposals, labels, 2)) > 0.75
    # Without the low-relief pass the card is lost with the table.
    depth, labels = _table_scene(boxes, seed=0)
    flat_off = replace(OBLIQUE_GATE, low_relief_min_height_m=0.0)
    assert _best_ious(depth_proposals(depth, OBLIQUE_K, flat_off), labels, 2)[1] < 0.1


def test_real_sensor_depth_on_a_curved_table_keeps_the_support_surface() -> None:
    # A table whose top rises 1.25 cm at 50 cm from its centre (more than min_height_above_plane_m),
    # pixels lost in blobs (about 5 %), flying pixels and shadows at every depth edge.
    boxes = [(-0.15, -0.07, -0.05, 0.03, 0.10), (0.05, 0.12, -0.02, 0.05, 0.06), (-0.04, 0.04, 0.12, 0.20, 0.15)]
    sag = 0.05
    exact, labels = _table_scene(boxes, sag_m_per_m2=sag, seed=None)
    points = _grid_points(exact, OBLIQUE_K)
    plane = fit_support_plane(points, OBLIQUE_GATE)
    assert plane is not None
    table_points = _grid_points(np.where(labels == 0, exact, 0.0).astype(np.float32), OBLIQUE_K)
    # The best plane leaves parts of this table higher than an object must stand ...
    assert np.abs(plane.height_m(table_points)).max() > OBLIQUE_GATE.min_height_above_plane_m
    # ... the quadratic surface follows it to a millimetre.
    surface = fit_table_surface(points, plane, OBLIQUE_GATE)
    assert surface is not None and np.abs(surface.height_m(table_points)).max() < 1e-3
    for seed in (0, 1):
        depth, labels = _table_scene(boxes, sag_m_per_m2=sag, seed=seed, hole_fraction=0.2)
        assert np.mean(depth[labels > 0] == 0) > 0.03  # the objects lost depth too
        proposals = depth_proposals(depth, OBLIQUE_K, OBLIQUE_GATE)
        assert len(proposals) == 3  # no pieces of table, no object cut by holes
        assert min(_best_ious(proposals, labels, 3)) > 0.8
    # Without the surface model the raised parts of the table come out as clusters.
    flat_table = replace(OBLIQUE_GATE, table_curvature=False)
    assert len(depth_proposals(depth, OBLIQUE_K, flat_table)) > 3


def test_depth_holes_are_filled_from_the_far_side() -> None:
    depth = np.full((40, 40), 1.0, np.float32)
    depth[10:30, 10:30] = 0.8  # a near square
    depth[18:22, 18:22] = 0.0  # a hole inside it
    depth[15:25, 30:33] = 0.0  # a hole at its right edge (a sensor shadow)
    filled, valid = fill_depth_holes(depth, depth > 0, 3)
    assert valid.all()
    assert np.all(filled[18:22, 18:22] == np.float32(0.8))  # inside: the object's own depth
    # Beside the edge (a sensor shadow) each side grows its own depth: no depth in between.
    assert set(np.unique(filled[15:25, 30:33]).tolist()) == {np.float32(0.8), np.float32(1.0)}
    assert np.all(filled[15:25, 32] == np.float32(1.0))
    assert np.array_equal(fill_depth_holes(depth, depth > 0, 0)[0], depth)
