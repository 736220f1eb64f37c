"""The ROS-free data model shared by every pipeline stage.

Plain, typed dataclasses holding numpy arrays (float64 poses, metres). Batched algorithms convert
to torch at their own entry points (:class:`pose_node.core.geometry.Pose`). Each type validates
its shapes on construction and raises :class:`pose_node.core.errors.InvalidInputError` naming the
field and the shape it received.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import invert_rigid


def _check_shape(name: str, array: np.ndarray, shape: tuple[int | None, ...]) -> None:
    if array.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        raise InvalidInputError(f"{name}: expected shape {shape} (None = any), got {array.shape}")


def as_rigid_transform(name: str, T, tol: float = 1e-4) -> np.ndarray:
    """Validate a (4, 4) rigid transform and return it as float64.

    Args:
        name: the field name used in the error message.
        T: array-like (4, 4).
        tol: tolerance on orthonormality and on the last row (unit-free).
    Raises:
        InvalidInputError: wrong shape, NaN/inf, not a rotation (or a reflection), bad last row.
    """
    T = np.asarray(T, dtype=np.float64)
    _check_shape(name, T, (4, 4))
    if not np.all(np.isfinite(T)):
        raise InvalidInputError(f"{name}: contains NaN or inf")
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > tol or np.linalg.det(R) < 0 or np.abs(T[3] - [0, 0, 0, 1]).max() > tol:
        raise InvalidInputError(f"{name}: not a rigid transform (rotation not orthonormal or last row != [0 0 0 1])")
    return T


@dataclass(frozen=True)
class Camera:
    """A calibrated pinhole camera (optical frame: x right, y down, z forward).

    Attributes:
        K: (3, 3) intrinsics, pixels; pixel centres at integer coordinates (OpenCV convention).
        width, height: image size, pixels.
        T_world_camera: (4, 4) pose of the optical frame in the world frame, metres.
        distortion: (D,) OpenCV plumb_bob / rational_polynomial coefficients, or None.
        frame_id: the optical frame name (e.g. ``cam0_color_optical_frame``).
    """

    K: np.ndarray
    width: int
    height: int
    T_world_camera: np.ndarray = field(default_factory=lambda: np.eye(4))
    distortion: np.ndarray | None = None
    frame_id: str = "camera_optical_frame"

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", np.asarray(self.K, dtype=np.float64))
        object.__setattr__(self, "T_world_camera", as_rigid_transform("Camera.T_world_camera", self.T_world_camera))
        _check_shape("Camera.K", self.K, (3, 3))
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise InvalidInputError(f"Camera.K: focal lengths must be positive, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if self.width <= 0 or self.height <= 0:
            raise InvalidInputError(f"Camera: image size must be positive, got {self.width}x{self.height}")
        if self.distortion is not None:
            object.__setattr__(self, "distortion", np.asarray(self.distortion, dtype=np.float64).reshape(-1))

    def project(self, p_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pinhole projection (distortion ignored; images are rectified upstream).

        Args:
            p_world: (N, 3) points, metres, world frame.
        Returns:
            uv (N, 2) pixels and depth (N,) metres along the optical axis.
        """
        T_cam_world = invert_rigid(self.T_world_camera)
        p_cam = p_world @ T_cam_world[:3, :3].T + T_cam_world[:3, 3]
        z = p_cam[:, 2]
        uv = (p_cam @ self.K.T)[:, :2] / np.where(np.abs(z) < 1e-12, 1e-12, z)[:, None]
        return uv, z


@dataclass(frozen=True)
class View:
    """One camera's images at one instant.

    Attributes:
        camera: intrinsics and extrinsics at ``stamp_ns``.
        rgb: (H, W, 3) uint8, RGB order.
        depth: (H, W) float32 metres along z; 0 or NaN where invalid; or None (RGB only).
        stamp_ns: acquisition time from the image header, nanoseconds.
        name: camera name in the configuration (e.g. ``cam0``).
    """

    camera: Camera
    rgb: np.ndarray
    depth: np.ndarray | None = None
    stamp_ns: int = 0
    name: str = "cam0"

    def __post_init__(self) -> None:
        h, w = self.camera.height, self.camera.width
        _check_shape(f"View[{self.name}].rgb", self.rgb, (h, w, 3))
        if self.rgb.dtype != np.uint8:
            raise InvalidInputError(f"View[{self.name}].rgb: expected uint8, got {self.rgb.dtype}")
        if self.depth is not None:
            _check_shape(f"View[{self.name}].depth", self.depth, (h, w))
            if self.depth.dtype != np.float32:
                raise InvalidInputError(f"View[{self.name}].depth: expected float32 metres, got {self.depth.dtype}")


@dataclass(frozen=True)
class MultiViewFrame:
    """Synchronized views of the workcell; ``stamp_ns`` is the reference (earliest image) stamp."""

    views: tuple[View, ...]
    stamp_ns: int
    world_frame: str = "world"

    def __post_init__(self) -> None:
        if not self.views:
            raise InvalidInputError("MultiViewFrame: needs at least one view")
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"MultiViewFrame: duplicate camera names {names}")


@dataclass(frozen=True)
class ObjectModel:
    """A known object, onboarded from its CAD mesh.

    Attributes:
        object_id: integer id (BOP ``obj_id``).
        name: human-readable name, used in TF frame names.
        vertices: (N, 3) float32 metres, object frame.
        faces: (F, 3) int32 vertex indices.
        vertex_colors: (N, 3) uint8 or None.
        uv: (N, 2) float32 texture coordinates (OpenGL convention, v=0 at the image bottom) or None.
        texture: (Ht, Wt, 3) uint8 or None.
        normals: (N, 3) float32 unit vertex normals.
        diameter_m: max distance between two vertices, metres.
        symmetries: (S, 4, 4) discrete symmetry transforms ``T_obj_objsym`` including identity.
        source_units: the units declared for the source file ("mm", "m", ...).
        source_path: where the mesh came from.
    """

    object_id: int
    name: str
    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    diameter_m: float
    vertex_colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    symmetries: np.ndarray = field(default_factory=lambda: np.eye(4)[None])
    source_units: str = "m"
    source_path: str = ""

    def __post_init__(self) -> None:
        _check_shape(f"ObjectModel[{self.name}].vertices", self.vertices, (None, 3))
        _check_shape(f"ObjectModel[{self.name}].faces", self.faces, (None, 3))
        _check_shape(f"ObjectModel[{self.name}].symmetries", self.symmetries, (None, 4, 4))

    @property
    def bbox_min_max(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)


#: Vertex colours spanning fewer levels than this (per channel) count as "no colour" (a grey or
#: constant-colour export of an untextured CAD model).
UNIFORM_COLOUR_LEVELS = 8


def is_untextured(model: ObjectModel) -> bool:
    """Neither a usable texture nor varying vertex colours: the mesh does not say what the object
    looks like (a plain CAD model), so its real colour is unknown."""
    if model.texture is not None and model.uv is not None:
        return False
    colours = model.vertex_colors
    return colours is None or int(np.ptp(np.asarray(colours, np.int32), axis=0).max()) < UNIFORM_COLOUR_LEVELS


@dataclass(frozen=True)
class Detection:
    """A 2D detection of a known object in one view.

    Attributes:
        object_id: which object.
        view_index: index into ``MultiViewFrame.views``.
        score: matching score in [0, 1].
        box_xyxy: (4,) pixels, x_min y_min x_max y_max (exclusive max).
        mask: (H, W) bool, or None.
        template_poses: (K, 4, 4) ``T_camera_object`` priors from the best templates (best first).
        template_indices: (K,) which of the object's onboarded templates gave each prior (the
            correspondence stage matches the crop against these templates).
    """

    object_id: int
    view_index: int
    score: float
    box_xyxy: np.ndarray
    mask: np.ndarray | None = None
    template_poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    template_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class PoseEstimate:
    """A world-frame pose estimate of one object instance.

    Attributes:
        object_id: which object.
        instance_id: stable id of this instance across frames.
        T_world_object: (4, 4) metres.
        covariance: (6, 6) in the ROS convention (x, y, z, rot_x, rot_y, rot_z about the fixed
            world axes; metres and radians; see :mod:`pose_node.core.geometry`).
        score: calibrated probability that the pose is correct, in [0, 1].
        view_indices: the views that support this estimate.
    """

    object_id: int
    instance_id: int
    T_world_object: np.ndarray
    covariance: np.ndarray
    score: float
    view_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        as_rigid_transform("PoseEstimate.T_world_object", self.T_world_object)
        cov = np.asarray(self.covariance)
        _check_shape("PoseEstimate.covariance", cov, (6, 6))
        if not np.allclose(cov, cov.T, atol=1e-12 + 1e-9 * np.abs(cov).max()):
            raise InvalidInputError("PoseEstimate.covariance: not symmetric")
