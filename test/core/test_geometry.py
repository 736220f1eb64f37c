import math

import numpy as np
import pytest
import torch

from pose_node.core.geometry import (
    Pose, perturb_pose, pose_difference, rotation_angle_rad, so3_exp, so3_log, transform_covariance,
)


@pytest.mark.parametrize("batch", [(), (1,), (4, 2)])
def test_exp_log_round_trip_batched(batch, device):
    g = torch.Generator().manual_seed(0)
    omega = torch.randn(*batch, 3, generator=g, dtype=torch.float64)
    omega = omega / omega.norm(dim=-1, keepdim=True).clamp_min(1e-9) * torch.rand(*batch, 1, generator=g, dtype=torch.float64) * 3.0
    omega = omega.to(device)
    R = so3_exp(omega)
    assert R.shape == (*batch, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64, device=device).expand_as(R), atol=1e-12, rtol=0)
    torch.testing.assert_close(so3_log(R), omega, atol=1e-9, rtol=0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_known_90_degree_rotations(axis):
    omega = torch.zeros(3, dtype=torch.float64)
    omega[axis] = math.pi / 2
    R = so3_exp(omega)
    e = torch.zeros(3, dtype=torch.float64)
    e[(axis + 1) % 3] = 1.0
    expected = torch.zeros(3, dtype=torch.float64)
    expected[(axis + 2) % 3] = 1.0  # right-handed: x->y about z, y->z about x, z->x about y
    torch.testing.assert_close(R @ e, expected, atol=1e-12, rtol=0)


def test_log_near_pi_and_zero():
    for angle in [math.pi, math.pi - 1e-7, 1e-9, 0.0]:
        axis = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
        omega = axis / axis.norm() * angle
        back = so3_log(so3_exp(omega))
        # At exactly pi, omega and -omega are the same rotation.
        assert rotation_angle_rad(so3_exp(back), so3_exp(omega)) < 1e-6
        assert abs(back.norm().item() - angle) < 1e-6


def test_exp_gradcheck():
    omega = torch.tensor([[0.3, -0.2, 0.1], [1e-8, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(so3_exp, (omega,))


def test_pose_compose_inverse_and_transform(device):
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    T_a_b = Pose(so3_exp(randn(5, 3)), randn(5, 3))
    T_b_c = Pose(so3_exp(randn(5, 3)), randn(5, 3))
    p_c = randn(5, 7, 3)
    torch.testing.assert_close((T_a_b @ T_b_c).transform(p_c), T_a_b.transform(T_b_c.transform(p_c)))
    identity = (T_a_b @ T_a_b.inv()).matrix()
    torch.testing.assert_close(identity, torch.eye(4, dtype=torch.float64, device=device).expand(5, 4, 4), atol=1e-12, rtol=0)
    torch.testing.assert_close(Pose.from_matrix(T_a_b.matrix()).t, T_a_b.t)


def test_quaternion_round_trip_xyzw_order():
    # 90 degrees about z: (x, y, z, w) = (0, 0, sin 45, cos 45).
    q = torch.tensor([0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)], dtype=torch.float64)
    pose = Pose.from_quaternion_xyzw(q, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(pose.R @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(2)
    R = so3_exp(torch.randn(100, 3, generator=g, dtype=torch.float64) * 2)
    q = Pose(R, torch.zeros(100, 3, dtype=torch.float64)).quaternion_xyzw()
    assert (q[:, 3] >= 0).all()
    torch.testing.assert_close(Pose.from_quaternion_xyzw(q, torch.zeros(100, 3, dtype=torch.float64)).R, R, atol=1e-9, rtol=0)


def test_from_matrix_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        Pose.from_matrix(np.eye(3))


def test_perturbation_round_trip_and_covariance_rotation():
    g = torch.Generator().manual_seed(3)
    pose = Pose(so3_exp(torch.randn(3, generator=g, dtype=torch.float64)), torch.randn(3, generator=g, dtype=torch.float64))
    delta = torch.tensor([0.01, -0.02, 0.03, 0.1, -0.05, 0.02], dtype=torch.float64)
    torch.testing.assert_close(pose_difference(perturb_pose(pose, delta), pose), delta, atol=1e-12, rtol=0)

    # Monte Carlo: perturbations drawn with cov in frame "parent", moved to "new" by T_new_parent,
    # have the covariance that transform_covariance predicts.
    L = torch.tensor(np.diag([0.01, 0.02, 0.005, 0.05, 0.02, 0.1]), dtype=torch.float64)
    cov = L @ L.T
    T_new_parent = Pose(so3_exp(torch.tensor([0.4, -1.0, 0.3], dtype=torch.float64)), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    deltas = torch.randn(20000, 6, generator=g, dtype=torch.float64) @ L.T
    samples = T_new_parent @ perturb_pose(Pose(pose.R.expand(20000, 3, 3), pose.t.expand(20000, 3)), deltas)
    mean = T_new_parent @ pose
    d_new = pose_difference(samples, Pose(mean.R.expand(20000, 3, 3), mean.t.expand(20000, 3)))
    empirical = d_new.T @ d_new / len(d_new)
    predicted = transform_covariance(cov, T_new_parent)
    torch.testing.assert_close(empirical, predicted, atol=3e-4 * cov.diagonal().max().item() * 10, rtol=0.05)


def test_log_gradcheck_at_identity_small_and_large_angles():
    for angle in [0.0, 1e-6, 0.3, 2.5]:
        axis = torch.tensor([0.2, -0.7, 0.4], dtype=torch.float64)
        R = so3_exp(axis / axis.norm() * angle).detach().requires_grad_(True)
        assert torch.autograd.gradcheck(so3_log, (R,)), angle
    # The composition is the identity map, so its Jacobian is the identity (finite at zero).
    omega = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda w: so3_log(so3_exp(w)), omega)
    torch.testing.assert_close(jac, torch.eye(3, dtype=torch.float64))


def test_from_numpy_matrix_copies():
    T = np.eye(4)
    pose = Pose.from_matrix(T)
    T[0, 3] = 5.0
    assert pose.t[0].item() == 0.0
