"""Matching: template crops, identity of rendered objects, pose priors from templates, NMS.

Three procedural objects are onboarded once per module (42 templates of 96 px, a temporary
cache); the test scenes are rendered with the GL renderer under another light than the
templates', on a grey background, at poses that are no template's.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pose_node.core.crop import crop_cameras, crop_images, crop_proposals, mask_outline, ray_rotation
from pose_node.core.errors import InvalidInputError
from pose_node.detection.matching import (
    MatchingConfig,
    TemplateBank,
    colour_histograms,
    describe_crops,
    match,
    nms_masks,
    priors_for_matches,
    template_parts,
    texture_levels,
    white_balance_gains,
    with_grey_variant,
)
from pose_node.detection.proposal_types import Proposal, box_from_mask
from pose_node.features import BackboneConfig, create_backbone
from pose_node.onboarding.cache import RendererPool, load_or_onboard
from pose_node.onboarding.procedural import make_procedural_objects
from pose_node.onboarding.templates import TemplateConfig, masked_template_images

TEMPLATES = TemplateConfig(template_size_px=96, num_surface_points=64)
MATCHING = MatchingConfig()
WIDTH, HEIGHT = 320, 240
K = np.array([[300.0, 0.0, 159.5], [0.0, 300.0, 119.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def scene_renderer(make_renderer):
    return make_renderer(WIDTH, HEIGHT)


@pytest.fixture(scope="module")
def objects():
    return make_procedural_objects(3, seed=23, target_faces=1500)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(BackboneConfig())


@pytest.fixture(scope="module")
def onboarded(objects, backbone, scene_renderer, tmp_path_factory):
    cache = tmp_path_factory.mktemp("onboarding")
    with RendererPool() as pool:
        templates = [load_or_onboard(m, pool, backbone, TEMPLATES, cache)[0] for m in objects]
    parts = [template_parts(t, backbone, MATCHING) for t in templates]
    return templates, TemplateBank.build(templates, parts, MATCHING, backbone.device)


def _rotation(axis, angle_rad) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * x + (1 - np.cos(angle_rad)) * x @ x


def _angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a.T @ R_b) - 1) / 2, -1, 1))))


def _render(renderer, models, T_camera_object, background=(90, 90, 90)):
    handles = [renderer.add_object(m) for m in models]
    out = renderer.render(K[None], np.asarray(T_camera_object)[None], handles, outputs=("rgb", "instance"),
                          light_dir_cam=np.array([[0.4, 0.6, 1.0]]), ambient=np.array([0.3]), diffuse=np.array([0.7]),
                          background=np.full((1, HEIGHT, WIDTH, 3), background, np.uint8))
    return out.rgb[0], out.instance[0]


# --------------------------------------------------------------------------------------------
# Crop of a template image (the crop geometry itself: test/core/test_crop.py)
# --------------------------------------------------------------------------------------------


def test_whole_template_crop_is_exactly_the_onboarding_input(onboarded):
    # The query path applied to a template image with the whole-template crop reproduces the
    # image the onboarding descriptors were computed on: queries and templates compare alike.
    templates, _ = onboarded
    t = templates[0]
    S = t.size_px
    rgb = torch.from_numpy(t.rgb[:4]).permute(0, 3, 1, 2).float() / 255
    crops = crop_images(rgb, torch.from_numpy(t.mask[:4]), torch.from_numpy(t.K_template), torch.eye(3).expand(4, 3, 3),
                        torch.full((4,), t.K_template[0, 0], dtype=torch.float64), S, t.config.background_rgb)
    torch.testing.assert_close(crops, masked_template_images(t, 0, 4, torch.device("cpu")), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------


def test_matching_identifies_rendered_objects(onboarded, objects, backbone, scene_renderer):
    templates, bank = onboarded
    rng = np.random.default_rng(5)
    correct, total = 0, 0
    for trial in range(2):
        T = []
        for k, x in enumerate((-0.13, 0.0, 0.13)):
            pose = np.eye(4)
            pose[:3, :3] = _rotation(rng.normal(size=3), rng.uniform(0, np.pi))
            pose[:3, 3] = [x, 0.02 * (k - 1), 0.65 + 0.05 * trial]
            T.append(pose)
        rgb, instance = _render(scene_renderer, objects, T)
        proposals = []
        for k in range(3):
            mask = instance == k + 1
            assert mask.sum() > 200
            proposals.append(Proposal(mask, box_from_mask(mask), 1.0, "depth"))
        crops, crop_masks, _, _ = crop_proposals(rgb, K, proposals, bank.size_px, bank.crop_margin_fraction, bank.background_rgb)
        result = match(bank.embed(describe_crops(backbone, crops, crop_masks, MATCHING)), bank, MATCHING.top_k)
        assert result.object_index.device == bank.device
        predicted = [bank.object_ids[i] for i in result.object_index.tolist()]
        correct += sum(p == m.object_id for p, m in zip(predicted, objects))
        total += 3
        # Each object's own score is the best and above the default threshold.
        for k, m in enumerate(objects):
            assert float(result.object_scores[k, bank.object_index(m.object_id)]) >= MATCHING.score_threshold
    assert correct == total


def test_match_respects_the_object_mask_and_validates(onboarded):
    _, bank = onboarded
    descriptors = bank.descriptors[[0, bank.templates_per_object]]  # a template of objects 0 and 1
    result = match(descriptors, bank, 5)
    assert result.object_index.tolist() == [0, 1]
    assert result.top_templates.shape == (2, 5) and result.top_templates[0, 0] == 0
    masked = match(descriptors, bank, 5, object_mask=torch.tensor([False, False, True]))
    assert masked.object_index.tolist() == [2, 2]
    assert torch.isinf(masked.object_scores[:, :2]).all()
    with pytest.raises(InvalidInputError):
        match(descriptors[:, :10], bank)
    with pytest.raises(InvalidInputError):
        match(descriptors, bank, object_mask=torch.zeros(3, dtype=torch.bool))
    empty = match(descriptors[:0], bank)
    assert empty.object_index.shape == (0,)
    # Per-proposal masks (metric-size verification): each row keeps its own objects.
    rows = match(descriptors, bank, 5, object_mask=torch.tensor([[False, True, True], [False, False, False]]))
    assert rows.object_index[0] == 1 and torch.isinf(rows.score[1]) and rows.score[1] < 0


def test_white_balance_search_matches_an_object_under_a_tinted_light():
    # Uniform patches of three colours; the query is the first one under a reddish light
    # (red gain 1.3, blue 1 / 1.3 relative to green), where its chromaticity falls in another bin.
    colours = torch.tensor([[0.5, 0.4, 0.3], [0.6, 0.3, 0.3], [0.3, 0.5, 0.4]])
    crops = colours[:, :, None, None].expand(3, 3, 8, 8).clone()
    masks = torch.ones(3, 8, 8)
    templates = colour_histograms(crops, masks, bins=8, min_brightness=0.05)
    tint = torch.tensor([1.3, 1.0, 1.0 / 1.3])
    query = (crops[:1] * tint[None, :, None, None]).clamp(0, 1)
    plain = colour_histograms(query, masks[:1], bins=8, min_brightness=0.05)
    assert float(plain[0] @ templates[0]) < 0.5
    gains = white_balance_gains(1.3)
    assert gains.shape == (9, 3) and torch.equal(gains[0], torch.ones(3))  # the crop as it is comes first
    variants = colour_histograms(query, masks[:1], bins=8, min_brightness=0.05, gains=gains)
    assert variants.shape == (1, 9, 64) and torch.allclose(variants[0, 0], plain[0])
    best = (variants[0] @ templates.T).amax(0)
    assert float(best[0]) > 0.99 and int(best.argmax()) == 0
    assert white_balance_gains(1.0).shape == (1, 3)


def test_texture_levels_separate_plain_from_printed_surfaces_at_any_size_and_exposure():
    rng = np.random.default_rng(0)
    S = 96
    checker = ((np.indices((S, S)) // 8).sum(0) % 2).astype(np.float32)  # 8 px squares
    printed = torch.from_numpy(0.3 + 0.4 * checker)[None, None].expand(1, 3, S, S).clone()
    plain = torch.full((1, 3, S, S), 0.6) + torch.from_numpy(rng.normal(0, 0.01, (1, 3, S, S)).astype(np.float32))
    masks = torch.zeros(1, S, S)
    masks[:, 8:-8, 8:-8] = 1.0
    levels = texture_levels(torch.cat([printed, plain]), masks.expand(2, S, S))
    assert float(levels[0]) > 10 * float(levels[1])
    # The same print seen half as large (its crop upsampled from 48 px) and half as bright.
    small = torch.nn.functional.interpolate(printed[..., ::2, ::2], size=(S, S), mode="bilinear", align_corners=False)
    assert float(texture_levels(0.5 * small, masks)[0]) == pytest.approx(float(levels[0]), rel=0.35)


def test_match_with_descriptor_variants_takes_each_templates_best_variant(onboarded):
    _, bank = onboarded
    T = bank.templates_per_object
    # Two variants of one query: a template of object 0 and one of object 2.
    variants = bank.descriptors[[0, 2 * T]][None]
    result = match(variants, bank, 1)
    singles = [match(variants[:, g], bank, 1) for g in range(2)]
    assert torch.allclose(result.object_scores, torch.maximum(singles[0].object_scores, singles[1].object_scores))
    with pytest.raises(InvalidInputError):
        match(variants[..., :10], bank)


def test_grey_variant_lets_a_painted_untextured_object_match_its_plain_templates(objects, backbone, scene_renderer, tmp_path):
    # Object 0 onboarded as a plain CAD model (no colours: grey templates), the others with
    # their colours; the part in the scene is painted blue.
    plain = replace(objects[0], texture=None, uv=None, vertex_colors=None)
    models = [plain, *objects[1:]]
    with RendererPool() as pool:
        templates = [load_or_onboard(m, pool, backbone, TEMPLATES, tmp_path)[0] for m in models]
    bank = TemplateBank.build(templates, [template_parts(t, backbone, MATCHING) for t in templates], MATCHING, backbone.device)
    untextured = torch.tensor([True, False, False])
    painted = replace(plain, vertex_colors=np.tile(np.array([[40, 90, 230]], np.uint8), (len(objects[0].vertices), 1)))
    poses = []
    for k, x in enumerate((-0.13, 0.0, 0.13)):
        pose = np.eye(4)
        pose[:3, :3] = _rotation([1.0, 0.3 * k, 0.2], 0.7 + 0.4 * k)
        pose[:3, 3] = [x, 0.0, 0.65]
        poses.append(pose)
    rgb, instance = _render(scene_renderer, [painted, *objects[1:]], poses)
    proposals = [Proposal(instance == k + 1, box_from_mask(instance == k + 1), 1.0, "depth") for k in range(3)]
    crops, crop_masks, _, _ = crop_proposals(rgb, K, proposals, bank.size_px, bank.crop_margin_fraction, bank.background_rgb)
    parts = describe_crops(backbone, crops, crop_masks, MATCHING)
    without = match(bank.embed(parts), bank, MATCHING.top_k)
    grey_parts, offsets = with_grey_variant(parts, crops, crop_masks, MATCHING, untextured)
    assert grey_parts.colour.shape == (3, 2, parts.colour.shape[-1]) and torch.equal(grey_parts.colour[:, 0], parts.colour)
    assert offsets.shape == (2, 3) and torch.equal(offsets[0], torch.zeros(3))
    assert offsets[1, 0] == -MATCHING.untextured_grey_margin and torch.isinf(offsets[1, 1:]).all()
    result = match(bank.embed(grey_parts), bank, MATCHING.top_k, variant_offsets=offsets)
    # Without the grey variant the painted part is taken for another object; with it, it scores
    # far higher against its plain model and is identified; the coloured objects keep their own
    # scores and identities.
    assert without.object_index[0] != 0
    assert float(result.object_scores[0, 0]) > float(without.object_scores[0, 0]) + 0.2
    assert result.object_index.tolist() == [0, 1, 2]
    assert torch.allclose(result.object_scores[1:, 1:], without.object_scores[1:, 1:])
    # Nothing to add: no untextured object, or the margin off.
    assert with_grey_variant(parts, crops, crop_masks, MATCHING, torch.zeros(3, dtype=torch.bool))[1] is None
    assert with_grey_variant(parts, crops, crop_masks, replace(MATCHING, untextured_grey_margin=None), untextured)[1] is None
    with pytest.raises(InvalidInputError):
        match(bank.embed(parts), bank, variant_offsets=offsets)  # offsets need descriptor variants


# --------------------------------------------------------------------------------------------
# Pose priors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uv", [(159.5, 119.5), (255.0, 60.0), (60.0, 190.0)])
@pytest.mark.parametrize("template_index", [3, 17, 30])
def test_pose_prior_of_the_matching_template(onboarded, objects, scene_renderer, uv, template_index):
    """Render object 0 as template ``i`` sees it, but turned to the ray through ``uv`` (up to
    ~22 degrees off the optical axis) and 1.3 times farther: the prior from template ``i`` must
    give back the pose (what remains is the perspective of another distance)."""
    templates, bank = onboarded
    t = templates[0]
    T_template = t.T_camera_object[template_index]
    d_template = (T_template[:3, :3] @ t.sphere_center_obj_m + T_template[:3, 3])[2]
    R_q = ray_rotation(K, np.asarray(uv))
    T_gt = np.eye(4)
    T_gt[:3, :3] = R_q @ T_template[:3, :3]
    T_gt[:3, 3] = 1.3 * d_template * R_q[:, 2] - T_gt[:3, :3] @ t.sphere_center_obj_m  # the sphere centre on the ray
    _, instance = _render(scene_renderer, [objects[0]], T_gt[None])
    mask = instance == 1
    assert mask.sum() > 300 and not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    R_crop, focal = crop_cameras(K, [mask_outline(mask)], bank.size_px, bank.crop_margin_fraction)
    prior = priors_for_matches(bank, np.array([0]), np.array([[template_index]]), R_crop, focal)[0, 0]
    assert _angle_deg(prior[:3, :3], T_gt[:3, :3]) < 1.5
    distance_gt = np.linalg.norm(T_gt[:3, 3])
    assert abs(np.linalg.norm(prior[:3, 3]) - distance_gt) < 0.05 * distance_gt
    anchor = prior[:3, :3] @ t.sphere_center_obj_m + prior[:3, 3]
    assert np.degrees(np.arccos(min(1.0, anchor @ R_q[:, 2] / np.linalg.norm(anchor)))) < 1.0


def test_pose_prior_of_the_best_matching_template_is_within_the_sampling_angle(onboarded, objects, backbone, scene_renderer):
    """A view between templates: the best-scoring template's prior is at most about one
    icosphere step (42 viewpoints: neighbours ~30 degrees apart) from the truth."""
    templates, bank = onboarded
    t = templates[1]
    T_gt = np.eye(4)
    T_gt[:3, :3] = _rotation([1.0, 0.3, 0.0], np.radians(12)) @ t.T_camera_object[11, :3, :3]  # 12 degrees off template 11
    T_gt[:3, 3] = np.array([0.02, -0.01, 0.6]) - T_gt[:3, :3] @ t.sphere_center_obj_m  # sphere centre 0.6 m away
    rgb, instance = _render(scene_renderer, [objects[1]], T_gt[None])
    mask = instance == 1
    proposal = Proposal(mask, box_from_mask(mask), 1.0, "depth")
    crops, crop_masks, R_crop, focal = crop_proposals(rgb, K, [proposal], bank.size_px, bank.crop_margin_fraction,
                                                      bank.background_rgb)
    result = match(bank.embed(describe_crops(backbone, crops, crop_masks, MATCHING)), bank, MATCHING.top_k)
    assert bank.object_ids[int(result.object_index[0])] == objects[1].object_id
    priors = priors_for_matches(bank, result.object_index.numpy(), result.top_templates.numpy(), R_crop, focal)[0]
    assert priors.shape == (MATCHING.top_k, 4, 4)
    assert min(_angle_deg(p[:3, :3], T_gt[:3, :3]) for p in priors) < 35.0
    distance_gt = np.linalg.norm(T_gt[:3, 3])
    assert abs(np.linalg.norm(priors[0][:3, 3]) - distance_gt) < 0.15 * distance_gt


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------


def test_nms_drops_duplicates_and_keeps_separate_instances():
    H, W = 50, 100
    a = np.zeros((H, W), bool)
    a[10:30, 10:30] = True
    a_dup = np.zeros((H, W), bool)
    a_dup[11:31, 12:30] = True  # IoU with a: 342 / 418 = 0.82
    b = np.zeros((H, W), bool)
    b[10:30, 60:80] = True  # same size as a, far away: IoU 0
    keep = nms_masks([a_dup, a, b], np.array([0.7, 0.9, 0.5]), 0.25)
    assert keep.tolist() == [1, 2]
    assert nms_masks([a_dup, a], np.array([0.7, 0.9]), 0.9).tolist() == [1, 0]  # IoU 0.82 <= 0.9: both kept
    assert nms_masks([], np.zeros(0), 0.25).tolist() == []
