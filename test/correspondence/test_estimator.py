"""The per-detection pose stage: depth lookup, hypothesis agreement, and poses on a rendered workcell."""
import numpy as np
import pytest
import torch

from pose_node.core.crop import crop_camera, crop_intrinsics
from pose_node.core.errors import InvalidInputError
from pose_node.correspondence.estimator import crop_cell_depth, hypothesis_mixture_covariance, inlier_share
from pose_node.correspondence.network import cell_centres_px

S, G = 128, 16


def test_crop_cell_depth_puts_points_on_the_observed_plane():
    K = np.array([[600.0, 0, 319.5], [0, 600.0, 239.5], [0, 0, 1]])
    depth = np.full((480, 640), 0.8)
    depth[:, :40] = np.nan  # no measurement
    outline = np.array([[500.0, 300.0], [600.0, 300.0], [600.0, 420.0], [500.0, 420.0]])  # off-axis
    R_cc, f = crop_camera(K, outline, S, 0.05)
    z = crop_cell_depth(depth, K, R_cc[None], np.array([f]), S, G)[0].numpy()
    assert np.isfinite(z).all()
    uv = cell_centres_px(G, dtype=torch.float64).numpy()
    p_crop = np.concatenate([(uv - (S - 1) / 2) / f, np.ones((len(uv), 1))], 1) * z[:, None]
    p_cam = p_crop @ R_cc.T
    np.testing.assert_allclose(p_cam[:, 2], 0.8, atol=1e-9)
    # A crop looking at the left edge sees the hole: NaN, not a made-up depth.
    left = np.array([[0.0, 200.0], [30.0, 200.0], [30.0, 230.0], [0.0, 230.0]])
    R_left, f_left = crop_camera(K, left, S, 0.05)
    z_left = crop_cell_depth(depth, K, R_left[None], np.array([f_left]), S, G)[0].numpy()
    assert np.isnan(z_left).mean() > 0.5


def test_crop_detections_equals_separate_image_and_mask_crops():
    from pose_node.correspondence.estimator import crop_detections
    from pose_node.correspondence.network import to_grid
    from pose_node.core.crop import box_outline, crop_images

    H, W = 120, 160
    K = np.array([[150.0, 0, 79.5], [0, 150.0, 59.5], [0, 0, 1]])
    torch.manual_seed(1)
    image = torch.rand(1, 3, H, W)
    masks = (torch.rand(3, H, W) > 0.5).float()
    # The last box is small: its crop camera zooms in, so every crop is supersampled.
    cams = [crop_camera(K, box_outline(box), S, 0.05) for box in ((20, 20, 100, 90), (90, 10, 150, 110), (70, 60, 80, 68))]
    R, f = np.stack([c[0] for c in cams]), np.array([c[1] for c in cams])
    crops, grid_masks = crop_detections(image, masks, K, R, f, S, G)
    everything = torch.ones(3, H, W, dtype=torch.bool)
    Kt, Rt, ft = torch.from_numpy(K), torch.from_numpy(R), torch.from_numpy(f)
    expected_crops = crop_images(image, everything, Kt, Rt, ft, S, (0, 0, 0))
    expected_masks = to_grid(crop_images(masks[:, None].expand(-1, 3, -1, -1), everything, Kt, Rt, ft, S, (0, 0, 0))[:, :1], G)
    assert crops.shape == (3, 3, S, S) and crops.is_contiguous() and grid_masks.shape == (3, 1, G, G)
    assert torch.equal(crops, expected_crops) and torch.equal(grid_masks, expected_masks)
    empty_crops, empty_masks = crop_detections(image, masks[:0], K, R[:0], f[:0], S, G)
    assert empty_crops.shape == (0, 3, S, S) and empty_masks.shape == (0, 1, G, G)


def test_inlier_share_counts_weighted_agreement():
    torch.manual_seed(0)
    K = torch.from_numpy(crop_intrinsics(np.array([300.0]), S))
    x3d = torch.randn(1, 100, 3, dtype=torch.float64) * 0.05
    T = torch.eye(4, dtype=torch.float64)[None]
    T[0, 2, 3] = 0.6
    p = x3d + T[:, None, :3, 3]
    x2d = (p[..., :2] / p[..., 2:]) * 300.0 + (S - 1) / 2
    x2d[0, :30] += 10.0  # 30 outliers
    w = torch.ones(1, 100, 2, dtype=torch.float64)
    assert float(inlier_share(x3d, x2d, w, K, T, 2.0)) == pytest.approx(0.7)
    w[0, :30] = 0.0
    assert float(inlier_share(x3d, x2d, w, K, T, 2.0)) == pytest.approx(1.0)



def test_mixture_covariance_widens_by_the_doubt_of_other_hypotheses():
    T = torch.eye(4, dtype=torch.float64).repeat(1, 3, 1, 1)
    T[0, 1, :3, 3] = torch.tensor([0.0, 0.0, 0.1])  # a second solution 10 cm further away
    T[0, 2, :3, 3] = torch.tensor([5.0, 5.0, 5.0])  # an invalid one (share < 0): ignored
    cov = (torch.eye(6, dtype=torch.float64) * 1e-6).repeat(1, 3, 1, 1)
    pick = torch.tensor([0])
    equal = hypothesis_mixture_covariance(T, cov, torch.tensor([[0.5, 0.5, -1.0]], dtype=torch.float64), pick, 10.0)[0]
    assert float(equal[2, 2]) == pytest.approx(1e-6 + 0.5 * 0.1**2)
    assert float(equal[0, 0]) == pytest.approx(1e-6)
    confident = hypothesis_mixture_covariance(T, cov, torch.tensor([[0.9, 0.1, -1.0]], dtype=torch.float64), pick, 10.0)[0]
    assert 1e-6 < float(confident[2, 2]) < float(equal[2, 2])
    only = hypothesis_mixture_covariance(T, cov, torch.tensor([[0.5, 0.5, -1.0]], dtype=torch.float64), pick, float("inf"))[0]
    torch.testing.assert_close(only, cov[0, 0])


def test_a_detection_of_an_unknown_object_is_a_clear_error():
    from pose_node.core.errors import InvalidInputError
    from pose_node.core.types import Camera, Detection, View
    from pose_node.correspondence.backends import TorchBackend
    from pose_node.correspondence.estimator import CorrespondenceConfig, CorrespondenceEstimator
    from pose_node.correspondence.network import CorrespondenceNet

    estimator = CorrespondenceEstimator(TorchBackend(CorrespondenceNet(pretrained_trunk=False)), {}, CorrespondenceConfig(), S)
    K = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
    view = View(camera=Camera(K=K, width=320, height=240), rgb=np.zeros((240, 320, 3), np.uint8))
    mask = np.zeros((240, 320), bool)
    mask[100:140, 100:160] = True
    detection = Detection(object_id=5, view_index=0, score=0.9, box_xyxy=np.array([100.0, 100, 160, 140]), mask=mask,
                          template_indices=np.array([0]))
    with pytest.raises(InvalidInputError, match="object 5: no templates"):
        estimator.estimate_view(view, [detection])
    assert estimator.estimate_view(view, []) == ([], {"correspondence": 0.0, "pnp": 0.0})


def test_templates_are_encoded_in_bounded_batches_with_the_same_result(tmp_path, make_renderer, monkeypatch):
    """One network call per TEMPLATE_ENCODE_BATCH crops (a single call for all of an object's
    templates made ONNX Runtime keep gigabytes); the encodings equal those of a single call."""
    import pose_node.correspondence.estimator as estimator_module
    from pose_node.correspondence.backends import TorchBackend
    from pose_node.correspondence.estimator import CorrespondenceConfig, CorrespondenceEstimator
    from pose_node.correspondence.network import CorrespondenceNet
    from pose_node.detection.detector import Detector, DetectorConfig
    from pose_node.onboarding.procedural import make_procedural_objects

    make_renderer(16, 16)  # skips without headless OpenGL (onboarding renders the templates)
    models = make_procedural_objects(1, 31)
    detector = Detector(models, DetectorConfig(mode="rgbd"), cache_dir=str(tmp_path / "cache"))

    class RecordingBackend(TorchBackend):
        def __init__(self, net):
            super().__init__(net)
            self.batches = []

        def _encode(self, images):
            self.batches.append(images.shape[0])
            return super()._encode(images)

    torch.manual_seed(0)
    net = CorrespondenceNet(pretrained_trunk=False)
    config = CorrespondenceConfig()
    templates = range(6)  # 6 x 8 angles = 48 crops: more than one batch, cheap enough for a test
    n_crops = len(templates) * config.in_plane_rotations
    batch = estimator_module.TEMPLATE_ENCODE_BATCH
    assert batch < n_crops
    chunked_backend = RecordingBackend(net)
    chunked = CorrespondenceEstimator(chunked_backend, detector.templates, config, S)
    chunked.encoded_templates(1, templates)
    assert chunked_backend.batches == [batch] * (n_crops // batch) + ([n_crops % batch] if n_crops % batch else [])

    monkeypatch.setattr(estimator_module, "TEMPLATE_ENCODE_BATCH", n_crops)
    single_backend = RecordingBackend(net)
    single = CorrespondenceEstimator(single_backend, detector.templates, config, S)
    single.encoded_templates(1, templates)
    assert single_backend.batches == [n_crops]
    assert chunked._encoded.keys() == single._encoded.keys() and len(chunked._encoded) == len(templates)
    for key, encoded in chunked._encoded.items():
        torch.testing.assert_close(encoded.descriptors, single._encoded[key].descriptors, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(encoded.xyz_norm, single._encoded[key].xyz_norm)


# -- end to end with the shipped weights --------------------------------------------------------

from pose_node.core.resources import shipped_file  # noqa: E402

WEIGHTS = shipped_file("correspondence_effl0.pt")


@pytest.fixture(scope="module")
def workcell(tmp_path_factory, make_workcell):
    from pose_node.scene.generator import WorkcellConfig
    from pose_node.scene.layout import LayoutConfig

    return make_workcell(WorkcellConfig(out_dir=tmp_path_factory.mktemp("workcell"), num_objects=3, num_scenes=1,
                                        frames_per_scene=1, seed=77, write_bag=False, overwrite=True,
                                        layout=LayoutConfig(num_cameras=2)))


def pose_errors(dataset, mode: str, tmp_path) -> tuple[list[float], list[float], list[np.ndarray]]:
    """Rotation (deg) and translation (m) errors of every estimate against the GT of its object,
    with the world-frame covariances, for every view of the workcell."""
    from pose_node.correspondence.backends import create_backend
    from pose_node.correspondence.estimator import CorrespondenceConfig, CorrespondenceEstimator
    from pose_node.detection.detector import Detector, DetectorConfig

    models = dataset.models()
    detector = Detector(models, DetectorConfig(mode=mode), cache_dir=str(tmp_path / "cache"))
    backend = create_backend("torch", checkpoint=WEIGHTS)
    estimator = CorrespondenceEstimator(backend, detector.templates, CorrespondenceConfig(), backend.config.crop_size_px)
    rot, trans, covs = [], [], []
    scene = dataset.scene_ids()[0]
    for index, im in enumerate(dataset.image_ids(scene)):
        view = dataset.view(scene, im, with_depth=mode == "rgbd")
        detections, _ = detector.detect(view, view_index=index)
        poses, timings = estimator.estimate_view(view, detections)
        assert set(timings) == {"correspondence", "pnp"}
        if index == 0:  # a time budget's override: the configured count changes nothing, fewer still poses all
            same, _ = estimator.estimate_view(view, detections, num_hypotheses=estimator.config.num_hypotheses)
            assert all(np.array_equal(a.T_camera_object, b.T_camera_object) and np.array_equal(a.covariance, b.covariance)
                       for a, b in zip(poses, same))
            one, _ = estimator.estimate_view(view, detections, num_hypotheses=1)
            assert len(one) == len(poses) and sum(p.valid for p in one) >= sum(p.valid for p in poses) - 1
            with pytest.raises(InvalidInputError, match="num_hypotheses"):
                estimator.estimate_view(view, detections, num_hypotheses=0)
        estimates = estimator.to_world(view, poses)
        T_world_camera = np.linalg.inv(dataset.camera(scene, im).T_camera_world)
        gts = [(g.obj_id, T_world_camera @ g.T_camera_object) for g in dataset.gts(scene, im)]
        for e in estimates:
            candidates = [T for o, T in gts if o == e.object_id]
            T_gt = min(candidates, key=lambda T: np.linalg.norm(T[:3, 3] - e.T_world_object[:3, 3]))
            R = e.T_world_object[:3, :3].T @ T_gt[:3, :3]
            rot.append(float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1)))))
            trans.append(float(np.linalg.norm(e.T_world_object[:3, 3] - T_gt[:3, 3])))
            covs.append(e.covariance)
    return rot, trans, covs


def test_rgbd_poses_of_unseen_procedural_objects(workcell, tmp_path):
    rot, trans, covs = pose_errors(workcell, "rgbd", tmp_path)
    assert len(rot) >= 4  # 3 objects x 2 cameras, minus what a camera does not see well
    assert np.median(rot) < 4.0 and np.median(trans) < 0.004
    for cov in covs:
        np.testing.assert_allclose(cov, cov.T, atol=1e-12)
        assert np.linalg.eigvalsh(cov).min() > 0


def test_rgb_poses_of_unseen_procedural_objects(workcell, tmp_path):
    rot, trans, _ = pose_errors(workcell, "rgb", tmp_path)
    assert len(rot) >= 3
    assert np.median(rot) < 10.0 and np.median(trans) < 0.03
