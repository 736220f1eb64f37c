"""The PnP cost as a differentiable function of many poses (:mod:`pose_node.training.pnp_cost`): hand-computed
values, broadcasting of sample dimensions, the fast path against autograd, gradcheck."""
import pytest
import torch
from helpers.pnp_scene import F64, make_K, make_scene

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import so3_exp
from pose_node.correspondence.pnp import huber_delta
from pose_node.training import pnp_cost as training_cost
from pose_node.training.pnp_cost import pnp_cost


def test_pnp_cost_equals_hand_computed_huber_sum():
    # Two points straight ahead at 1 m: projections (320, 240) and (380, 240).
    x3d = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]], dtype=F64)
    R, t, K = torch.eye(3, dtype=F64)[None], torch.tensor([[0.0, 0.0, 1.0]], dtype=F64), make_K(1)
    x2d = torch.tensor([[[319.0, 244.0], [380.5, 240.0]]], dtype=F64)
    w2d = torch.tensor([[[0.5, 1.0], [2.0, 0.0]]], dtype=F64)
    delta = torch.tensor([1.0], dtype=F64)
    # residuals w * (uv - x2d): 0.5*1 = 0.5, 1*(-4) = -4, 2*(-0.5) = -1, 0
    huber = [0.5 * 0.5**2, 1.0 * (4.0 - 0.5), 0.5 * 1.0**2, 0.0]
    torch.testing.assert_close(pnp_cost(R, t, x3d, x2d, w2d, K, delta), torch.tensor([sum(huber)], dtype=F64))
    # depth: point 0 observed at 1.001 m, point 1 unknown (NaN):
    # r_z = depth_weight * mean(w) * fx / depth * (z - depth) = 2 * 0.75 * 600 / 1.001 * (-0.001)
    depth = torch.tensor([[1.001, float("nan")]], dtype=F64)
    r_z = 2.0 * 0.75 * 600.0 / 1.001 * (1.0 - 1.001)
    expected = sum(huber) + 0.5 * r_z**2  # |r_z| = 0.899 < delta
    got = pnp_cost(R, t, x3d, x2d, w2d, K, delta, depth_m=depth, depth_weight=2.0)
    torch.testing.assert_close(got, torch.tensor([expected], dtype=F64))


def test_pnp_cost_leading_sample_dims_broadcast():
    s = make_scene(3, 10, seed=1)
    g = s["g"]
    w2d = torch.rand(3, 10, 2, generator=g, dtype=F64)
    x2d = s["uv"] + torch.randn(s["uv"].shape, generator=g, dtype=F64)
    delta = huber_delta(x2d, w2d, 0.5)
    R = so3_exp(0.1 * torch.randn(4, 2, 3, 3, generator=g, dtype=F64)) @ s["R"]
    t = s["t"] + 0.01 * torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    cost = pnp_cost(R, t, s["x3d"], x2d, w2d, s["K"], delta)
    assert cost.shape == (4, 2, 3)
    for i in range(4):
        for j in range(2):
            torch.testing.assert_close(cost[i, j], pnp_cost(R[i, j], t[i, j], s["x3d"], x2d, w2d, s["K"], delta))
    # a pose batch of 1 broadcasts against B
    one = pnp_cost(R[:, :, :1], t[:, :, :1], s["x3d"], x2d, w2d, s["K"], delta)
    assert one.shape == (4, 2, 3)
    expanded = pnp_cost(R[:, :, :1].expand(4, 2, 3, 3, 3), t[:, :, :1].expand(4, 2, 3, 3), s["x3d"], x2d, w2d, s["K"], delta)
    torch.testing.assert_close(one, expanded)
    with pytest.raises(InvalidInputError, match=r"\(4, 2, 2, 3, 3\)"):
        pnp_cost(R[:, :, :2], t[:, :, :2], s["x3d"], x2d, w2d, s["K"], delta)


@pytest.mark.parametrize("with_depth", [False, True])
def test_fast_cost_and_gradients_match_autograd_reference(with_depth, monkeypatch):
    monkeypatch.setattr(training_cost, "_CHUNK_ELEMENTS", 100)  # several chunks, the last one partial
    s = make_scene(2, 15, seed=2)
    g = s["g"]
    K = make_K(2, skew=3.0)
    x2d = s["uv"] + 3.0 * torch.randn(s["uv"].shape, generator=g, dtype=F64)
    w2d = torch.rand(x2d.shape, generator=g, dtype=F64)
    depth = None
    if with_depth:
        depth = (s["x3d"] @ s["R"].transpose(1, 2) + s["t"][:, None])[..., 2] + 0.01
        depth[:, ::4] = float("nan")
    R = so3_exp(0.05 * torch.randn(7, 2, 3, generator=g, dtype=F64)) @ s["R"]
    t = s["t"] + 0.01 * torch.randn(7, 2, 3, generator=g, dtype=F64)
    t[0, 0, 2] = -0.3  # the whole object behind the camera: clamped depth
    weight_out = torch.randn(7, 2, generator=g, dtype=F64)

    def run(reference):
        inputs = [v.clone().requires_grad_(True) for v in (s["x3d"], x2d, w2d)]
        delta = huber_delta(inputs[1], inputs[2], 0.3)
        R_in = R.clone().requires_grad_(reference)  # a pose that needs gradients takes the autograd path
        cost = pnp_cost(R_in, t, *inputs, K, delta, depth, depth_weight=0.7)
        grads = torch.autograd.grad((cost * weight_out).sum(), inputs)
        return cost.detach(), grads

    cost_fast, grads_fast = run(False)
    cost_ref, grads_ref = run(True)
    torch.testing.assert_close(cost_fast, cost_ref, rtol=1e-12, atol=1e-9)
    for fast, ref in zip(grads_fast, grads_ref):
        assert fast.abs().sum() > 0
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-8)


def test_fast_cost_gradcheck():
    s = make_scene(2, 6, seed=3)
    g = s["g"]
    x2d = (s["uv"] + 5.0 * torch.randn(s["uv"].shape, generator=g, dtype=F64)).requires_grad_(True)
    w2d = torch.rand(2, 6, 2, generator=g, dtype=F64).requires_grad_(True)
    x3d = s["x3d"].clone().requires_grad_(True)
    delta = torch.tensor([2.0, 3.0], dtype=F64, requires_grad=True)
    depth = (s["x3d"] @ s["R"].transpose(1, 2) + s["t"][:, None])[..., 2] + 0.003
    R = so3_exp(0.02 * torch.randn(3, 2, 3, generator=g, dtype=F64)) @ s["R"]
    t = s["t"] + 0.003 * torch.randn(3, 2, 3, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a, b, c, d: pnp_cost(R, t, a, b, c, s["K"], d, depth), (x3d, x2d, w2d, delta))
