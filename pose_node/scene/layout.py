"""Workcell layout: a table at z = 0 and calibrated cameras looking at the object cluster.

World frame (REP 103): x forward, y left, z up; the table top is the plane z = 0 and its centre is
the world origin. Cameras are REP 103 optical frames (x right, y down, z forward) named
``<cam>_color_optical_frame``; their poses are ``T_world_camera`` (metres).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import invert_rigid
from pose_node.core.types import Camera, ObjectModel
from pose_node.render.viewpoints import look_at_T_camera_object

# The focal-length range below is specified for this image width; other widths scale it.
REFERENCE_WIDTH_PX = 640


@dataclass(frozen=True)
class LayoutConfig:
    """Table size and camera placement ranges.

    Attributes:
        num_cameras: 1..8 (a workcell has 2-6).
        width_px, height_px: image size of every camera.
        fx_range_px: focal length range for a ``REFERENCE_WIDTH_PX``-wide image (scaled with width).
        aspect_jitter: fy = fx * (1 + U(-a, a)).
        principal_point_jitter_frac: cx, cy = image centre + U(-j, j) * (width, height).
        distance_range_m: distance from the optical centre to the look-at point.
        elevation_range_deg: angle of the viewing ray above the table plane.
        azimuth_jitter_frac: azimuths are evenly spread, each jittered by U(-j, j) * (360 / C).
        look_at_jitter_m: the look-at point is the cluster centre plus U(-j, j) per axis.
        roll_jitter_deg: rotation about the optical axis, U(-r, r).
        table_size_m: (x, y) extent of the table top.
        table_thickness_m: the table is a box below z = 0.
    """

    num_cameras: int = 3
    width_px: int = 640
    height_px: int = 480
    fx_range_px: tuple[float, float] = (500.0, 900.0)
    aspect_jitter: float = 0.01
    principal_point_jitter_frac: float = 0.02
    distance_range_m: tuple[float, float] = (0.5, 1.2)
    elevation_range_deg: tuple[float, float] = (25.0, 70.0)
    azimuth_jitter_frac: float = 0.3
    look_at_jitter_m: float = 0.02
    roll_jitter_deg: float = 3.0
    table_size_m: tuple[float, float] = (1.2, 0.9)
    table_thickness_m: float = 0.04

    def __post_init__(self) -> None:
        if not 1 <= self.num_cameras <= 8:
            raise InvalidInputError(f"LayoutConfig.num_cameras: expected 1..8, got {self.num_cameras}")
        if self.width_px <= 0 or self.height_px <= 0:
            raise InvalidInputError(f"LayoutConfig: image size must be positive, got {self.width_px}x{self.height_px}")
        for name in ("fx_range_px", "distance_range_m", "elevation_range_deg"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise InvalidInputError(f"LayoutConfig.{name}: expected 0 < low <= high, got {(lo, hi)}")
        if self.elevation_range_deg[1] >= 90.0:
            raise InvalidInputError(f"LayoutConfig.elevation_range_deg: must stay below 90, got {self.elevation_range_deg}")


@dataclass(frozen=True)
class WorkcellLayout:
    """The fixed part of a workcell: cameras (with names) and the table geometry."""

    cameras: tuple[Camera, ...]
    camera_names: tuple[str, ...]
    table_size_m: tuple[float, float]
    table_thickness_m: float


def optical_frame_name(camera_name: str) -> str:
    return f"{camera_name}_color_optical_frame"


def look_at(eye_world: np.ndarray, target_world: np.ndarray, up_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_camera`` of an optical frame at ``eye`` whose z axis points at ``target``.

    The image x axis (right) is horizontal and y (down) points downward in the world.

    Args:
        eye_world, target_world: (3,) metres. up_world: (3,) not parallel to the viewing ray.
    Returns:
        (4, 4) rigid transform.
    Raises:
        InvalidInputError: the viewing direction is parallel to ``up_world`` (the camera roll
            would be arbitrary; a workcell layout never needs it).
    """
    eye = np.asarray(eye_world, float)
    direction = np.asarray(target_world, float) - eye
    if np.linalg.norm(np.cross(direction, up_world)) < 1e-9 * max(np.linalg.norm(direction), 1e-12):
        raise InvalidInputError("look_at: viewing direction is parallel to the up vector")
    return invert_rigid(look_at_T_camera_object(eye[None], target_world, up_world)[0])


def _rot_z(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def sample_intrinsics(rng: np.random.Generator, config: LayoutConfig) -> np.ndarray:
    """(3, 3) pinhole K with focal length and principal point drawn from the config ranges."""
    scale = config.width_px / REFERENCE_WIDTH_PX
    fx = rng.uniform(*config.fx_range_px) * scale
    fy = fx * (1.0 + rng.uniform(-config.aspect_jitter, config.aspect_jitter))
    j = config.principal_point_jitter_frac
    cx = (config.width_px - 1) / 2.0 + rng.uniform(-j, j) * config.width_px
    cy = (config.height_px - 1) / 2.0 + rng.uniform(-j, j) * config.height_px
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def sample_layout(rng: np.random.Generator, config: LayoutConfig, look_at_world: np.ndarray | None = None) -> WorkcellLayout:
    """Cameras spread in azimuth around the look-at point (default: table centre, 5 cm up).

    Args:
        rng: seeded generator (the only source of randomness).
        config: ranges.
        look_at_world: (3,) metres, the point the cameras aim at (e.g. the object cluster centre).
    """
    centre = np.array([0.0, 0.0, 0.05]) if look_at_world is None else np.asarray(look_at_world, float)
    n = config.num_cameras
    base = rng.uniform(0.0, 2.0 * np.pi)
    step = 2.0 * np.pi / n
    cameras, names = [], []
    for i in range(n):
        azimuth = base + i * step + rng.uniform(-1.0, 1.0) * config.azimuth_jitter_frac * step
        elevation = np.deg2rad(rng.uniform(*config.elevation_range_deg))
        distance = rng.uniform(*config.distance_range_m)
        target = centre + rng.uniform(-config.look_at_jitter_m, config.look_at_jitter_m, 3)
        direction = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
        T_world_camera = look_at(target + distance * direction, target)
        roll = np.deg2rad(rng.uniform(-config.roll_jitter_deg, config.roll_jitter_deg))
        T_world_camera[:3, :3] = T_world_camera[:3, :3] @ _rot_z(roll)
        name = f"cam{i}"
        names.append(name)
        cameras.append(
            Camera(
                K=sample_intrinsics(rng, config),
                width=config.width_px,
                height=config.height_px,
                T_world_camera=T_world_camera,
                distortion=np.zeros(5),
                frame_id=optical_frame_name(name),
            )
        )
    return WorkcellLayout(tuple(cameras), tuple(names), config.table_size_m, config.table_thickness_m)


def make_table_model(size_m: tuple[float, float], thickness_m: float, texture: np.ndarray, *, object_id: int = 0) -> ObjectModel:
    """A textured box whose top face is the rectangle ``size_m`` centred at the origin on z = 0.

    The texture is mapped by planar projection along z over the whole top (the sides repeat its
    border texels), so it appears unstretched on the surface the cameras look at.

    Args:
        size_m: (x, y) extent, metres. thickness_m: the box extends down to z = -thickness.
        texture: (Ht, Wt, 3) uint8.
    """
    sx, sy = size_m[0] / 2.0, size_m[1] / 2.0
    z0, z1 = -thickness_m, 0.0
    corners = np.array(
        [[-sx, -sy, z0], [sx, -sy, z0], [sx, sy, z0], [-sx, sy, z0], [-sx, -sy, z1], [sx, -sy, z1], [sx, sy, z1], [-sx, sy, z1]]
    )
    quads = [(4, 5, 6, 7, (0, 0, 1)), (3, 2, 1, 0, (0, 0, -1)), (0, 1, 5, 4, (0, -1, 0)), (1, 2, 6, 5, (1, 0, 0)),
             (2, 3, 7, 6, (0, 1, 0)), (3, 0, 4, 7, (-1, 0, 0))]
    vertices, normals, faces = [], [], []
    for a, b, c, d, normal in quads:
        base = len(vertices)
        vertices.extend(corners[[a, b, c, d]])
        normals.extend([normal] * 4)
        faces.extend([[base, base + 1, base + 2], [base, base + 2, base + 3]])
    vertices = np.asarray(vertices)
    uv = np.stack([(vertices[:, 0] + sx) / (2 * sx), (vertices[:, 1] + sy) / (2 * sy)], 1)
    return ObjectModel(
        object_id=object_id,
        name="table",
        vertices=vertices.astype(np.float32),
        faces=np.asarray(faces, np.int32),
        normals=np.asarray(normals, np.float32),
        diameter_m=float(np.linalg.norm([2 * sx, 2 * sy, thickness_m])),
        uv=uv.astype(np.float32),
        texture=np.ascontiguousarray(texture, dtype=np.uint8),
        source_path="procedural:table",
    )
