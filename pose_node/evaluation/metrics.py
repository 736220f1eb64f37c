"""BOP pose-error functions (symmetry-aware), following bop_toolkit semantics.

Reference: ``bop_toolkit_lib/pose_error.py``, ``visibility.py``, ``misc.py`` (thodan/bop_toolkit).
Differences are in units only: everything here is in metres (bop_toolkit works in millimetres);
the VSD tolerance ``delta`` is therefore 0.015 m instead of 15 mm, and normalized errors (VSD
with ``normalized_by_diameter``, MSSD / diameter) are unit-free and identical.

Shapes: poses are (..., 4, 4) homogeneous ``T_camera_object`` matrices in metres (any leading batch
shape, shared by ``T_est`` and ``T_gt``); model points (N, 3) metres in the object frame;
symmetries (S, 4, 4) ``T_obj_objsym`` in metres including the identity (as
:attr:`pose_node.core.types.ObjectModel.symmetries`); intrinsics (3, 3) or (..., 3, 3) pixels;
depth images (H, W) metres along the optical axis, 0 = no data.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError, cKDTree

# BOP19 settings (eval_bop19_pose.py).
VSD_TAUS: tuple[float, ...] = tuple(float(v) for v in np.arange(0.05, 0.51, 0.05))  # fraction of diameter
VSD_THRESHOLDS: tuple[float, ...] = VSD_TAUS  # correctness thresholds on the VSD error (unit-free)
VSD_DELTA_M: float = 0.015  # visibility tolerance (BOP: 15 mm; 5 mm for ITODD)
MSSD_THRESHOLDS: tuple[float, ...] = VSD_TAUS  # fraction of diameter
MSPD_THRESHOLDS_PX: tuple[float, ...] = tuple(float(v) for v in np.arange(5, 51, 5))  # px at 640 px width
MSPD_REFERENCE_WIDTH_PX: float = 640.0

#: ``(obj_id, K (3, 3), T_camera_object (4, 4) metres, width, height) -> (H, W) float32 depth,
#: metres, 0 where the object is not rendered``.
DepthRenderer = Callable[[int, np.ndarray, np.ndarray, int, int], np.ndarray]

# Bound on the (S, N, 3) temporaries of the symmetry loop (number of float64 elements).
_MAX_CHUNK_ELEMENTS = 4_000_000


def _batch(T: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    T = np.asarray(T, dtype=np.float64)
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"expected (..., 4, 4) poses, got shape {T.shape}")
    return T.reshape(-1, 4, 4), T.shape[:-2]


def _points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"expected (N, 3) model points with N > 0, got shape {points.shape}")
    return points


def _symmetries(symmetries: np.ndarray | None) -> np.ndarray:
    if symmetries is None:
        return np.eye(4)[None]
    S = np.asarray(symmetries, dtype=np.float64)
    if S.ndim != 3 or S.shape[1:] != (4, 4):
        raise ValueError(f"expected (S, 4, 4) symmetries, got shape {S.shape}")
    return S


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Args: T (..., 4, 4); points (N, 3). Returns (..., N, 3) = R p + t."""
    T = np.asarray(T, dtype=np.float64)
    return points @ np.swapaxes(T[..., :3, :3], -1, -2) + T[..., None, :3, 3]


def project_points(K: np.ndarray, T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pinhole projection as ``bop_toolkit misc.project_pts``.

    Args: K (..., 3, 3); T (..., 4, 4) T_camera_object; points (N, 3). Returns (..., N, 2) pixels.
    """
    p = transform_points(T, points) @ np.swapaxes(np.asarray(K, dtype=np.float64), -1, -2)
    return p[..., :2] / p[..., 2:3]


def _sym_chunks(T_gt: np.ndarray, symmetries: np.ndarray, n_points: int):
    """Yields (s, 4, 4) chunks of ``T_gt @ symmetries`` small enough for (s, 3, N) temporaries."""
    chunk = max(1, _MAX_CHUNK_ELEMENTS // (3 * n_points))
    for s0 in range(0, len(symmetries), chunk):
        yield T_gt @ symmetries[s0:s0 + chunk]


def _transform_cols(T: np.ndarray, pts_t: np.ndarray) -> np.ndarray:
    """Args: T (s, 4, 4); pts_t (3, N). Returns (s, 3, N) with one GEMM (fast for large s)."""
    s = len(T)
    return (T[:, :3, :3].reshape(s * 3, 3) @ pts_t).reshape(s, 3, -1) + T[:, :3, 3:4]


def mssd(T_est: np.ndarray, T_gt: np.ndarray, points: np.ndarray, symmetries: np.ndarray | None = None) -> np.ndarray:
    """Maximum Symmetry-aware Surface Distance: min over symmetries of max vertex distance.

    The distance ``|A p + b|`` is convex in ``p``, so its maximum over the vertices is attained
    on their convex hull; passing only hull vertices (see :func:`hull_points`) gives the same
    value, faster.

    Args:
        T_est, T_gt: (..., 4, 4) T_camera_object, metres.
        points: (N, 3) model vertices, metres.
        symmetries: (S, 4, 4) T_obj_objsym including identity; None = identity only.
    Returns:
        (...) metres.
    """
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    pts_t = _points(points).T.copy()
    S = _symmetries(symmetries)
    out = np.empty(len(Te))
    for b in range(len(Te)):
        p_est = _transform_cols(Te[b:b + 1], pts_t)  # (1, 3, N)
        out[b] = min(
            float(np.sqrt(((p_est - _transform_cols(T, pts_t)) ** 2).sum(1)).max(-1).min())
            for T in _sym_chunks(Tg[b], S, pts_t.shape[1])
        )
    return out.reshape(shape)


def mspd(T_est: np.ndarray, T_gt: np.ndarray, K: np.ndarray, points: np.ndarray,
         symmetries: np.ndarray | None = None) -> np.ndarray:
    """Maximum Symmetry-aware Projection Distance, in pixels of the given image (not rescaled;
    BOP19 multiplies by ``640 / image width`` before thresholding, see :func:`mspd_scale`).

    Args:
        T_est, T_gt: (..., 4, 4) T_camera_object, metres.
        K: (3, 3) intrinsics shared by the batch, pixels.
        points, symmetries: as :func:`mssd` (all vertices: projection is not convex).
    Returns:
        (...) pixels.
    """
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    pts_t = _points(points).T.copy()
    S = _symmetries(symmetries)
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"expected K of shape (3, 3), got {K.shape}")

    def project(T):
        KT = T.copy()
        KT[:, :3, :] = K @ T[:, :3, :]  # K [R | t]
        p = _transform_cols(KT, pts_t)
        return p[:, :2] / p[:, 2:3]

    out = np.empty(len(Te))
    for b in range(len(Te)):
        uv_est = project(Te[b:b + 1])  # (1, 2, N)
        out[b] = min(
            float(np.sqrt(((uv_est - project(T)) ** 2).sum(1)).max(-1).min())
            for T in _sym_chunks(Tg[b], S, pts_t.shape[1])
        )
    return out.reshape(shape)


def hull_points(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of (N, 3) points (all points when the hull is degenerate)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 5:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):  # flat or degenerate point sets
        return points


def mspd_scale(image_width_px: float) -> float:
    """BOP19 factor applied to MSPD errors before thresholding: ``640 / image width``."""
    return MSPD_REFERENCE_WIDTH_PX / float(image_width_px)


def add(T_est: np.ndarray, T_gt: np.ndarray, points: np.ndarray) -> np.ndarray:
    """ADD (Hinterstoisser et al.): mean distance of corresponding vertices.

    Args: T_est, T_gt (..., 4, 4); points (N, 3) metres. Returns (...) metres.
    """
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    pts = _points(points)
    diff = transform_points(Te, pts) - transform_points(Tg, pts)
    return np.sqrt((diff * diff).sum(-1)).mean(-1).reshape(shape)


def add_s(T_est: np.ndarray, T_gt: np.ndarray, points: np.ndarray) -> np.ndarray:
    """ADD-S / ADI: mean distance from each GT-posed vertex to the nearest estimate-posed vertex
    (``bop_toolkit pose_error.adi``; cKDTree nearest neighbour).

    Args: T_est, T_gt (..., 4, 4); points (N, 3) metres. Returns (...) metres.
    """
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    pts = _points(points)
    out = np.empty(len(Te))
    for b in range(len(Te)):
        dists, _ = cKDTree(transform_points(Te[b], pts)).query(transform_points(Tg[b], pts), k=1)
        out[b] = dists.mean()
    return out.reshape(shape)


def rotation_error_deg(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """Geodesic rotation error ``acos((tr(R_est R_gt^T) - 1) / 2)`` in degrees. Returns (...)."""
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    tr = np.einsum("bij,bij->b", Te[:, :3, :3], Tg[:, :3, :3])  # tr(R_e R_g^T)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0))).reshape(shape)


def translation_error_m(T_est: np.ndarray, T_gt: np.ndarray) -> np.ndarray:
    """Euclidean distance of the translations, metres. Returns (...)."""
    Te, shape = _batch(T_est)
    Tg, _ = _batch(T_gt)
    return np.linalg.norm(Te[:, :3, 3] - Tg[:, :3, 3], axis=-1).reshape(shape)


def sphere_projections_overlap(radius_m: float, t1: np.ndarray, t2: np.ndarray) -> bool:
    """Whether the image projections of two spheres overlap (approximation of
    ``bop_toolkit misc.overlapping_sphere_projections``; VSD is 1 when they do not).

    Args: radius_m: sphere radius; t1, t2: (3,) centres in the camera frame, metres.
    """
    t1 = np.asarray(t1, dtype=np.float64)
    t2 = np.asarray(t2, dtype=np.float64)
    if t1[2] == 0 or t2[2] == 0:
        return False
    proj_dist = np.linalg.norm(t1[:2] / t1[2] - t2[:2] / t2[2])
    return bool(proj_dist < radius_m * (1.0 / t1[2] + 1.0 / t2[2]))


def depth_to_distance(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth along z -> distance from the camera centre (``misc.depth_im_to_dist_im_fast``).

    Args: depth (H, W) metres (0 = none); K (3, 3), pixel centres at integer coordinates.
    Returns: (H, W) float64 metres, 0 where the depth is 0.
    """
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    xs = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
    ys = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
    return depth * np.sqrt(1.0 + xs[None, :] ** 2 + ys[:, None] ** 2)


def _visib_mask(d_test: np.ndarray, d_model: np.ndarray, delta_m: float) -> np.ndarray:
    """bop19 mode: visible where the model is rendered and either no scene depth exists or the
    model is not more than ``delta`` behind the scene surface."""
    d_diff = d_model.astype(np.float32) - d_test.astype(np.float32)
    return ((d_diff <= delta_m) | (d_test == 0)) & (d_model > 0)


def estimate_visib_mask_gt(dist_test: np.ndarray, dist_gt: np.ndarray, delta_m: float = VSD_DELTA_M) -> np.ndarray:
    """Visible surface of the model at the GT pose (bop19 mode). Args: distance images (H, W)."""
    return _visib_mask(dist_test, dist_gt, delta_m)


def estimate_visib_mask_est(dist_test: np.ndarray, dist_est: np.ndarray, visib_gt: np.ndarray,
                            delta_m: float = VSD_DELTA_M) -> np.ndarray:
    """Visible surface of the model at the estimated pose: the bop19 test, plus every pixel
    visible at the GT pose where the estimate is rendered (Hodan et al. ECCVW'16, eq. 14)."""
    return _visib_mask(dist_test, dist_est, delta_m) | (visib_gt & (dist_est > 0))


def vsd_from_depths(
    depth_est: np.ndarray,
    depth_gt: np.ndarray,
    depth_test: np.ndarray,
    K: np.ndarray,
    diameter_m: float,
    taus: Sequence[float] = VSD_TAUS,
    delta_m: float = VSD_DELTA_M,
    *,
    normalized_by_diameter: bool = True,
    cost_type: str = "step",
) -> np.ndarray:
    """Visible Surface Discrepancy from rendered depths (``bop_toolkit pose_error.vsd``).

    Args:
        depth_est, depth_gt: (H, W) renders of the model at the estimated / GT pose, metres.
        depth_test: (H, W) the test image's depth, metres, 0 = missing (treated as visible).
        K: (3, 3) intrinsics.
        diameter_m: object diameter, metres.
        taus: misalignment tolerances; fractions of the diameter when ``normalized_by_diameter``,
            else metres.
        delta_m: visibility tolerance, metres.
        cost_type: ``step`` (BOP since 2017) or ``tlinear`` (ECCVW'16).
    Returns:
        (T,) errors in [0, 1], one per tau; all 1 when neither pose has a visible pixel.
    """
    shapes = {np.shape(depth_est), np.shape(depth_gt), np.shape(depth_test)}
    if len(shapes) != 1:
        raise ValueError(f"depth images must share one shape, got {sorted(shapes)}")
    dist_test = depth_to_distance(depth_test, K)
    dist_gt = depth_to_distance(depth_gt, K)
    dist_est = depth_to_distance(depth_est, K)
    visib_gt = estimate_visib_mask_gt(dist_test, dist_gt, delta_m)
    visib_est = estimate_visib_mask_est(dist_test, dist_est, visib_gt, delta_m)
    inter = visib_gt & visib_est
    union_count = int((visib_gt | visib_est).sum())
    if union_count == 0:
        return np.ones(len(taus))
    comp_count = union_count - int(inter.sum())
    dists = np.abs(dist_gt[inter] - dist_est[inter])
    if normalized_by_diameter:
        dists = dists / diameter_m
    errors = []
    for tau in taus:
        if cost_type == "step":
            costs = float((dists >= tau).sum())
        elif cost_type == "tlinear":
            costs = float(np.minimum(dists / tau, 1.0).sum())
        else:
            raise ValueError(f"unknown VSD cost type {cost_type!r}; expected 'step' or 'tlinear'")
        errors.append((costs + comp_count) / float(union_count))
    return np.asarray(errors)


def vsd(
    depth_renderer: DepthRenderer,
    obj_id: int,
    T_est: np.ndarray,
    T_gt: np.ndarray,
    depth_test: np.ndarray,
    K: np.ndarray,
    diameter_m: float,
    taus: Sequence[float] = VSD_TAUS,
    delta_m: float = VSD_DELTA_M,
    *,
    depth_gt: np.ndarray | None = None,
) -> np.ndarray:
    """VSD of one estimate against one GT, rendering the model with ``depth_renderer``.

    As in ``eval_calc_errors.py``, the error is 1 for every tau when the projections of the
    bounding spheres (radius = diameter / 2) at the two poses do not overlap (no render then).

    Args:
        depth_renderer: see :data:`DepthRenderer`.
        T_est, T_gt: (4, 4) T_camera_object, metres.
        depth_test: (H, W) metres; its shape gives the render size.
        depth_gt: optional cached render at ``T_gt``.
    Returns:
        (T,) errors.
    """
    T_est = np.asarray(T_est, dtype=np.float64)
    T_gt = np.asarray(T_gt, dtype=np.float64)
    if not sphere_projections_overlap(0.5 * diameter_m, T_est[:3, 3], T_gt[:3, 3]):
        return np.ones(len(taus))
    h, w = np.shape(depth_test)
    depth_est = depth_renderer(int(obj_id), K, T_est, w, h)
    if depth_gt is None:
        depth_gt = depth_renderer(int(obj_id), K, T_gt, w, h)
    return vsd_from_depths(depth_est, depth_gt, depth_test, K, diameter_m, taus, delta_m)


__all__ = [
    "DepthRenderer", "MSPD_REFERENCE_WIDTH_PX", "MSPD_THRESHOLDS_PX", "MSSD_THRESHOLDS", "VSD_DELTA_M", "VSD_TAUS",
    "VSD_THRESHOLDS", "add", "add_s", "depth_to_distance", "estimate_visib_mask_est", "estimate_visib_mask_gt",
    "hull_points", "mspd", "mspd_scale", "mssd", "project_points", "rotation_error_deg", "sphere_projections_overlap",
    "transform_points", "translation_error_m", "vsd", "vsd_from_depths",
]
