"""Rigid-body geometry: the one place where pose, rotation and covariance conventions live.

Conventions (written once, used everywhere):
- ``T_a_b`` maps points expressed in frame ``b`` into frame ``a``: ``p_a = T_a_b * p_b``. This is
  tf2's ``lookup_transform(target_frame=a, source_frame=b)``; in a TransformStamped,
  ``header.frame_id = a`` and ``child_frame_id = b``. ``T_a_b @ T_b_c -> T_a_c``.
- Camera frames are optical frames (REP 103 ``*_optical_frame``): x right, y down, z forward.
- Quaternions are stored in ROS / geometry_msgs order ``(x, y, z, w)``.
- Lengths are metres, angles radians. BOP files (millimetres) are converted at the I/O boundary.
- Pose covariance follows ``geometry_msgs/PoseWithCovariance``: 6x6 over
  ``(x, y, z, rot_x, rot_y, rot_z)``, rotations about the *fixed* parent-frame axes. The perturbation
  model behind it is ``R = Exp(dtheta) @ R_hat`` and ``t = t_hat + dt`` with ``(dt, dtheta)`` in
  the parent frame (see :func:`perturb_pose`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COVARIANCE_ORDER: tuple[str, ...] = ("x", "y", "z", "rot_x", "rot_y", "rot_z")

_SMALL_ANGLE_RAD = 1e-6


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix.

    Args:
        v: (..., 3).
    Returns:
        (..., 3, 3) with ``skew(v) @ w == cross(v, w)``.
    """
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [zero, -z, y, z, zero, -x, -y, x, zero], dim=-1
    ).reshape(*v.shape[:-1], 3, 3)


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula with a series expansion near zero (keeps gradients finite).

    Args:
        omega: (..., 3) rotation vector, radians.
    Returns:
        (..., 3, 3) rotation matrices.
    """
    theta2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = theta2 < _SMALL_ANGLE_RAD**2
    theta2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    theta = theta2_safe.sqrt()
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2_safe)
    K = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(K)
    return eye + a * K + b * (K @ K)


_LOG_SERIES_BELOW_RAD = 1e-4  # below this angle so3_log uses its Taylor series
_LOG_NEAR_PI_ABOVE_RAD = np.pi - 1e-3  # above this the axis comes from the symmetric part


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`so3_exp`, robust near 0 and pi, with finite gradients at the identity.

    Args:
        R: (..., 3, 3) rotation matrices.
    Returns:
        (..., 3) rotation vectors with norm in [0, pi].
    """
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    vee = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    # atan2(sin, cos) instead of acos(cos): acos has an infinite derivative at the identity.
    sin = vee.norm(dim=-1) / 2.0
    cos = (trace - 1.0) / 2.0
    theta = torch.atan2(sin, cos)
    near_zero = theta < _LOG_SERIES_BELOW_RAD
    near_pi = theta > _LOG_NEAR_PI_ABOVE_RAD
    # theta / (2 sin theta) ~ 1/2 + theta^2 / 12, with theta^2 ~ (3 - trace) / 2 (no sqrt, no acos).
    series = 0.5 + (3.0 - trace) / 24.0
    safe_sin = torch.where(near_zero, torch.ones_like(sin), sin)
    scale = torch.where(near_zero, series, theta / (2.0 * safe_sin))
    omega = vee * scale[..., None]
    if bool(near_pi.any()):
        # Near pi the antisymmetric part vanishes; take the axis from the symmetric part.
        sym = (R + R.transpose(-1, -2)) / 2.0 - cos.clamp(-1.0, 1.0)[..., None, None] * torch.eye(
            3, dtype=R.dtype, device=R.device
        )
        diag = torch.diagonal(sym, dim1=-2, dim2=-1)
        col = diag.argmax(-1)
        axis = torch.gather(sym, -1, col[..., None, None].expand(*sym.shape[:-1], 1)).squeeze(-1)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Fix the sign with the (small but informative) antisymmetric part.
        sign = torch.where((axis * vee).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(R.dtype)
        omega = torch.where(near_pi[..., None], axis * sign * theta[..., None], omega)
    return omega


def rotation_angle_rad(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations. Args: (..., 3, 3) each. Returns: (...) radians."""
    R = R_a.transpose(-1, -2) @ R_b
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    return torch.acos(((trace - 1.0) / 2.0).clamp(-1.0, 1.0))


@dataclass(frozen=True)
class Pose:
    """Batched rigid transform ``T_a_b`` backed by tensors; any leading batch dims.

    Attributes:
        R: (..., 3, 3) rotation.
        t: (..., 3) translation, metres.
    """

    R: torch.Tensor
    t: torch.Tensor

    @classmethod
    def from_matrix(cls, T: torch.Tensor | np.ndarray) -> "Pose":
        """Args: T (..., 4, 4) homogeneous matrix (numpy input becomes float64 tensors)."""
        T = torch.tensor(T) if isinstance(T, np.ndarray) else T  # copy: a frozen Pose owns its data
        if T.shape[-2:] != (4, 4):
            raise ValueError(f"expected (..., 4, 4) matrices, got shape {tuple(T.shape)}")
        return cls(T[..., :3, :3], T[..., :3, 3])

    @classmethod
    def identity(cls, batch_shape: tuple[int, ...] = (), *, dtype=torch.float64, device=None) -> "Pose":
        R = torch.eye(3, dtype=dtype, device=device).expand(*batch_shape, 3, 3).clone()
        return cls(R, torch.zeros(*batch_shape, 3, dtype=dtype, device=device))

    @classmethod
    def from_quaternion_xyzw(cls, q: torch.Tensor, t: torch.Tensor) -> "Pose":
        """Args: q (..., 4) quaternion (x, y, z, w), any norm > 0; t (..., 3) metres."""
        q = q / q.norm(dim=-1, keepdim=True)
        x, y, z, w = q.unbind(-1)
        R = torch.stack(
            [
                1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
            ],
            -1,
        ).reshape(*q.shape[:-1], 3, 3)
        return cls(R, t)

    @property
    def shape(self) -> torch.Size:
        return self.t.shape[:-1]

    def matrix(self) -> torch.Tensor:
        """Returns (..., 4, 4) homogeneous matrices."""
        T = torch.zeros(*self.shape, 4, 4, dtype=self.t.dtype, device=self.t.device)
        T[..., :3, :3] = self.R
        T[..., :3, 3] = self.t
        T[..., 3, 3] = 1.0
        return T

    def inv(self) -> "Pose":
        Rt = self.R.transpose(-1, -2)
        return Pose(Rt, -(Rt @ self.t[..., None])[..., 0])

    def __matmul__(self, other: "Pose") -> "Pose":
        return Pose(self.R @ other.R, (self.R @ other.t[..., None])[..., 0] + self.t)

    def transform(self, p: torch.Tensor) -> torch.Tensor:
        """Args: p (..., N, 3) points in frame b. Returns (..., N, 3) in frame a."""
        return p @ self.R.transpose(-1, -2) + self.t[..., None, :]

    def quaternion_xyzw(self) -> torch.Tensor:
        """Returns (..., 4) unit quaternions (x, y, z, w) with w >= 0."""
        R = self.R
        m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
        # Shepperd's method: pick the largest of four candidates for numerical stability.
        candidates = torch.stack(
            [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
        )
        k = candidates.argmax(-1)
        s = candidates.gather(-1, k[..., None]).clamp_min(1e-12).sqrt()[..., 0] * 2.0
        w = torch.stack([s / 4, (R[..., 2, 1] - R[..., 1, 2]) / s, (R[..., 0, 2] - R[..., 2, 0]) / s, (R[..., 1, 0] - R[..., 0, 1]) / s], -1)
        x = torch.stack([(R[..., 2, 1] - R[..., 1, 2]) / s, s / 4, (R[..., 0, 1] + R[..., 1, 0]) / s, (R[..., 0, 2] + R[..., 2, 0]) / s], -1)
        y = torch.stack([(R[..., 0, 2] - R[..., 2, 0]) / s, (R[..., 0, 1] + R[..., 1, 0]) / s, s / 4, (R[..., 1, 2] + R[..., 2, 1]) / s], -1)
        z = torch.stack([(R[..., 1, 0] - R[..., 0, 1]) / s, (R[..., 0, 2] + R[..., 2, 0]) / s, (R[..., 1, 2] + R[..., 2, 1]) / s, s / 4], -1)
        q = torch.stack([x, y, z, w], -1).gather(-2, k[..., None, None].expand(*k.shape, 1, 4))[..., 0, :]
        q = torch.where(q[..., 3:4] < 0, -q, q)
        return q / q.norm(dim=-1, keepdim=True)


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms without a general matrix inverse.

    Args:
        T: (..., 4, 4) ``T_a_b``.
    Returns:
        (..., 4, 4) ``T_b_a``.
    """
    T = np.asarray(T, dtype=np.float64)
    R_inv = np.swapaxes(T[..., :3, :3], -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = R_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", R_inv, T[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def perturb_pose(pose: Pose, delta: torch.Tensor) -> Pose:
    """Apply a perturbation in the ROS covariance convention.

    Args:
        pose: ``T_parent_child`` with batch shape (...).
        delta: (..., 6) ``(dx, dy, dz, drot_x, drot_y, drot_z)``, metres and radians, parent axes.
    Returns:
        ``(Exp(drot) @ R, t + dt)``.
    """
    return Pose(so3_exp(delta[..., 3:]) @ pose.R, pose.t + delta[..., :3])


def pose_difference(pose: Pose, reference: Pose) -> torch.Tensor:
    """Inverse of :func:`perturb_pose`: the (..., 6) delta taking ``reference`` to ``pose``."""
    return torch.cat([pose.t - reference.t, so3_log(pose.R @ reference.R.transpose(-1, -2))], -1)


def transform_covariance(cov_child: torch.Tensor, T_new_parent: Pose) -> torch.Tensor:
    """Express a pose covariance (ROS convention, parent axes) in another fixed frame.

    For ``T_new_child = T_new_parent @ T_parent_child`` with ``T_new_parent`` exact, both the
    translation and the rotation perturbations rotate by ``R_new_parent``.

    Args:
        cov_child: (..., 6, 6) covariance in the parent frame.
        T_new_parent: batch shape (...).
    Returns:
        (..., 6, 6) covariance in the new frame.
    """
    R = T_new_parent.R
    A = torch.zeros(*R.shape[:-2], 6, 6, dtype=R.dtype, device=R.device)
    A[..., :3, :3] = R
    A[..., 3:, 3:] = R
    return A @ cov_child @ A.transpose(-1, -2)
