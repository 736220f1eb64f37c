"""The robust PnP cost of many poses per element, differentiable (EPro-PnP's Monte Carlo loss).

The cost is the one :func:`pose_node.correspondence.pnp.solve_pnp` minimises (conventions and
formula in :mod:`pose_node.correspondence.pnp`); training integrates ``exp(-cost)`` over sampled
poses (:mod:`pose_node.training.amis`), which only needs the cost, not the solver.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.errors import InvalidInputError
from pose_node.correspondence.pnp import _DEFAULT_MIN_DEPTH_M, _check_correspondences, _check_shape, _depth_terms


def _huber(r: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Elementwise Huber ``m (|r| - m/2)`` with ``m = min(|r|, delta)`` (delta broadcasts)."""
    a = r.abs()
    m = torch.minimum(a, delta)
    return torch.addcmul(a * m, m, m, value=-0.5)


def _parse_pose_batch(R: torch.Tensor, t: torch.Tensor, B: int) -> tuple[torch.Size, torch.Size]:
    """Check (S..., B, 3, 3) and (S..., B, 3) and return (broadcast lead shape, sample shape)."""
    if R.dim() < 3 or R.shape[-2:] != (3, 3):
        raise InvalidInputError(f"R must have shape (S..., B, 3, 3), got {tuple(R.shape)}")
    if t.dim() < 2 or t.shape[-1] != 3:
        raise InvalidInputError(f"t must have shape (S..., B, 3), got {tuple(t.shape)}")
    try:
        lead = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1], (B,))
    except RuntimeError as exc:
        raise InvalidInputError(
            f"R {tuple(R.shape)} and t {tuple(t.shape)} do not broadcast against B={B}") from exc
    if lead[-1] != B:
        raise InvalidInputError(f"R {tuple(R.shape)} and t {tuple(t.shape)} do not broadcast against B={B}")
    return lead, lead[:-1]


def pnp_cost(
    R: torch.Tensor, t: torch.Tensor, x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
    K: torch.Tensor, delta: torch.Tensor, depth_m: torch.Tensor | None = None,
    depth_weight: float = 1.0, min_depth_m: float = _DEFAULT_MIN_DEPTH_M,
) -> torch.Tensor:
    """Robust reprojection cost (module docstring) of one or many poses per batch element.

    The 2D residuals are ``w2d * (uv_proj - x2d)`` per x and y component (as EPro-PnP). Where
    ``depth_m`` is finite and > 0, a depth residual
    ``depth_weight * mean_xy(w2d) * (fx / depth) * (z_proj - depth)`` (pixel-equivalent) joins
    with the same Huber threshold; NaN depth means no depth.

    Args:
        R: (S..., B, 3, 3) rotations camera <- object; any leading sample dims S (B may be 1).
        t: (S..., B, 3) translations, metres (broadcasts with ``R``'s leading dims).
        x3d: (B, N, 3) object points, metres. x2d: (B, N, 2) pixels. w2d: (B, N, 2) 1/pixels.
        K: (B, 3, 3) intrinsics. delta: (B,) Huber thresholds
            (:func:`pose_node.correspondence.pnp.huber_delta`).
        depth_m: (B, N) observed depths, metres, NaN where unknown; or None.
        depth_weight: weight of the depth residuals.
        min_depth_m: depth clamp of the projection (see
            :func:`pose_node.core.projection.project_points`).
    Returns:
        (S..., B) costs, differentiable w.r.t. the pose, ``x3d``, ``x2d``, ``w2d`` and ``delta``.
        Unless the pose, ``K`` or ``depth_m`` need gradients (then plain autograd), a kernel
        chunked over the samples with an analytic backward runs instead: it keeps no per-sample
        intermediates (memory O(B N), not O(S B N)) and is several times faster on a CPU.
        Thresholds below ``_MIN_HUBER_DELTA`` (1e-12) count as that value there.
    Raises:
        InvalidInputError: on wrong shapes.
    """
    B, N = _check_correspondences(x3d, x2d, w2d, K, depth_m)
    _check_shape("delta", delta, (B,))
    lead, sample_shape = _parse_pose_batch(R, t, B)
    S = int(np.prod(sample_shape)) if sample_shape else 1
    R_bs = R.expand(*lead, 3, 3).reshape(S, B, 3, 3).transpose(0, 1)  # (B, S, 3, 3)
    t_bs = t.expand(*lead, 3).reshape(S, B, 3).transpose(0, 1)  # (B, S, 3)
    if depth_m is None:
        coef = depth = None
    else:
        coef, depth = _depth_terms(depth_m, w2d, K, depth_weight)
    if torch.is_grad_enabled() and any(v is not None and v.requires_grad for v in (R, t, K, depth_m)):
        cost = _pnp_cost_autograd(R_bs, t_bs, x3d, x2d, w2d, K, delta, coef, depth, min_depth_m)
    else:
        cost = _SampleCost.apply(x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, min_depth_m)
    return cost.transpose(0, 1).reshape(*sample_shape, B)


def _pnp_cost_autograd(R_bs, t_bs, x3d, x2d, w2d, K, delta, coef, depth, min_depth_m):
    """Plain-autograd cost (B, S) of poses R_bs (B, S, 3, 3), t_bs (B, S, 3): used when the pose,
    ``K`` or the depth need gradients; the reference of :class:`_SampleCost` in the tests."""
    B, S = R_bs.shape[:2]
    N = x3d.shape[1]
    # Rows x, y of K without the principal point (added back below, see core.projection.project_points), z.
    K0 = torch.cat([K[:, :2, :2], torch.zeros_like(K[:, :2, 2:])], -1)
    K0 = torch.cat([K0, torch.zeros_like(K[:, 2:])], 1)
    K0[:, 2, 2] = 1.0
    M = K0[:, None] @ R_bs
    m = (K0[:, None] @ t_bs[..., None])[..., 0]
    h = (M.reshape(B, S * 3, 3) @ x3d.transpose(1, 2)).view(B, S, 3, N) + m[..., None]
    z = h[:, :, 2]
    uv_c = h[:, :, :2] / z.clamp_min(min_depth_m)[:, :, None]
    x2d_c = (x2d - K[:, None, :2, 2]).transpose(1, 2)  # (B, 2, N) relative to the principal point
    r = (uv_c - x2d_c[:, None]) * w2d.transpose(1, 2)[:, None]
    d = delta[:, None, None, None]
    cost = _huber(r, d).sum(dim=(-2, -1))
    if coef is not None:
        r_z = coef[:, None] * (z - depth[:, None])
        cost = cost + _huber(r_z, d[..., 0]).sum(-1)
    return cost


# Samples per chunk of the fast cost: about this many projected coordinates (B * chunk * 3 * N)
# per intermediate tensor keeps a chunk's working set in the CPU caches.
_CHUNK_ELEMENTS = 1 << 18
# Huber thresholds below this (units of weighted residuals) are raised to it: the kernel divides
# by delta (huber(r, d) = d^2 huber(r / d, 1)).
_MIN_HUBER_DELTA = 1e-12


class _SampleCost(torch.autograd.Function):
    """Costs (B, S) of S constant poses per element, chunked over samples, with an analytic
    backward: ``grad = sum_s grad_output[b, s] * d cost_s / d (x3d, x2d, w2d, delta, depth_coef)``.

    Neither pass keeps per-sample intermediates: the backward recomputes them chunk by chunk.
    Layout inside a chunk: (B, sample, component, N), points contiguous.
    """

    @staticmethod
    def forward(ctx, x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, min_depth_m):
        ctx.min_depth_m = min_depth_m
        ctx.set_materialize_grads(False)
        out = []
        for terms in _SampleCost._chunks(x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, min_depth_m):
            r_s, rz_s = terms["r_scaled"], terms["rz_scaled"]
            zero = r_s.new_zeros(()).expand_as(r_s)
            cost = F.huber_loss(r_s, zero, reduction="none", delta=1.0).sum(dim=(2, 3))
            if rz_s is not None:
                cost = cost + F.huber_loss(rz_s, zero[:, :, 0], reduction="none", delta=1.0).sum(2)
            out.append(cost)
        delta_s = delta.clamp_min(_MIN_HUBER_DELTA)
        cost = torch.cat(out, 1) * (delta_s * delta_s)[:, None]
        ctx.save_for_backward(x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, cost)
        return cost

    @staticmethod
    def _chunks(x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, min_depth_m, with_parts=False):
        """Yield per-chunk terms; residuals are divided by the (floored) Huber threshold."""
        B, S = R_bs.shape[:2]
        N = x3d.shape[1]
        dtype = x3d.dtype
        K0 = K[:, :2, :2]
        # Projection matrices [K0 R | K0 t] (B, S, 3, 4) with K0 = K without (cx, cy).
        top = torch.cat([K0[:, None] @ R_bs[:, :, :2], K0[:, None] @ t_bs[:, :, :2, None]], -1)
        bottom = torch.cat([R_bs[:, :, 2:], t_bs[:, :, 2:, None]], -1)
        P = torch.cat([top, bottom], 2).to(dtype)  # (B, S, 3, 4)
        X1 = torch.cat([x3d, torch.ones_like(x3d[..., :1])], -1).transpose(1, 2).contiguous()  # (B, 4, N)
        delta_s = delta.clamp_min(_MIN_HUBER_DELTA)
        inv_d = (1.0 / delta_s)[:, None, None, None]
        w = w2d.transpose(1, 2)[:, None]  # (B, 1, 2, N)
        x2c = (x2d - K[:, None, :2, 2]).transpose(1, 2)[:, None]
        w_s = (w * inv_d).contiguous()
        neg_target_s = (-x2c * w_s).contiguous()
        coef_s = None if coef is None else (coef / delta_s[:, None])[:, None]  # (B, 1, N)
        dep = None if depth is None else depth[:, None]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, B * N * 3))
        for c0 in range(0, S, chunk):
            c1 = min(S, c0 + chunk)
            s = c1 - c0
            h = torch.bmm(P[:, c0:c1].reshape(B, 3 * s, 4), X1).view(B, s, 3, N)
            z = h[:, :, 2]
            inv_z = z.clamp_min(min_depth_m).reciprocal_()
            uv_c = h[:, :, :2] * inv_z[:, :, None]
            r_s = torch.addcmul(neg_target_s, uv_c, w_s)
            rz_s = None if coef_s is None else (z - dep).mul_(coef_s)
            terms = {"r_scaled": r_s, "rz_scaled": rz_s, "c0": c0, "c1": c1}
            if with_parts:
                terms.update(uv_c=uv_c, z=z, inv_z=inv_z, x2c=x2c, w=w, delta_s=delta_s)
            yield terms

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out is None:
            return (None,) * 10
        x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, cost = ctx.saved_tensors
        need = ctx.needs_input_grad
        B, S = R_bs.shape[:2]
        N = x3d.shape[1]
        g_x3d = torch.zeros(B, 3, N, dtype=x3d.dtype, device=x3d.device) if need[0] else None
        sum_e = torch.zeros(B, 2, N, dtype=w2d.dtype, device=w2d.device)  # sum_s g psi
        sum_e_uv = torch.zeros(B, 2, N, dtype=w2d.dtype, device=w2d.device)  # sum_s g psi uv_c
        r_psi = torch.zeros(B, S, dtype=cost.dtype, device=cost.device)  # sum_n r psi / delta^2
        g_coef = None if coef is None else torch.zeros_like(coef)
        fx = K[:, 0, 0, None, None]
        skew_k = K[:, 0, 1, None, None]
        fy = K[:, 1, 1, None, None]
        R_dt = R_bs.to(x3d.dtype)
        for T in _SampleCost._chunks(x3d, x2d, w2d, delta, coef, R_bs, t_bs, K, depth, ctx.min_depth_m,
                                     with_parts=True):
            c0, c1 = T["c0"], T["c1"]
            s = c1 - c0
            g = grad_out[:, c0:c1, None, None]  # (B, s, 1, 1)
            d_s = T["delta_s"][:, None, None, None]
            # psi(r) = clamp(r, -d, d) = d * clamp(r / d, -1, 1)
            r_s = T["r_scaled"]
            psi_s = r_s.clamp(-1.0, 1.0)
            r_psi[:, c0:c1] = torch.linalg.vecdot(psi_s.flatten(2), r_s.flatten(2))
            e = psi_s.mul_(d_s * g)  # g psi, (B, s, 2, N)
            uv_c = T["uv_c"]
            sum_e_uv += (e * uv_c).sum(1)
            sum_e += e.sum(1)
            ez = None
            if coef is not None:
                rz_s = T["rz_scaled"]
                psi_z = rz_s.clamp(-1.0, 1.0)
                r_psi[:, c0:c1] += torch.linalg.vecdot(psi_z, rz_s)
                ez = psi_z.mul_(d_s[..., 0] * g[..., 0])  # (B, s, N)
                g_coef += (ez * (T["z"] - depth[:, None])).sum(1)
            if g_x3d is not None:
                ew = e.mul_(T["w"])  # g psi w = d cost / d uv, (B, s, 2, N)
                inv_z = T["inv_z"]
                eu, ev = ew[:, :, 0], ew[:, :, 1]
                gp = torch.empty(B, s, 3, N, dtype=x3d.dtype, device=x3d.device)
                torch.mul(eu, inv_z * fx, out=gp[:, :, 0])
                torch.mul(torch.addcmul(ev * fy, eu, skew_k), inv_z, out=gp[:, :, 1])
                gz = torch.addcmul(eu * uv_c[:, :, 0], ev, uv_c[:, :, 1]).mul_(inv_z)
                gz = torch.where(T["z"] > ctx.min_depth_m, -gz, torch.zeros_like(gz))
                if ez is not None:
                    gz = gz.addcmul_(ez, coef[:, None])
                gp[:, :, 2] = gz
                # d cost / d X = sum_s R_s^T d cost / d p_s: (B, 3, s*3) @ (B, s*3, N)
                R_cols = R_dt[:, c0:c1].permute(0, 3, 1, 2).reshape(B, 3, 3 * s)
                g_x3d += R_cols @ gp.view(B, 3 * s, N)
        x2c = (x2d - K[:, None, :2, 2]).transpose(1, 2)
        g_w = sum_e_uv - x2c * sum_e
        # The cost is homogeneous of degree 2 in (residuals, delta), so
        # sum_n d huber / d delta = (2 cost - sum_n r psi) / delta.
        delta_s = delta.clamp_min(_MIN_HUBER_DELTA)
        per_sample = (2.0 * cost - r_psi * (delta_s * delta_s)[:, None]) / delta_s[:, None]
        g_delta = (grad_out * per_sample).sum(1) * (delta >= _MIN_HUBER_DELTA)
        return (g_x3d.transpose(1, 2) if g_x3d is not None else None,
                (-sum_e * w2d.transpose(1, 2)).transpose(1, 2) if need[1] else None,
                g_w.transpose(1, 2) if need[2] else None,
                g_delta if need[3] else None,
                g_coef if (coef is not None and need[4]) else None,
                None, None, None, None, None)


__all__ = ["pnp_cost"]
