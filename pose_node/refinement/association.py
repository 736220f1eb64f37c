"""Association of single-view pose hypotheses across calibrated views (ROS-free).

Every view's estimates are already in the world frame (``T_world_object`` and a 6x6 covariance
in the ROS convention, world axes). Association turns them into one :class:`Candidate` per
object instance:

1. **Grouping.** Hypotheses of the same object are linked when their positions agree: within
   ``gate_diameters`` x the object's diameter, within the chi-square gate of their position
   covariances, or (two views) when the rays from the cameras through the two positions pass
   within that gate of each other. An RGB view's position is uncertain along its ray, so two
   views of the same object can lie far apart yet see it in the same place. No link spans more
   than ``max_gate_diameters``. Groups are the connected components of the links, so an object
   seen by one view only is a group of one.
2. **Symmetry.** Each member is replaced by the symmetric equivalent closest to the group's
   anchor (for a box, ``R`` and ``R @ Rz(180)`` are the same object; without this a fused
   rotation of two correct views could be neither).
3. **Anchor and consensus.** The anchor is the member that most others agree with (rotation
   within ``agree_rotation_deg``, position within the gates), ties to the smaller covariance.
   Members that agree are fused; the others are kept as alternative starts for the refinement
   (a flipped single-view pose is a hypothesis, not noise).
4. **Initial pose.** ``fused``: information-weighted fusion in the tangent space at the anchor,
   ``delta = (sum Lambda_k)^-1 sum Lambda_k delta_k`` with ``Lambda_k = Sigma_k^-1``, whose
   translation part triangulates the views' rays; covariance ``(sum Lambda_k)^-1``. When the
   agreeing members cannot pin the position (one RGB view) and others disagree in rotation, the
   position is fused over all of them (where an object is does not depend on which way it is
   turned) and the alternatives take that position. ``best``: the anchor as it is.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pose_node.core.errors import InvalidInputError
from pose_node.core.geometry import Pose, perturb_pose, pose_difference
from pose_node.core.types import ObjectModel, PoseEstimate

# chi-square(3) quantile at 99 %: two positions are consistent when their difference lies inside.
_CHI2_3DOF_99 = 11.345


@dataclass(frozen=True)
class AssociationConfig:
    """How hypotheses become candidates (module docstring).

    Attributes:
        gate_diameters: positions closer than this many object diameters are one instance.
        use_covariance_gate: also link positions consistent under their covariances (chi-square,
            3 dof, 99 %); capped at ``max_gate_diameters``.
        max_gate_diameters: never link positions further apart than this many diameters.
        agree_rotation_deg: members whose rotation (after symmetry) is within this of the
            anchor's are fused; the others become alternatives.
        initial_pose: ``fused`` or ``best`` (module docstring).
        weak_position_std_diameters: when the agreeing members' fused position is less certain
            than this many diameters (largest std), the alternatives' positions are fused in too.
    """

    gate_diameters: float = 0.5
    use_covariance_gate: bool = True
    max_gate_diameters: float = 3.0
    agree_rotation_deg: float = 20.0
    initial_pose: str = "fused"
    weak_position_std_diameters: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.gate_diameters <= self.max_gate_diameters:
            raise InvalidInputError(f"AssociationConfig: need 0 < gate_diameters <= max_gate_diameters, got "
                                    f"{self.gate_diameters}, {self.max_gate_diameters}")
        if not 0 < self.agree_rotation_deg <= 180:
            raise InvalidInputError(f"AssociationConfig.agree_rotation_deg: expected (0, 180], got {self.agree_rotation_deg}")
        if self.initial_pose not in ("fused", "best"):
            raise InvalidInputError(f"AssociationConfig.initial_pose: expected 'fused' or 'best', got {self.initial_pose!r}")


@dataclass(frozen=True)
class Candidate:
    """One object instance seen by one or more views.

    Attributes:
        object_id: the object.
        T_world_object: (4, 4) initial pose, metres.
        covariance: (6, 6) ROS convention, world axes.
        score: the best member's score.
        members: the hypotheses that agree with it (symmetric equivalents aligned to the anchor).
        alternatives: hypotheses of the same instance that disagree (other rotations).
        view_indices: the views whose hypotheses it holds.
    """

    object_id: int
    T_world_object: np.ndarray
    covariance: np.ndarray
    score: float
    members: tuple[PoseEstimate, ...]
    alternatives: tuple[PoseEstimate, ...] = ()
    view_indices: tuple[int, ...] = ()

    def to_estimate(self, instance_id: int) -> PoseEstimate:
        return PoseEstimate(self.object_id, instance_id, self.T_world_object, self.covariance, self.score, self.view_indices)


def closest_equivalent(T: np.ndarray, reference: np.ndarray, symmetries: np.ndarray) -> np.ndarray:
    """The symmetric equivalent ``T @ S_k`` whose rotation is closest to ``reference``'s.

    Args:
        T, reference: (4, 4) poses in the same frame. symmetries: (S, 4, 4) ``T_obj_objsym``
            including the identity.
    Returns:
        (4, 4).
    """
    candidates = np.asarray(T, dtype=np.float64) @ np.asarray(symmetries, dtype=np.float64)
    trace = np.einsum("ij,sij->s", np.asarray(reference, dtype=np.float64)[:3, :3], candidates[:, :3, :3])
    return candidates[int(np.argmax(trace))]


def equivalent_with_covariance(T: np.ndarray, covariance: np.ndarray, T_equivalent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express a pose and its covariance as a symmetric equivalent ``T_equivalent = T @ S``.

    The rotation perturbation is the same (``Exp(dtheta)`` acts on the left), but the translation
    of the equivalent moves with the lever ``a = t' - t``: ``dt' = dt - [a]x dtheta``.

    Args:
        T, T_equivalent: (4, 4). covariance: (6, 6) ROS convention.
    Returns:
        ``T_equivalent`` and its (6, 6) covariance.
    """
    a = np.asarray(T_equivalent, dtype=np.float64)[:3, 3] - np.asarray(T, dtype=np.float64)[:3, 3]
    A = np.eye(6)
    A[:3, 3:] = -np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    cov = A @ np.asarray(covariance, dtype=np.float64) @ A.T
    return np.asarray(T_equivalent, dtype=np.float64), 0.5 * (cov + cov.T)


def rotation_angle_deg(T_a: np.ndarray, T_b: np.ndarray) -> float:
    cos = (np.trace(T_a[:3, :3].T @ T_b[:3, :3]) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def _rays_meet(a: PoseEstimate, b: PoseEstimate, centres: Sequence[np.ndarray], gate_m: float, max_m: float) -> bool:
    """Whether the viewing rays through two estimates (from their cameras' centres) pass within
    ``gate_m`` of each other, at points in front of both cameras and within ``max_m`` of both
    estimates: the part of a single-view position that is reliable without depth."""
    ca, cb = centres[a.view_indices[0]], centres[b.view_indices[0]]
    da, db = a.T_world_object[:3, 3] - ca, b.T_world_object[:3, 3] - cb
    na, nb = np.linalg.norm(da), np.linalg.norm(db)
    if na < 1e-9 or nb < 1e-9:
        return False
    da, db = da / na, db / nb
    w0 = ca - cb
    b_ = float(da @ db)
    denom = 1.0 - b_ * b_
    if denom < 1e-6:  # parallel rays (the same camera): no triangulation
        return False
    sa = (b_ * float(db @ w0) - float(da @ w0)) / denom
    sb = (float(db @ w0) - b_ * float(da @ w0)) / denom
    pa, pb = ca + sa * da, cb + sb * db
    return (sa > 0 and sb > 0 and float(np.linalg.norm(pa - pb)) <= gate_m
            and float(np.linalg.norm(pa - a.T_world_object[:3, 3])) <= max_m and float(np.linalg.norm(pb - b.T_world_object[:3, 3])) <= max_m)


def _positions_consistent(a: PoseEstimate, b: PoseEstimate, diameter_m: float, config: AssociationConfig,
                          centres: Sequence[np.ndarray] | None = None) -> bool:
    d = a.T_world_object[:3, 3] - b.T_world_object[:3, 3]
    dist = float(np.linalg.norm(d))
    if dist <= config.gate_diameters * diameter_m:
        return True
    if dist > config.max_gate_diameters * diameter_m:
        return False
    if config.use_covariance_gate:
        try:
            if float(d @ np.linalg.solve(a.covariance[:3, :3] + b.covariance[:3, :3], d)) <= _CHI2_3DOF_99:
                return True
        except np.linalg.LinAlgError:
            pass
    if centres is not None and a.view_indices and b.view_indices and a.view_indices[0] != b.view_indices[0]:
        return _rays_meet(a, b, centres, config.gate_diameters * diameter_m, config.max_gate_diameters * diameter_m)
    return False


def _components(linked: np.ndarray) -> list[list[int]]:
    """Connected components of the graph with the (n, n) bool adjacency ``linked``."""
    n = len(linked)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def information_weighted_mean(values: np.ndarray, covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum Lambda_k)^-1 sum Lambda_k x_k`` with ``Lambda_k = Sigma_k^-1``, and its covariance.

    Args:
        values: (K, d). covariances: (K, d, d) (pseudo-inverted: a direction without information
            gets none).
    Returns:
        The (d,) mean and its (d, d) covariance ``(sum Lambda_k)^-1``.
    """
    info = np.linalg.pinv(np.asarray(covariances, dtype=np.float64), hermitian=True)
    cov = np.linalg.pinv(info.sum(0), hermitian=True)
    mean = cov @ np.einsum("kij,kj->i", info, np.asarray(values, dtype=np.float64))
    return mean, 0.5 * (cov + cov.T)


def fuse_in_tangent_space(anchor: np.ndarray, poses: Sequence[np.ndarray], covariances: Sequence[np.ndarray]
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Information-weighted mean of poses about ``anchor`` (module docstring, step 4).

    Args:
        anchor: (4, 4). poses: K (4, 4) (symmetric equivalents already aligned). covariances: K (6, 6).
    Returns:
        The fused (4, 4) pose and its (6, 6) covariance.
    """
    ref = Pose.from_matrix(torch.from_numpy(np.asarray(anchor, dtype=np.float64)))
    T = torch.from_numpy(np.stack(poses).astype(np.float64))
    deltas = pose_difference(Pose.from_matrix(T), Pose(ref.R.expand(len(poses), 3, 3), ref.t.expand(len(poses), 3)))
    delta, cov = information_weighted_mean(deltas.numpy(), np.stack(covariances))
    return perturb_pose(ref, torch.from_numpy(delta)).matrix().numpy(), cov


def _with_position(T: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.array(T, dtype=np.float64)
    out[:3, 3] = t
    return out


def associate(estimates: Sequence[PoseEstimate], models: Mapping[int, ObjectModel],
              config: AssociationConfig = AssociationConfig(), camera_centres: Sequence[np.ndarray] | None = None
              ) -> list[Candidate]:
    """Group world-frame hypotheses of all views into candidates (module docstring).

    Args:
        estimates: every view's world-frame estimates.
        models: object id -> model (diameter and symmetries).
        camera_centres: per view, the camera's position in the world (``T_world_camera[:3, 3]``):
            enables the ray gate (module docstring); None: position gates only.
    Returns:
        Candidates, highest score first.
    Raises:
        InvalidInputError: an estimate of an object without a model.
    """
    unknown = sorted({e.object_id for e in estimates} - set(models))
    if unknown:
        raise InvalidInputError(f"associate: estimates of objects without models: {unknown}")
    candidates: list[Candidate] = []
    by_object: dict[int, list[PoseEstimate]] = {}
    for e in estimates:
        by_object.setdefault(e.object_id, []).append(e)
    for object_id, hyps in by_object.items():
        model = models[object_id]
        diameter = float(model.diameter_m)
        linked = np.array([[i == j or _positions_consistent(a, b, diameter, config, camera_centres) for j, b in enumerate(hyps)]
                           for i, a in enumerate(hyps)], dtype=bool)
        for group in _components(linked):
            candidates.append(_candidate(object_id, [hyps[i] for i in group], model, config, linked[np.ix_(group, group)]))
    return sorted(candidates, key=lambda c: -c.score)


def _candidate(object_id: int, hyps: list[PoseEstimate], model: ObjectModel, config: AssociationConfig,
               linked: np.ndarray) -> Candidate:
    """One candidate from a group of hypotheses whose positions are ``linked`` (K, K) pairwise."""
    diameter = float(model.diameter_m)
    K = len(hyps)
    # agree[i, j]: j agrees with anchor i (positions linked, rotations close after aligning j's
    # symmetric equivalent to i).
    agree = linked.copy()
    for i in range(K):
        for j in range(K):
            if i != j and agree[i, j]:
                Tj = closest_equivalent(hyps[j].T_world_object, hyps[i].T_world_object, model.symmetries)
                agree[i, j] = rotation_angle_deg(Tj, hyps[i].T_world_object) <= config.agree_rotation_deg
    support = agree.sum(1)
    trace = np.array([np.trace(h.covariance[3:, 3:]) for h in hyps])
    anchor = min(range(K), key=lambda i: (-support[i], trace[i]))
    T_anchor = hyps[anchor].T_world_object
    members, alternatives = [], []
    for j in range(K):
        aligned, cov = equivalent_with_covariance(hyps[j].T_world_object, hyps[j].covariance,
                                                  closest_equivalent(hyps[j].T_world_object, T_anchor, model.symmetries))
        e = PoseEstimate(object_id, hyps[j].instance_id, aligned, cov, hyps[j].score, hyps[j].view_indices)
        (members if agree[anchor, j] else alternatives).append(e)
    if config.initial_pose == "fused" and len(members) > 1:
        T, cov = fuse_in_tangent_space(T_anchor, [m.T_world_object for m in members], [m.covariance for m in members])
    else:
        T, cov = T_anchor.copy(), hyps[anchor].covariance.copy()
    position_std = float(np.sqrt(max(np.linalg.eigvalsh(cov[:3, :3]).max(), 0.0)))
    if config.initial_pose == "fused" and alternatives and position_std > config.weak_position_std_diameters * diameter:
        # The agreeing views cannot pin the position (e.g. one RGB view: depth unknown). Where the
        # object is does not depend on which way it is turned: every view's position (the
        # disagreeing ones too) goes into the position, which triangulates the views' rays.
        T[:3, 3], cov[:3, :3] = information_weighted_mean(np.stack([h.T_world_object[:3, 3] for h in hyps]),
                                                          np.stack([h.covariance[:3, :3] for h in hyps]))
        cov[:3, 3:] = cov[3:, :3] = 0.0  # position and rotation now come from different sets of views
        alternatives = [PoseEstimate(a.object_id, a.instance_id, _with_position(a.T_world_object, T[:3, 3]), a.covariance, a.score,
                                     a.view_indices) for a in alternatives]
    views = tuple(sorted({v for h in hyps for v in h.view_indices}))
    return Candidate(object_id, T, cov, max(h.score for h in hyps), tuple(members), tuple(alternatives), views)


__all__ = ["AssociationConfig", "Candidate", "associate", "closest_equivalent", "equivalent_with_covariance", "fuse_in_tangent_space", "information_weighted_mean",
           "rotation_angle_deg"]
