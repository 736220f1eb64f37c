"""Metric-size verification: objects a proposal cannot be by its size are ruled out.

Scenes are ray-cast boxes on a table seen at 45 degrees through the depth sensor model
(:func:`pose_node.scene.sensor_model.simulate_depth_sensor`), proposed by the depth proposals,
then measured (:func:`proposal_geometry`) and checked against two known objects: a flat box
lying on the table (11 x 8 x 1.8 cm, like a boxed tool) and a long thin one (21.6 x 3.4 x 3.4 cm,
like a marker).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from helpers.scene import box_model, look_at, raycast_table_scene
from pose_node.core.errors import InvalidInputError
from pose_node.detection.proposal_types import Proposal, box_from_mask, mask_iou
from pose_node.detection.proposals_depth import DepthProposalConfig, depth_proposals
from pose_node.detection.verification import (
    ObjectSize,
    VerificationConfig,
    feasible_objects,
    object_size,
    proposal_geometry,
)
from pose_node.scene.sensor_model import DepthSensorConfig, simulate_depth_sensor

K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])
WIDTH, HEIGHT = 640, 480
FLAT = box_model((0.111, 0.079, 0.018), object_id=1)
LONG = box_model((0.216, 0.034, 0.034), object_id=2)
GATE = DepthProposalConfig(min_object_diameter_m=0.03, max_object_diameter_m=0.3)
CONFIG = VerificationConfig()


def _scene(boxes, seed: int):
    depth, labels = raycast_table_scene(K, look_at((0.0, -0.6, 0.6)), WIDTH, HEIGHT, boxes)
    depth = simulate_depth_sensor(depth, labels, np.zeros(len(boxes) + 1, bool), np.full(depth.shape, 0.5),
                                  np.ones(depth.shape), np.random.default_rng(seed), DepthSensorConfig())
    return depth, labels


def _feasible_by_box(boxes, seed: int) -> tuple[np.ndarray, list]:
    """(B, 2) feasibility of each box's best proposal for (FLAT, LONG), and the geometries."""
    depth, labels = _scene(boxes, seed)
    proposals = depth_proposals(depth, K, GATE)
    best = []
    for k in range(1, len(boxes) + 1):
        ious = [mask_iou(p.mask, labels == k) for p in proposals]
        assert max(ious) > 0.7, f"box {k} was not proposed"
        best.append(proposals[int(np.argmax(ious))])
    geometries = [proposal_geometry(p, depth, K, CONFIG) for p in best]
    return feasible_objects(geometries, [object_size(FLAT), object_size(LONG)], CONFIG), geometries


def test_object_size_is_the_oriented_box():
    size = object_size(FLAT)
    assert size.box_extents_m == pytest.approx([0.111, 0.079, 0.018], abs=1e-6)
    assert size.diameter_m == pytest.approx(np.linalg.norm([0.111, 0.079, 0.018]))


@pytest.mark.parametrize("seed", [0, 1])
def test_distractor_primitives_are_rejected_and_instances_kept(seed):
    boxes = [
        (-0.16, -0.05, -0.12, -0.041, 0.018),  # the flat object, lying
        (0.03, 0.14, -0.12, -0.041, 0.018),    # a second instance of it
        (-0.02, 0.02, 0.05, 0.09, 0.04),       # a 4 cm cube distractor
        (0.10, 0.18, 0.08, 0.16, 0.08),        # an 8 cm cube distractor
        (-0.20, 0.016, 0.15, 0.184, 0.034),    # the long object, lying
    ]
    feasible, geometries = _feasible_by_box(boxes, seed)
    assert all(g is not None and g.unoccluded for g in geometries)  # nothing hides anything here
    assert feasible[0].tolist() == [True, False] and feasible[1].tolist() == [True, False]  # both instances
    assert feasible[2].tolist() == [False, False]  # too small and too tall for the flat box, too short for the long one
    assert feasible[3].tolist() == [False, False]  # far too thick for either
    assert feasible[4].tolist() == [False, True]


def test_an_occluded_piece_is_not_rejected_for_being_small():
    # The flat object behind a tall box: only a 3 cm strip of it shows beside the box.
    boxes = [(-0.10, 0.08, -0.06, 0.0, 0.12), (0.0, 0.111, 0.0, 0.079, 0.018)]
    depth, labels = _scene(boxes, 0)
    visible = labels == 2
    proposals = depth_proposals(depth, K, GATE)
    piece = max(proposals, key=lambda p: mask_iou(p.mask, visible))
    assert mask_iou(piece.mask, visible) > 0.6
    geometry = proposal_geometry(piece, depth, K, CONFIG)
    assert geometry is not None and not geometry.unoccluded
    assert feasible_objects([geometry], [object_size(FLAT)], CONFIG)[0, 0]
    # The same piece with nothing around it would be too small to be the flat object.
    alone = replace(geometry, unoccluded=True)
    assert not feasible_objects([alone], [object_size(FLAT)], CONFIG)[0, 0]


def test_unverifiable_proposals_and_disabled_verification_pass_every_object():
    sizes = [object_size(FLAT), object_size(LONG)]
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    rgb_only = Proposal(mask, box_from_mask(mask), 0.5, "rgb")
    assert proposal_geometry(rgb_only, np.ones((10, 10), np.float32), K, CONFIG) is None
    assert feasible_objects([None], sizes, CONFIG).all()
    depth, _ = _scene([(-0.02, 0.02, 0.05, 0.09, 0.04)], 0)
    cube = depth_proposals(depth, K, GATE)
    geometry = proposal_geometry(cube[0], depth, K, CONFIG)
    assert not feasible_objects([geometry], sizes, CONFIG).any()
    assert feasible_objects([geometry], sizes, VerificationConfig(enabled=False)).all()
    assert feasible_objects([], sizes, CONFIG).shape == (0, 2)
    assert feasible_objects([geometry], [], CONFIG).shape == (1, 0)


def test_invalid_settings_raise():
    for field, value in [("max_diameter_scale", 0.0), ("ring_outer_px", 1), ("min_free_fraction", 1.5), ("tolerance_m", -1.0)]:
        with pytest.raises(InvalidInputError, match=f"VerificationConfig.{field}"):
            VerificationConfig(**{field: value})
    with pytest.raises(InvalidInputError, match="support_plane_cam"):
        mask = np.ones((4, 4), bool)
        Proposal(mask, box_from_mask(mask), 0.5, "depth", support_plane_cam=np.array([0.0, 0.0, 2.0, 1.0]))
    assert isinstance(object_size(LONG), ObjectSize)
