"""End-to-end checks of generated workcells, reading only the written files back.

The acceptance test of the generator: GT models projected into every image with an independent
method (OpenCV projection of the PLY vertices and polygon filling of the triangles) must match the
written unoccluded masks (IoU > 0.95).
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh
from rosbags.rosbag2 import Reader

from pose_node.core.geometry import invert_rigid
from pose_node.datasets.bop import BopDataset, read_targets
from pose_node.scene.bag_writer import camera_topics, typestore
from pose_node.scene.cli import main as pose_scene
from pose_node.scene.generator import WorkcellConfig, cameras_from_scene_world, frame_stamp_ns, generate_workcell, read_scene_world
from pose_node.scene.layout import LayoutConfig

WIDTH, HEIGHT = 320, 240
NUM_CAMERAS = 3
SUPERSAMPLING = 4  # silhouettes are filled at 4x resolution and reduced by pixel coverage >= 1/2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    config = WorkcellConfig(
        out_dir=tmp_path_factory.mktemp("workcell"), num_objects=3, max_instances_per_object=2, num_scenes=2,
        frames_per_scene=2, seed=3, layout=LayoutConfig(num_cameras=NUM_CAMERAS, width_px=WIDTH, height_px=HEIGHT),
    )
    return generate_workcell(config)


@pytest.fixture(scope="module")
def dataset_16uc1(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("workcell16") / "out"
    rc = pose_scene(["--out", str(out), "--num-objects", "2", "--cameras", "2", "--frames-per-scene", "2",
                     "--width", "160", "--height", "120", "--depth-encoding", "16UC1", "--depth-noise", "--camera-jitter-ms", "2",
                     "--seed", "5"])
    assert rc == 0
    return out


def _ply_mm(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.load(path, process=False)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)


def _project_silhouette(vertices_mm, faces, R, t_mm, K, width, height) -> np.ndarray:
    """Independent silhouette: cv2.projectPoints + polygon filling of every triangle (supersampled)."""
    uv, _ = cv2.projectPoints(vertices_mm, cv2.Rodrigues(R)[0], t_mm, K, None)
    uv = uv.reshape(-1, 2)
    s = SUPERSAMPLING
    # Pixel (i, j) covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]; sub-pixel centres at (k + 0.5) / s - 0.5.
    fine_uv = (uv + 0.5) * s - 0.5
    canvas = np.zeros((height * s, width * s), np.uint8)
    bits = 4
    # One fill per triangle: a single fillPoly call over overlapping polygons cancels overlaps.
    for triangle in np.rint(fine_uv[faces] * (1 << bits)).astype(np.int32):
        cv2.fillConvexPoly(canvas, triangle, 1, lineType=cv2.LINE_8, shift=bits)
    coverage = canvas.reshape(height, s, width, s).mean((1, 3))
    return coverage >= 0.5


def test_projected_models_match_masks(dataset):
    ds = BopDataset(dataset)
    models = {int(p.stem.split("_")[1]): _ply_mm(p) for p in sorted((dataset / "models").glob("obj_*.ply"))}
    checked = 0
    for scene_id in ds.scene_ids():
        for im_id in ds.image_ids(scene_id):
            camera = ds.camera(scene_id, im_id)
            for gt_index, gt in enumerate(ds.gts(scene_id, im_id)):
                vertices, faces = models[gt.obj_id]
                T = gt.T_camera_object
                projected = _project_silhouette(vertices, faces, T[:3, :3], T[:3, 3] * 1000.0, camera.K, camera.width, camera.height)
                mask = ds.mask(scene_id, im_id, gt_index)
                union = (projected | mask).sum()
                if mask.sum() < 50:  # a sliver at the image border: compare pixel counts only
                    assert abs(int(projected.sum()) - int(mask.sum())) <= 20
                    continue
                iou = (projected & mask).sum() / union
                assert iou > 0.95, f"scene {scene_id} image {im_id} gt {gt_index} (obj {gt.obj_id}): IoU {iou:.3f}"
                assert np.all(ds.mask_visib(scene_id, im_id, gt_index) <= mask)
                checked += 1
    assert checked >= 2 * 2 * NUM_CAMERAS * 3 * 0.8


def test_world_ground_truth_is_consistent(dataset):
    ds = BopDataset(dataset)
    world = read_scene_world(dataset / "scene_world.json")
    assert [c["frame_id"] for c in world["cameras"]] == [f"cam{i}_color_optical_frame" for i in range(NUM_CAMERAS)]
    assert len(world["scenes"]) == 2 and {o["obj_id"] for o in world["objects"]} == {1, 2, 3}
    cameras = cameras_from_scene_world(world)
    duplicates = 0
    for scene in world["scenes"]:
        scene_id = scene["scene_id"]
        instances = scene["instances"]
        duplicates += len(instances) - len({i["obj_id"] for i in instances})
        assert [f["im_ids"] for f in scene["frames"]] == [[f * NUM_CAMERAS + c for c in range(NUM_CAMERAS)] for f in range(2)]
        for frame in scene["frames"]:
            for cam_index, im_id in enumerate(frame["im_ids"]):
                camera = ds.camera(scene_id, im_id)
                np.testing.assert_allclose(camera.K, cameras[cam_index].K, atol=1e-9)
                np.testing.assert_allclose(camera.T_world_camera, cameras[cam_index].T_world_camera, atol=1e-9)
                assert (camera.width, camera.height) == (cameras[cam_index].width, cameras[cam_index].height)
                gts = ds.gts(scene_id, im_id)
                assert [g.obj_id for g in gts] == [i["obj_id"] for i in instances]
                for gt, instance in zip(gts, instances):
                    np.testing.assert_allclose(camera.T_camera_world @ instance["T_world_object"], gt.T_camera_object, atol=1e-9)
        for instance in instances:
            T = instance["T_world_object"]
            vertices, _ = _ply_mm(dataset / "models" / f"obj_{instance['obj_id']:06d}.ply")
            z = (vertices / 1000.0) @ T[:3, :3].T[:, 2] + T[2, 3]
            assert abs(z.min()) < 1e-6  # resting on the table top
    assert duplicates >= 1, "the test seed should place several instances of one object"


def test_depth_matches_rerender(dataset):
    from pose_node.render.renderer import Renderer

    ds = BopDataset(dataset)
    models = {m.object_id: m for m in ds.models()}
    renderer = Renderer(WIDTH, HEIGHT)
    handles = {obj_id: renderer.add_object(m) for obj_id, m in models.items()}
    for scene_id in ds.scene_ids():
        im_ids = ds.image_ids(scene_id)[:NUM_CAMERAS]
        cameras = [ds.camera(scene_id, i) for i in im_ids]
        gts = [ds.gts(scene_id, i) for i in im_ids]
        out = renderer.render(np.stack([c.K for c in cameras]), np.stack([[g.T_camera_object for g in view] for view in gts]),
                              [handles[g.obj_id] for g in gts[0]], outputs=("depth",))
        for v, im_id in enumerate(im_ids):
            written = ds.depth_m(scene_id, im_id)
            assert written.dtype == np.float32 and written.shape == (HEIGHT, WIDTH)
            for gt_index in range(len(gts[v])):
                visible = ds.mask_visib(scene_id, im_id, gt_index)
                if visible.any():
                    error = np.abs(written[visible] - out.depth[v][visible])
                    assert error.max() < 1.5e-3, f"scene {scene_id} image {im_id} gt {gt_index}: {error.max() * 1000:.2f} mm"
            # The table is in the depth too: pixels with no object have depth where the table is seen.
            assert (written > 0).mean() > 0.3


def test_gt_info_and_targets(dataset):
    ds = BopDataset(dataset)
    bop19 = read_targets(dataset / "test_targets_bop19.json")
    multiview = read_targets(dataset / "test_targets_multiview.json")
    expected_bop19, expected_multiview = set(), set()
    for scene_id in ds.scene_ids():
        for frame in range(2):
            im_ids = tuple(frame * NUM_CAMERAS + c for c in range(NUM_CAMERAS))
            seen: dict[int, set[int]] = {}
            for im_id in im_ids:
                counts: dict[int, int] = {}
                for gt_index, (gt, info) in enumerate(zip(ds.gts(scene_id, im_id), ds.gt_infos(scene_id, im_id))):
                    visib = ds.mask_visib(scene_id, im_id, gt_index).sum()
                    assert info.px_count_visib == visib
                    assert info.px_count_all >= ds.mask(scene_id, im_id, gt_index).sum()
                    assert info.visib_fract == pytest.approx(visib / max(info.px_count_all, 1))
                    if info.visib_fract >= 0.1:
                        counts[gt.obj_id] = counts.get(gt.obj_id, 0) + 1
                        seen.setdefault(gt.obj_id, set()).add(gt_index)
                expected_bop19 |= {(scene_id, (im_id,), obj_id, n) for obj_id, n in counts.items()}
            expected_multiview |= {(scene_id, im_ids, obj_id, len(g)) for obj_id, g in seen.items()}
    assert {(t.scene_id, t.im_ids, t.obj_id, t.inst_count) for t in bop19} == expected_bop19
    assert {(t.scene_id, t.im_ids, t.obj_id, t.inst_count) for t in multiview} == expected_multiview
    assert len(multiview) >= 2 * 2 * 2  # most objects are visible in every frame


def _read_bag(path: Path) -> dict:
    store = typestore()
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append((timestamp, store.deserialize_cdr(raw, connection.msgtype)))
    return out


def _stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _check_bag(root: Path, encoding: str, num_cameras: int, jittered: bool) -> None:
    ds = BopDataset(root)
    world = read_scene_world(root / "scene_world.json")
    config = world["config"]
    msgs = _read_bag(root / "bag")
    names = [c["name"] for c in world["cameras"]]
    assert set(msgs) == {"/tf_static", "/clock"} | {t for n in names for t in camera_topics(n).values()}
    frames = [(scene["scene_id"], frame) for scene in world["scenes"] for frame in scene["frames"]]
    (tf_stamp, tf), = msgs["/tf_static"]
    assert tf_stamp == min(frames[0][1]["camera_stamps_ns"]) == _stamp(tf.transforms[0].header)
    clock = [t for t, _ in msgs["/clock"]]
    assert clock == sorted(clock) and clock[0] <= tf_stamp and len(clock) >= len(frames)
    for cam_index, name in enumerate(names):
        topics = camera_topics(name)
        for topic in topics.values():
            assert len(msgs[topic]) == len(frames)
        transform = next(t for t in tf.transforms if t.child_frame_id == f"{name}_color_optical_frame")
        assert transform.header.frame_id == "world"
        for k, (scene_id, frame) in enumerate(frames):
            im_id = frame["im_ids"][cam_index]
            camera = ds.camera(scene_id, im_id)
            stamp = frame["camera_stamps_ns"][cam_index]
            scene_index, frame_index = scene_id, frame["frame_index"]
            nominal = frame_stamp_ns(WorkcellConfig(out_dir=".", frames_per_scene=config["frames_per_scene"]), scene_index, frame_index)
            assert frame["stamp_ns"] == nominal
            assert (abs(stamp - nominal) <= 2_000_000) if jittered else (stamp == nominal)
            timestamp, image = msgs[topics["color"]][k]
            assert timestamp == _stamp(image.header) == stamp and image.encoding == "rgb8"
            assert np.array_equal(image.data.reshape(camera.height, camera.width, 3), ds.rgb(scene_id, im_id))
            _, info = msgs[topics["color_info"]][k]
            np.testing.assert_allclose(info.k.reshape(3, 3), camera.K)
            assert info.header.frame_id == image.header.frame_id == transform.child_frame_id
            _, depth = msgs[topics["depth"]][k]
            assert depth.encoding == encoding and _stamp(depth.header) == stamp and depth.header.frame_id == image.header.frame_id
            if encoding == "32FC1":
                depth_m = depth.data.view("<f4").reshape(camera.height, camera.width)
            else:
                depth_m = depth.data.view("<u2").reshape(camera.height, camera.width) / 1000.0
            bop_depth = ds.depth_m(scene_id, im_id)
            assert np.array_equal(depth_m > 0, bop_depth > 0)
            np.testing.assert_allclose(depth_m, bop_depth, atol=0.5e-3 + 0.05e-3 + 1e-6)
            # tf_static carries T_world_camera = inv(T_camera_world) of scene_camera.json.
            q = transform.transform.rotation
            R = trimesh.transformations.quaternion_matrix([q.w, q.x, q.y, q.z])[:3, :3]
            T_world_camera = invert_rigid(camera.T_camera_world)
            np.testing.assert_allclose(R, T_world_camera[:3, :3], atol=1e-9)
            tr = transform.transform.translation
            np.testing.assert_allclose([tr.x, tr.y, tr.z], T_world_camera[:3, 3], atol=1e-9)
    # Frames are 10 Hz apart within a scene.
    stamps = [f["stamp_ns"] for _, f in frames]
    assert stamps[1] - stamps[0] == 100_000_000


def test_bag_32fc1(dataset):
    _check_bag(dataset, "32FC1", NUM_CAMERAS, jittered=False)


def test_bag_16uc1_with_noise_and_jitter(dataset_16uc1):
    _check_bag(dataset_16uc1, "16UC1", 2, jittered=True)
    ds = BopDataset(dataset_16uc1)
    depth = ds.depth_m(0, 0)
    assert (depth == 0).mean() > 0.005  # holes


def test_cli_refuses_non_empty_output(dataset_16uc1, capsys):
    assert pose_scene(["--out", str(dataset_16uc1), "--no-bag"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert pose_scene(["--out", str(dataset_16uc1.parent / "x"), "--objects", str(dataset_16uc1)]) == 2
    assert "models_info.json" in capsys.readouterr().err


def test_bop_models_source_and_determinism(tmp_path, dataset_16uc1):
    """A BOP models directory as source (here the one just written); the same seed gives the same data."""
    runs = []
    for name in ("a", "b"):
        config = WorkcellConfig(out_dir=tmp_path / name, objects=str(dataset_16uc1 / "models"), num_objects=2, frames_per_scene=1,
                                write_bag=False, seed=11, layout=LayoutConfig(num_cameras=2, width_px=96, height_px=72))
        runs.append(generate_workcell(config))
    a, b = (json.loads((r / "scene_world.json").read_text()) for r in runs)
    a.pop("config"), b.pop("config")
    assert a == b
    image = Path("test") / "000000" / "rgb" / "000000.png"
    assert (runs[0] / image).read_bytes() == (runs[1] / image).read_bytes()
    assert not (runs[0] / "bag").exists()


def test_overwrite_replaces_only_generated_outputs(tmp_path):
    args = ["--out", str(tmp_path), "--num-objects", "1", "--cameras", "1", "--frames-per-scene", "1", "--width", "64", "--height", "48"]
    (tmp_path / "notes.txt").write_text("keep me")
    assert pose_scene(args) == 2  # not empty
    assert pose_scene(args + ["--overwrite", "--no-bag"]) == 0
    assert pose_scene(args + ["--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "bag").is_dir() and (tmp_path / "models" / "models_info.json").is_file()
    assert sorted(p.name for p in (tmp_path / "test" / "000000" / "rgb").iterdir()) == ["000000.png"]


def test_bbox_obj_covers_the_whole_silhouette_as_in_bop(dataset):
    """bbox_obj is the box of the full silhouette (beyond the image border when cut, as BOP's
    calc_gt_info renders it); it contains the visible box; in-image silhouettes match exactly."""
    ds = BopDataset(dataset)
    for scene_id in ds.scene_ids():
        for im_id in ds.image_ids(scene_id):
            for gt_index, info in enumerate(ds.gt_infos(scene_id, im_id)):
                if info.px_count_visib == 0:
                    continue
                x, y, w, h = info.bbox_obj
                vx, vy, vw, vh = info.bbox_visib
                assert x <= vx and y <= vy and x + w >= vx + vw and y + h >= vy + vh
                ys, xs = np.nonzero(ds.mask(scene_id, im_id, gt_index))
                if info.px_count_all == len(xs):  # entirely inside the image
                    np.testing.assert_array_equal(info.bbox_obj, [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()])
                else:
                    assert x < 0 or y < 0 or x + w >= WIDTH or y + h >= HEIGHT
