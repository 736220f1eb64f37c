"""A clean synthetic multi-view scene for refinement tests: one procedural object, 4 calibrated
cameras on a ring looking at it, textured background, depth (no ROS, no dataset)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from helpers.scene import look_at
from pose_node.core.geometry import Pose, invert_rigid, perturb_pose, so3_exp
from pose_node.core.types import Camera, ObjectModel, View
from pose_node.onboarding.procedural import make_procedural_objects

WIDTH, HEIGHT = 640, 480
K = np.array([[600.0, 0.0, 319.5], [0.0, 600.0, 239.5], [0.0, 0.0, 1.0]])


@dataclass
class Scene:
    model: ObjectModel
    T_world_object: np.ndarray
    views: list[View]


def make_scene(renderer, seed: int = 7, num_views: int = 4, pixel_noise: float = 0.0, depth_noise_m: float = 0.0,
               noise_seed: int = 0, model: ObjectModel | None = None) -> Scene:
    """Render the object (default: procedural, from ``seed``) from ``num_views`` cameras on a ring
    (``renderer``: WIDTH x HEIGHT)."""
    model = make_procedural_objects(1, seed=seed)[0] if model is None else model
    rng = np.random.default_rng(seed)
    T_wo = np.eye(4)
    T_wo[:3, :3] = so3_exp(torch.from_numpy(rng.normal(size=3))).numpy()
    T_wo[:3, 3] = [0.02, -0.01, 0.05]
    cams = [look_at(np.array([0.6 * math.cos(a), 0.6 * math.sin(a), 0.45]), np.zeros(3))
            for a in np.linspace(0.0, 2.0 * math.pi, 5)[:4]][:num_views]
    small = (rng.random((len(cams), HEIGHT // 8, WIDTH // 8, 3)) * 255).astype(np.uint8)
    background = np.stack([cv2.resize(b, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR) for b in small])
    handle = renderer.add_object(model)
    T_co = np.stack([invert_rigid(c) @ T_wo for c in cams])[:, None]
    out = renderer.render(np.repeat(K[None], len(cams), 0), T_co, [handle], outputs=("rgb", "depth"), background=background)
    noise = np.random.default_rng(noise_seed)
    views = []
    for i, c in enumerate(cams):
        rgb = out.rgb[i]
        if pixel_noise > 0:
            rgb = np.clip(rgb + noise.normal(0.0, pixel_noise * 255.0, rgb.shape), 0, 255).astype(np.uint8)
        depth = out.depth[i].astype(np.float64)
        if depth_noise_m > 0:
            depth = depth + noise.normal(0.0, depth_noise_m, depth.shape)
        depth[out.depth[i] == 0] = np.nan
        views.append(View(Camera(K, WIDTH, HEIGHT, T_world_camera=c), rgb, depth.astype(np.float32), name=f"cam{i}"))
    return Scene(model, T_wo, views)


def perturbed(T: np.ndarray, translation_m: float, rotation_deg: float, seed: int) -> np.ndarray:
    """``T`` moved by exactly ``translation_m`` and turned by exactly ``rotation_deg`` (random axes)."""
    d = torch.from_numpy(np.random.default_rng(seed).normal(size=6))
    d[:3] = d[:3] / d[:3].norm() * translation_m
    d[3:] = d[3:] / d[3:].norm() * math.radians(rotation_deg)
    return perturb_pose(Pose.from_matrix(torch.from_numpy(T)), d).matrix().numpy()


def errors(T: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """Translation error (m) and rotation error (deg)."""
    cos = (np.trace(T[:3, :3].T @ T_gt[:3, :3]) - 1.0) / 2.0
    return float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3])), math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
