"""PosePipeline's ROS-free parts: thresholds, instance tracking (symmetric objects too), no rclpy import."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from pose_node.core.types import PoseEstimate
from pose_node.pipeline import InstanceTracker, passes_thresholds
from pose_node.pipeline.config import Thresholds


def _estimate(object_id: int, xyz, std_m: float = 0.001, view: int = 0, score: float = 0.9) -> PoseEstimate:
    T = np.eye(4)
    T[:3, 3] = xyz
    cov = np.diag([std_m**2] * 3 + [1e-4] * 3)
    return PoseEstimate(object_id=object_id, instance_id=0, T_world_object=T, covariance=cov, score=score,
                        view_indices=(view,))


def test_thresholds():
    e = _estimate(1, [0, 0, 0], 0.01, score=0.5)
    assert passes_thresholds(e, Thresholds())
    assert not passes_thresholds(e, Thresholds(pose_score=0.6))
    assert not passes_thresholds(e, Thresholds(max_position_std_m=0.005))
    assert passes_thresholds(e, Thresholds(max_position_std_m=0.02, max_rotation_std_deg=1.0))
    assert not passes_thresholds(e, Thresholds(max_rotation_std_deg=0.5))


S = 10**9  # one second in nanoseconds


def test_tracker_numbers_instances_per_object_and_keeps_them():
    tracker = InstanceTracker(gate_m=0.05, name_reuse_s=2.0)
    a = tracker.assign([_estimate(1, [0, 0, 0]), _estimate(1, [0.3, 0, 0]), _estimate(2, [0, 0, 0])], 0)
    assert [(e.object_id, e.instance_id) for e in a] == [(1, 0), (1, 1), (2, 0)]  # per object, from 0
    b = tracker.assign([_estimate(2, [0.01, 0, 0]), _estimate(1, [0.31, 0, 0]), _estimate(1, [0.0, 0.01, 0])], S // 10)
    assert [e.instance_id for e in b] == [0, 1, 0]
    # Object 1 instance 0 missed for a while (occluded), then seen again at the same place: same name.
    tracker.assign([_estimate(1, [0.31, 0, 0])], S)
    c = tracker.assign([_estimate(1, [0.31, 0, 0]), _estimate(1, [0.0, 0.01, 0])], 2 * S)
    assert [e.instance_id for e in c] == [1, 0]
    # A new instance elsewhere takes the smallest free id of its object only.
    d = tracker.assign([_estimate(1, [0.31, 0, 0]), _estimate(1, [0.0, 0.01, 0]), _estimate(1, [0.0, 0.5, 0])], 2 * S + 1)
    assert [e.instance_id for e in d] == [1, 0, 2]


def test_tracker_reuses_names_after_name_reuse_s_and_after_reset():
    tracker = InstanceTracker(gate_m=0.05, name_reuse_s=1.0)
    tracker.assign([_estimate(1, [0, 0, 0]), _estimate(1, [0.3, 0, 0])], 0)
    # Instance 0 gone for 0.5 s: its name is still reserved; a new object elsewhere gets 2.
    e = tracker.assign([_estimate(1, [0.3, 0, 0]), _estimate(1, [0.0, 0.6, 0])], S // 2)
    assert [x.instance_id for x in e] == [1, 2]
    # Instance 0 gone for more than 1 s: forgotten, its name is free again.
    f = tracker.assign([_estimate(1, [0.3, 0, 0]), _estimate(1, [0.0, 0.6, 0]), _estimate(1, [0.6, 0, 0])], 3 * S // 2)
    assert [x.instance_id for x in f] == [1, 2, 0] and tracker.live_ids(1) == [0, 1, 2]
    tracker.reset()
    assert [x.instance_id for x in tracker.assign([_estimate(1, [0.6, 0, 0])], 2 * S)] == [0]


def test_tracker_names_the_same_objects_the_same_when_time_goes_back():
    """A looping bag: the same physical objects get the same names in every pass."""
    tracker = InstanceTracker(gate_m=0.05)
    scene = [_estimate(2, [0.2, 0, 0]), _estimate(1, [0, 0, 0]), _estimate(1, [0.3, 0, 0])]
    passes = []
    for _ in range(2):
        names = [[(e.object_id, e.instance_id) for e in tracker.assign(scene, k * S // 10)] for k in range(3)]
        passes.append(names)
    assert passes[0] == passes[1] and all(n == passes[0][0] for n in passes[0])


def test_tracker_keeps_the_symmetric_equivalent_closest_to_the_previous_pose():
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # 180 degrees about z: a box's symmetry
    tracker = InstanceTracker(gate_m=0.05, symmetries={1: np.stack([np.eye(4), flip])})
    first = tracker.assign([_estimate(1, [0, 0, 0])], 0)[0]
    flipped = _estimate(1, [0.002, 0, 0])
    flipped = PoseEstimate(1, 0, flipped.T_world_object @ flip, flipped.covariance, 0.9, (0,))
    second = tracker.assign([flipped], S // 10)[0]
    assert second.instance_id == first.instance_id
    np.testing.assert_allclose(second.T_world_object[:3, :3], np.eye(3), atol=1e-12)  # not the flipped equivalent
    np.testing.assert_allclose(second.T_world_object[:3, 3], [0.002, 0, 0])


def test_detection_units_from_the_depth_a_detection_covers():
    from dataclasses import replace as dc_replace

    from pose_node.core.types import Camera, Detection, View
    from pose_node.onboarding.procedural import make_procedural_objects
    from pose_node.pipeline import detection_units

    K = np.array([[500.0, 0, 64], [0, 500.0, 48], [0, 0, 1]])
    depth = np.full((96, 128), 1.2, np.float32)  # the table behind
    mask = np.zeros((96, 128), bool)
    mask[28:68, 44:84] = True  # 40 x 40 px at 0.5 m: an 4 cm x 4 cm face, 8 cm deep
    depth[28:68, 44:84] = np.linspace(0.5, 0.58, 40, dtype=np.float32)[:, None]
    view = View(camera=Camera(K=K, width=128, height=96), rgb=np.zeros((96, 128, 3), np.uint8), depth=depth, name="cam0")
    detection = Detection(object_id=1, view_index=0, score=0.9, box_xyxy=np.array([44, 28, 84, 68]), mask=mask)
    model = make_procedural_objects(1, 0)[0]
    extent = 0.08 * np.sqrt(1.5)  # about the box diagonal the depth shows (0.04, 0.04, 0.08 m, less the tails)
    right = dc_replace(model, diameter_m=0.1, source_units="m")
    ratio, likely = detection_units(right, view, detection)
    assert 0.8 < ratio * extent / 0.1 < 1.3 and likely is None
    # A millimetre mesh declared in centimetres is ten times too large.
    ratio, likely = detection_units(dc_replace(model, diameter_m=1.0, source_units="cm"), view, detection)
    assert likely == "mm" and 8 < ratio < 15
    ratio, likely = detection_units(dc_replace(model, diameter_m=100.0, source_units="m"), view, detection)
    assert likely == "mm"
    assert detection_units(right, View(camera=view.camera, rgb=view.rgb, depth=None, name="rgb"), detection) is None
    assert detection_units(right, view, Detection(object_id=1, view_index=0, score=0.9, box_xyxy=np.zeros(4))) is None


def test_pipeline_imports_without_rclpy():
    code = "import sys; sys.modules['rclpy'] = None; from pose_node.pipeline import PosePipeline"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_min_supporting_views_sets_both_multi_view_checks(monkeypatch):
    """``pipeline.min_supporting_views`` reaches the detector's confirmation and the refinement."""
    from types import SimpleNamespace

    import pose_node.detection.detector as detector_module
    import pose_node.pipeline.estimate as estimate_module
    import pose_node.refinement.fusion as fusion_module
    from pose_node.onboarding.procedural import make_procedural_objects
    from pose_node.pipeline import PosePipeline
    from pose_node.pipeline.config import PipelineConfig

    built = {}

    def stage(name):
        def make(*args, **kwargs):
            config = args[1] if len(args) > 1 else kwargs.get("config")
            built[name] = config
            return SimpleNamespace(config=config, templates={})
        return make

    monkeypatch.setattr(estimate_module, "check_weights", lambda config: None)
    monkeypatch.setattr(estimate_module, "build_estimator",
                        lambda *a, **k: SimpleNamespace(config=SimpleNamespace(num_hypotheses=3)))
    monkeypatch.setattr(detector_module, "Detector", stage("detector"))
    monkeypatch.setattr(fusion_module, "MultiViewFusion", stage("fusion"))
    models = make_procedural_objects(1, seed=3, target_faces=300)
    for views in (1, 3):
        PosePipeline(models, PipelineConfig(min_supporting_views=views))
        assert built["detector"].multiview.min_views == views
        assert built["fusion"].refinement.min_supporting_views == views
