"""Descriptor matching of class-agnostic proposals to object templates (CNOS-style).

Each proposal is cropped like a template (:func:`pose_node.core.crop.crop_images`), described (see "Descriptor"
below) and compared with every template of every object by cosine similarity; an object's
score is the mean of its ``top_k`` best template similarities; the proposal takes the
best-scoring object. Detections above a score threshold go through a class-agnostic mask NMS
(:func:`nms_masks`), so two instances of one object stay apart while duplicates of one instance
go. The best templates give pose priors in the real camera (:func:`template_pose_priors`).

Crops follow the crop-camera convention of :mod:`pose_node.core.crop` (queries and templates use
the same code).

Templates are rendered with the object's bounding sphere filling the template (see
:mod:`pose_node.onboarding.templates`), so an elongated object seen end-on fills less of its
template than of a box crop. :func:`template_parts` therefore re-crops every template around its
own mask with this convention (``framing="mask_box"``, the default; the name says the crop
is fitted to the mask) and describes the
re-cropped templates, so proposals and templates compare like with like; ``framing="sphere"``
uses the templates as rendered (their crop camera is the template camera).

Descriptor: ``normalize([g, w * c])`` where ``g`` is the backbone's global descriptor of the
crop and ``c`` a square-rooted chromaticity histogram of its object pixels
(:func:`colour_histograms`), each minus its mean over all templates in the bank and then
normalized (``MatchingConfig.centre_descriptors``), ``w = colour_weight``; so the cosine is the
mean of the two parts' cosines for ``w = 1``. Why not the global descriptor alone, as CNOS:
EfficientNet-Lite0's pooled head (an ImageNet embedding) is far less discriminative than a
DINOv2 class token; on generated tuning scenes (GT masks, 42 templates) it identified 77-86 %
of procedural objects (96 % of YCB objects), centring alone did not change that, and adding the
colour part made it 100 % on both with a margin of 0.31-0.36 to the best wrong object.
``colour_weight=0`` and ``centre_descriptors=False`` give the plain CNOS descriptor.

Queries may come in variants, each template compared with its best one: white-balance gains of
the colour part (``colour_search_gain``), and a grey colour part for objects whose mesh has no
colours (``untextured_grey_margin``: a plain CAD model says nothing about the paint of the part).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pose_node.core.crop import box_outline, crop_cameras, crop_images, mask_outline
from pose_node.core.errors import InvalidInputError, check_fields
from pose_node.detection.metrics import pairwise_mask_iou
from pose_node.features.backbones import Backbone
from pose_node.onboarding.templates import ObjectTemplates

logger = logging.getLogger(__name__)

FRAMINGS: tuple[str, ...] = ("mask_box", "sphere")


@dataclass(frozen=True)
class MatchingConfig:
    """Parameters of proposal-to-template matching.

    The crop size and margin are not here: they are the templates' (``TemplateConfig.
    template_size_px`` / ``crop_margin_fraction``, carried by :class:`TemplateBank`), so a crop can
    never be framed differently from the templates it is compared with.

    Attributes:
        top_k: an object's score is the mean of its ``top_k`` best template similarities (CNOS: 5).
        score_threshold: detections scoring below this are dropped. CNOS keeps >= 0.15 with DINOv2
            class tokens; scores here are cosines of centred EfficientNet-Lite0 + colour
            descriptors (module docstring), on another scale. 0.4 was chosen on generated
            tuning data (640x480; procedural and YCB objects; seeds 101 / 102, not used for
            reporting): it keeps every correctly identified proposal there (lowest such score
            0.45 procedural, 0.57 YCB; 0.41 on a 320x240 scene, where objects are small and
            crops blurrier) and rejects every proposal of an object left out of the bank on the
            procedural data, but only 38 % of them on the YCB data (whose objects look alike to
            this descriptor; 0.5 rejects 85 % there but loses 9 % of the procedural objects).
            With the white-balance search (``colour_search_gain``), the texture check
            (``min_texture_ratio``) and the metric-size verification of
            :mod:`pose_node.detection.verification`, 0.4 is still the choice on the
            out-of-domain validation split (``pose_ood_set --split validation``, path-traced, 32
            views): recall 0.76 / precision 0.69 there (0.35: 0.78 / 0.66, 0.45: 0.71 / 0.69),
            and recall 0.98 / precision 0.99 on the generated procedural bench (seed 2026).
        nms_iou: class-agnostic NMS: a detection whose mask IoU with a better one exceeds this
            is dropped (CNOS: 0.25).
        max_detections: best detections kept per view after NMS.
        num_pose_priors: templates (best first) whose poses are returned per detection (<= top_k
            is usual; at most the object's template count).
        framing: ``"mask_box"`` (re-crop templates around their masks, like the proposals) or
            ``"sphere"`` (templates as rendered); see the module docstring.
        colour_weight: weight ``w`` of the colour part of the descriptor (0: the backbone's global
            descriptor alone, as CNOS); see "Descriptor" in the module docstring.
        colour_bins: bins per chromaticity axis of the colour histogram (``bins**2`` values).
        colour_min_brightness: pixels darker than this (mean RGB in [0, 1]) are left out of the
            colour histogram (their chromaticity is noise).
        colour_search_gain: white-balance search of the queries' colour part: a query's colour
            histogram is also computed with its red and blue channels scaled by ``1 / g`` or
            ``g`` (:func:`white_balance_gains`, 9 variants) and each template is compared with
            the variant most like it, so an object under a coloured light or seen by a camera
            with another white balance still matches its own colours (1: off; the global
            part does not change with it). Templates are rendered under white light and are
            never varied. The detector searches in RGB-D mode only (see there).
        min_texture_ratio: an RGB-D proposal whose silhouette is not occluded (see
            :mod:`pose_node.detection.verification`) cannot be an object whose templates are
            textured (:func:`texture_levels`, median over the object's templates) more than
            ``1 / ratio`` times the proposal: an untextured primitive is no printed box, whatever
            its colours (the converse is allowed: sensor noise and clutter add texture; a partly
            hidden object may show a plain side). 0.5 keeps 98 % of the proposals of the
            out-of-domain validation split's objects and rules out most of its distractors for
            its well-textured objects (0: off).
        untextured_grey_margin: the colour of an untextured object (:func:`~pose_node.core.types.is_untextured`:
            its templates are rendered plain grey) is unknown, so its templates are also compared
            with a grey copy of the query's colour part (:func:`with_grey_variant`), at this
            penalty to the similarity: a plainly painted part still matches its CAD model, while
            objects with colours keep the advantage of theirs (None: off). On the out-of-domain
            validation split (RGB-D) 0.25 gives recall 0.76 -> 0.81 at precision 0.60 -> 0.60
            and mask AP 0.565 -> 0.580 (0: 0.78 at 0.55; 0.15: 0.82 at 0.57); RGB recall 0.41 ->
            0.55 at precision 0.33.
        centre_descriptors: subtract the mean template descriptor (each part) before the cosine.
        descriptor_batch_size: crops per backbone call.
    """

    top_k: int = 5
    score_threshold: float = 0.4
    nms_iou: float = 0.25
    max_detections: int = 50
    num_pose_priors: int = 5
    framing: str = "mask_box"
    colour_weight: float = 1.0
    colour_bins: int = 8
    colour_min_brightness: float = 0.05
    colour_search_gain: float = 1.3
    min_texture_ratio: float = 0.5
    untextured_grey_margin: float | None = 0.25
    centre_descriptors: bool = True
    descriptor_batch_size: int = 32

    def __post_init__(self) -> None:
        checks = [
            ("top_k", self.top_k >= 1), ("score_threshold", -1.0 <= self.score_threshold <= 1.0),
            ("nms_iou", 0.0 < self.nms_iou <= 1.0), ("max_detections", self.max_detections >= 1),
            ("num_pose_priors", self.num_pose_priors >= 0), ("framing", self.framing in FRAMINGS),
            ("descriptor_batch_size", self.descriptor_batch_size >= 1), ("colour_weight", self.colour_weight >= 0.0),
            ("colour_bins", 2 <= self.colour_bins <= 64), ("colour_min_brightness", 0.0 <= self.colour_min_brightness < 1.0),
            ("colour_search_gain", self.colour_search_gain >= 1.0), ("min_texture_ratio", self.min_texture_ratio >= 0.0),
            ("untextured_grey_margin", self.untextured_grey_margin is None or self.untextured_grey_margin >= 0.0),
        ]
        check_fields(self, checks)


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def colour_histograms(crops: torch.Tensor, masks: torch.Tensor, bins: int, min_brightness: float,
                      gains: torch.Tensor | None = None) -> torch.Tensor:
    """Square-rooted chromaticity histograms of the object pixels of crops.

    Chromaticity ``(r, g) = (R, G) / (R + G + B)`` does not change with the light's intensity;
    each pixel adds its mask weight to one of ``bins x bins`` cells; pixels darker than
    ``min_brightness`` (mean of R, G, B) are left out. The histogram is normalized to sum 1 and
    square-rooted, so it has unit L2 norm (zero when no pixel counts) and the dot product of two
    is their Bhattacharyya coefficient.

    Args:
        crops: (B, 3, S, S) float RGB in [0, 1].
        masks: (B, S, S) float object weights in [0, 1].
        gains: (G, 3) per-channel gains: one histogram per gain, of the crop with its channels
            scaled by it (which pixels count is decided on the crop as it is).
    Returns:
        (B, bins * bins) float32 on the crops' device; (B, G, bins * bins) with ``gains``.
    """
    x = crops.float().clamp_min(1e-6)
    weight = (masks.float() * (x.sum(1) / 3.0 > min_brightness).float()).flatten(1)
    variants = x[:, None] if gains is None else x[:, None] * gains.to(x.device, x.dtype)[None, :, :, None, None]
    B, G = variants.shape[:2]
    variants = variants.flatten(0, 1)
    total = variants.sum(1)
    cell = ((variants[:, :2] / total[:, None]) * bins).long().clamp_(0, bins - 1)
    index = (cell[:, 0] * bins + cell[:, 1]).flatten(1)
    hist = torch.zeros(B * G, bins * bins, device=crops.device).scatter_add_(1, index, weight.repeat_interleave(G, 0))
    hist = (hist / hist.sum(1, keepdim=True).clamp_min(1e-12)).sqrt().view(B, G, bins * bins)
    return hist[:, 0] if gains is None else hist


def white_balance_gains(max_gain: float) -> torch.Tensor:
    """(9, 3) gains ``(r, 1, b)`` with ``r, b`` in ``{1 / max_gain, 1, max_gain}``, identity first
    (``max_gain`` 1: the identity alone, (1, 3))."""
    if max_gain == 1.0:
        return torch.ones(1, 3)
    steps = (1.0, 1.0 / max_gain, max_gain)
    return torch.tensor([(r, 1.0, b) for r in steps for b in steps])


@dataclass(frozen=True)
class DescriptorParts:
    """Raw descriptor parts of B crops: ``global_`` (B, D) the backbone's unit-norm global
    descriptor, ``colour`` (B, C) :func:`colour_histograms` (C = 0 with ``colour_weight`` 0), or
    (B, G, C) for the G white-balance variants of a query (``colour_search_gain``)."""

    global_: torch.Tensor
    colour: torch.Tensor


def describe_crops(backbone: Backbone, crops: torch.Tensor, crop_masks: torch.Tensor, config: MatchingConfig, *,
                   query: bool = False) -> DescriptorParts:
    """Descriptor parts of crops (B, 3, S, S) with masks (B, S, S), on the backbone's device;
    ``query``: proposals (colour variants of ``config.colour_search_gain``), not templates."""
    B = crops.shape[0]
    chunks = [backbone(crops[i:i + config.descriptor_batch_size]).global_descriptor.float()
              for i in range(0, B, config.descriptor_batch_size)]
    global_ = F.normalize(torch.cat(chunks), dim=-1) if chunks else torch.zeros(0, backbone.descriptor_dim, device=backbone.device)
    return DescriptorParts(global_, describe_colour(crops, crop_masks, config, query=query))


# --------------------------------------------------------------------------------------------
# Template bank
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateParts:
    """What the bank needs of one object's T templates (cacheable, see the detector).

    Attributes:
        global_: (T, D) float32 unit-norm backbone descriptors of the template crops.
        colour: (T, C) float32 colour histograms of the template crops.
        R_template_crop: (T, 3, 3) float64 crop camera orientations in the template cameras.
        crop_focal_px: (T,) float64 crop camera focal lengths, pixels.
        texture: (T,) float32 :func:`texture_levels` of the template crops.
    """

    global_: np.ndarray
    colour: np.ndarray
    R_template_crop: np.ndarray
    crop_focal_px: np.ndarray
    texture: np.ndarray


def template_parts(templates: ObjectTemplates, backbone: Backbone, config: MatchingConfig) -> TemplateParts:
    """Crop one object's templates like proposals (``config.framing``) and describe them.

    With ``framing="sphere"`` the crop camera is the template camera (the crop is the template)
    and the onboarding descriptors are reused (they were computed on exactly that image);
    otherwise each template is re-cropped around its mask (module docstring).

    Raises:
        InvalidInputError: sphere framing with descriptors missing or from another backbone.
    """
    T, S = templates.num_templates, templates.size_px
    device = backbone.device
    K_t = templates.K_template
    if config.framing == "sphere":
        if templates.descriptors is None or templates.backbone_cache_key != backbone.cache_key:
            raise InvalidInputError(f"object {templates.object_id}: templates have no descriptors of backbone {backbone.cache_key!r}")
        R, focal = np.broadcast_to(np.eye(3), (T, 3, 3)).copy(), np.full(T, 0.5 * (K_t[0, 0] + K_t[1, 1]))
    else:
        outlines = [mask_outline(m) if m.any() else box_outline((0, 0, S, S)) for m in templates.mask]
        R, focal = crop_cameras(K_t, outlines, S, templates.config.crop_margin_fraction)
    K = torch.from_numpy(K_t)
    globals_, colours, textures = [], [], []
    for start in range(0, T, config.descriptor_batch_size):
        stop = min(start + config.descriptor_batch_size, T)
        rgb = torch.from_numpy(templates.rgb[start:stop]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        mask = torch.from_numpy(templates.mask[start:stop]).to(device)
        crops, crop_masks = crop_images(rgb, mask, K, torch.from_numpy(R[start:stop]), torch.from_numpy(focal[start:stop]),
                                        S, templates.config.background_rgb, return_masks=True)
        if config.framing == "sphere":
            parts = DescriptorParts(torch.from_numpy(templates.descriptors[start:stop]).to(device),
                                    describe_colour(crops, crop_masks, config))
        else:
            parts = describe_crops(backbone, crops, crop_masks, config)
        globals_.append(parts.global_.cpu())
        colours.append(parts.colour.cpu())
        textures.append(texture_levels(crops, crop_masks).cpu())
    return TemplateParts(torch.cat(globals_).numpy().astype(np.float32), torch.cat(colours).numpy().astype(np.float32), R, focal,
                         torch.cat(textures).numpy().astype(np.float32))


def texture_levels(crops: torch.Tensor, masks: torch.Tensor, size_px: int = 24, erosion_px: int = 1) -> torch.Tensor:
    """How textured the object pixels of crops are: (B,) float32.

    The crops are first area-averaged to ``size_px`` (a small or distant object's crop is an
    upsampled, blurred image; at this coarse scale it is as sharp as a template); then the mean
    absolute difference of horizontally and vertically adjacent grey values inside the mask
    eroded by ``erosion_px`` (so the silhouette's edge does not count), over the mean grey value
    there (so exposure does not change it). Untextured surfaces (the distractor primitives of a
    workcell, a white box) score a few hundredths, printed packaging a tenth or more.

    Args:
        crops: (B, 3, S, S) float RGB in [0, 1]. masks: (B, S, S) float weights in [0, 1].
    """
    grey = F.adaptive_avg_pool2d(crops.float().mean(1, keepdim=True), size_px)
    small_mask = (F.adaptive_avg_pool2d(masks.float()[:, None], size_px) > 0.5).float()
    k = 2 * erosion_px + 1
    inner = (F.avg_pool2d(small_mask, k, stride=1, padding=erosion_px, count_include_pad=True) > 1.0 - 0.5 / (k * k)).float()
    gradient = torch.zeros_like(grey)
    gradient[..., :, 1:] += (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    gradient[..., 1:, :] += (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    count = inner.sum((1, 2, 3)).clamp_min(1.0)
    mean_grey = (grey * inner).sum((1, 2, 3)) / count
    return (gradient * inner).sum((1, 2, 3)) / count / mean_grey.clamp_min(1e-3)


def describe_colour(crops: torch.Tensor, crop_masks: torch.Tensor, config: MatchingConfig, *, query: bool = False) -> torch.Tensor:
    """The colour part alone (B, C) (C = 0 when ``colour_weight`` is 0); (B, G, C) for queries
    with a white-balance search (``colour_search_gain`` > 1)."""
    if config.colour_weight > 0:
        gains = white_balance_gains(config.colour_search_gain) if query and config.colour_search_gain > 1.0 else None
        return colour_histograms(crops, crop_masks, config.colour_bins, config.colour_min_brightness, gains)
    return torch.zeros(crops.shape[0], 0, device=crops.device)


def with_grey_variant(parts: DescriptorParts, crops: torch.Tensor, crop_masks: torch.Tensor, config: MatchingConfig,
                      untextured: torch.Tensor) -> tuple[DescriptorParts, torch.Tensor | None]:
    """Add the grey variant of ``MatchingConfig.untextured_grey_margin`` to query parts.

    Args:
        parts: the queries' parts (colour (B, C) or (B, G, C)). crops (B, 3, S, S), crop_masks
            (B, S, S): the crops they describe. untextured: (O,) bool, the bank's untextured objects.
    Returns:
        (parts with colour (B, G + 1, C), the last variant the colour histogram of the grey crop;
        variant offsets (G + 1, O) for :func:`match`: 0, except ``-margin`` for the grey variant
        against untextured objects and ``-inf`` against the others). ``parts`` and None when
        there is nothing to add (margin None, no colour part, or no untextured object).
    """
    margin = config.untextured_grey_margin
    if margin is None or config.colour_weight == 0 or not bool(untextured.any()):
        return parts, None
    grey = describe_colour(crops.mean(1, keepdim=True).expand_as(crops), crop_masks, config)
    colour = parts.colour if parts.colour.ndim == 3 else parts.colour[:, None]
    G, device = colour.shape[1], untextured.device
    offsets = torch.zeros(G + 1, len(untextured), device=device)
    offsets[G] = torch.where(untextured, torch.tensor(-float(margin), device=device), torch.tensor(float("-inf"), device=device))
    return DescriptorParts(parts.global_, torch.cat([colour, grey[:, None].to(colour.dtype)], 1)), offsets


@dataclass(frozen=True, eq=False)
class TemplateBank:
    """All objects' template descriptors, stacked, and what the pose priors need (O objects of
    T templates each; template ``o * T + t`` is template ``t`` of object ``o``).

    Attributes:
        descriptors: (O * T, E) float32 unit-norm embedded descriptors (:meth:`embed`), on the
            backbone's device.
        object_ids: (O,) the objects' ids, in bank order.
        templates_per_object: T.
        object_texture: (O,) float32 median :func:`texture_levels` of each object's templates.
        mean_global, mean_colour: (D,), (C,) means over the templates of the raw parts,
            subtracted by :meth:`embed` when ``config.centre_descriptors``.
        T_template_object: (O, T, 4, 4) float64 ``T_camera_object`` of the template cameras, metres.
        K_template: (O, 3, 3) float64 intrinsics of each object's template camera, pixels.
        sphere_center_obj_m: (O, 3) float64 bounding-sphere centres (what template cameras look
            at), object frames, metres.
        R_template_crop: (O, T, 3, 3) float64 each template's crop camera in its template camera.
        crop_focal_px: (O, T) float64 focal lengths of the templates' crop cameras, pixels.
        size_px: S, side of templates and crops, pixels.
        crop_margin_fraction: the templates' margin (crops use it too).
        background_rgb: the templates' background colour.
        config: the matching settings the descriptors were made with.
    """

    descriptors: torch.Tensor
    object_ids: tuple[int, ...]
    templates_per_object: int
    mean_global: torch.Tensor
    mean_colour: torch.Tensor
    object_texture: np.ndarray
    T_template_object: np.ndarray
    K_template: np.ndarray
    sphere_center_obj_m: np.ndarray
    R_template_crop: np.ndarray
    crop_focal_px: np.ndarray
    size_px: int
    crop_margin_fraction: float
    background_rgb: tuple[int, int, int]
    config: MatchingConfig

    @property
    def device(self) -> torch.device:
        return self.descriptors.device

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def object_index(self, object_id: int) -> int:
        try:
            return self.object_ids.index(int(object_id))
        except ValueError:
            raise InvalidInputError(f"object id {object_id} is not in the template bank ({list(self.object_ids)})") from None

    def embed(self, parts: DescriptorParts) -> torch.Tensor:
        """Descriptor (B, E) compared by cosine: ``normalize([g, w * c])`` with ``g``, ``c`` the
        (centred, then unit-norm) global and colour parts and ``w = colour_weight``; (B, G, E)
        when the colour part has G variants (the global part is the same in each)."""
        return _embed(parts.global_, parts.colour, self.mean_global, self.mean_colour, self.config)

    @classmethod
    def build(cls, templates: Sequence[ObjectTemplates], parts: Sequence[TemplateParts], config: MatchingConfig,
              device: torch.device | str = "cpu") -> TemplateBank:
        """Stack the templates of several objects.

        Args:
            templates: one :class:`ObjectTemplates` per object, all made with the same template
                size, margin, background and template count.
            parts: their :func:`template_parts` (same order).
            config: the matching settings ``parts`` were made with.
            device: where the bank lives (the backbone's device).
        Raises:
            InvalidInputError: no templates, duplicate object ids, inconsistent settings or sizes.
        """
        if not templates or len(parts) != len(templates):
            raise InvalidInputError(f"TemplateBank.build: need templates and their parts, got {len(templates)} and {len(parts)}")
        first = templates[0].config
        ids = [t.object_id for t in templates]
        if len(set(ids)) != len(ids):
            raise InvalidInputError(f"TemplateBank.build: duplicate object ids {ids}")
        for t, p in zip(templates, parts):
            c = t.config
            if (c.template_size_px, c.crop_margin_fraction, c.background_rgb, c.num_templates) != (
                    first.template_size_px, first.crop_margin_fraction, first.background_rgb, first.num_templates):
                raise InvalidInputError(
                    f"TemplateBank.build: object {t.object_id} templates differ in template_size_px / crop_margin_fraction / "
                    "background_rgb / template count from the first object's; onboard all objects with one TemplateConfig"
                )
            if len(p.global_) != c.num_templates or len(p.colour) != c.num_templates or len(p.texture) != c.num_templates:
                raise InvalidInputError(f"TemplateBank.build: object {t.object_id}: parts of {len(p.global_)} templates, expected {c.num_templates}")
        device = torch.device(device)
        global_ = torch.from_numpy(np.concatenate([p.global_ for p in parts])).to(device)
        colour = torch.from_numpy(np.concatenate([p.colour for p in parts])).to(device)
        mean_global, mean_colour = global_.mean(0), colour.mean(0)
        return cls(
            descriptors=_embed(global_, colour, mean_global, mean_colour, config), object_ids=tuple(int(i) for i in ids),
            templates_per_object=first.num_templates, mean_global=mean_global, mean_colour=mean_colour,
            object_texture=np.array([np.median(p.texture) for p in parts], np.float32),
            T_template_object=np.stack([t.T_camera_object for t in templates]),
            K_template=np.stack([t.K_template for t in templates]),
            sphere_center_obj_m=np.stack([t.sphere_center_obj_m for t in templates]),
            R_template_crop=np.stack([p.R_template_crop for p in parts]), crop_focal_px=np.stack([p.crop_focal_px for p in parts]),
            size_px=first.template_size_px, crop_margin_fraction=first.crop_margin_fraction,
            background_rgb=tuple(int(c) for c in first.background_rgb), config=config,
        )


def _embed(global_: torch.Tensor, colour: torch.Tensor, mean_global: torch.Tensor, mean_colour: torch.Tensor,
           config: MatchingConfig) -> torch.Tensor:
    if config.centre_descriptors:
        global_, colour = global_ - mean_global, colour - mean_colour
    out = F.normalize(global_.float(), dim=-1)
    if config.colour_weight > 0 and colour.shape[-1] > 0:
        if colour.ndim == 3:  # G colour variants of each query
            out = out[:, None].expand(-1, colour.shape[1], -1)
        out = torch.cat([out, config.colour_weight * F.normalize(colour.float(), dim=-1)], dim=-1)
    return F.normalize(out, dim=-1)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    """Matches of P proposals against a bank of O objects.

    Attributes:
        object_index: (P,) int64 index into ``bank.object_ids`` of the best object.
        score: (P,) float32 that object's score (mean of its top-k cosine similarities).
        top_templates: (P, k) int64 indices (within the best object) of its best templates, best first.
        top_similarities: (P, k) float32 their cosine similarities.
        object_scores: (P, O) float32 every object's score (-inf for objects left out).
    """

    object_index: torch.Tensor
    score: torch.Tensor
    top_templates: torch.Tensor
    top_similarities: torch.Tensor
    object_scores: torch.Tensor


def match(descriptors: torch.Tensor, bank: TemplateBank, top_k: int = 5, object_mask: torch.Tensor | None = None,
          variant_offsets: torch.Tensor | None = None) -> MatchResult:
    """Score proposals against every object (CNOS): mean of the top-k template similarities.

    Args:
        descriptors: (P, D) unit-norm proposal descriptors on ``bank.device``, or (P, G, D): G
            variants of each (white-balance search), each template compared with its best variant.
        bank: the templates.
        top_k: templates averaged per object (clamped to the template count).
        object_mask: (O,) bool, objects that may be matched (None: all), or (P, O) bool per
            proposal (a proposal with no object left gets score -inf).
        variant_offsets: (G, O) added to the similarities of variant g with object o's templates
            before the best variant is taken (-inf: never compared; see :func:`with_grey_variant`);
            None: 0.
    Returns:
        :class:`MatchResult` on ``bank.device``.
    Raises:
        InvalidInputError: wrong shapes, or every object masked out.
    """
    O, T = bank.num_objects, bank.templates_per_object
    D = bank.descriptors.shape[1]
    if descriptors.ndim not in (2, 3) or descriptors.shape[-1] != D:
        raise InvalidInputError(f"descriptors: expected shape (P, {D}) or (P, G, {D}), got {tuple(descriptors.shape)}")
    k = min(top_k, T)
    P = descriptors.shape[0]
    if object_mask is not None and not (
            (object_mask.shape == (O,) and bool(object_mask.any())) or object_mask.shape == (P, O)):
        raise InvalidInputError(f"object_mask: expected ({O},) bool with at least one True or ({P}, {O}) bool, "
                                f"got {tuple(object_mask.shape)}")
    similarity = descriptors.float() @ bank.descriptors.T  # (P, O * T) or (P, G, O * T)
    if variant_offsets is not None:
        if similarity.ndim != 3 or variant_offsets.shape != (similarity.shape[1], O):
            raise InvalidInputError(f"variant_offsets: expected shape (G, {O}) for descriptors (P, G, {D}), got "
                                    f"{tuple(variant_offsets.shape)} for {tuple(descriptors.shape)}")
        similarity = similarity + variant_offsets.to(similarity.device, similarity.dtype).repeat_interleave(T, dim=1)[None]
    if similarity.ndim == 3:
        similarity = similarity.amax(dim=1)
    similarity = similarity.view(P, O, T)
    top_sim, top_idx = similarity.topk(k, dim=2)  # (P, O, k), sorted best first
    object_scores = top_sim.mean(dim=2)
    if object_mask is not None:
        allowed = object_mask.to(device=object_scores.device, dtype=torch.bool)
        object_scores = object_scores.masked_fill(~(allowed if allowed.ndim == 2 else allowed[None]), float("-inf"))
    if P == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=bank.device)
        return MatchResult(empty, torch.zeros(0, device=bank.device), torch.zeros(0, k, dtype=torch.int64, device=bank.device),
                           torch.zeros(0, k, device=bank.device), object_scores)
    score, best = object_scores.max(dim=1)
    rows = torch.arange(P, device=bank.device)
    return MatchResult(best, score, top_idx[rows, best], top_sim[rows, best], object_scores)


# --------------------------------------------------------------------------------------------
# NMS
# --------------------------------------------------------------------------------------------


def nms_masks(masks: Sequence[np.ndarray], scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy class-agnostic NMS by mask IoU.

    Args:
        masks: N (H, W) bool.
        scores: (N,) higher is better.
        iou_threshold: a mask whose IoU with a kept, better-scoring one exceeds this is dropped.
    Returns:
        (K,) int64 indices of the kept masks, best score first.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(masks) != len(scores):
        raise InvalidInputError(f"nms_masks: {len(masks)} masks but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order.astype(np.int64)
    iou = pairwise_mask_iou(masks, masks)
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Pose priors
# --------------------------------------------------------------------------------------------


def template_pose_priors(
    T_template_object: np.ndarray, anchor_obj_m: np.ndarray, R_template_crop: np.ndarray, template_crop_focal_px: np.ndarray,
    R_camera_crop: np.ndarray, crop_focal_px: np.ndarray,
) -> np.ndarray:
    """``T_camera_object`` in the real camera implied by matching a crop to a template's crop.

    Both crops are crop-camera images (module docstring), so the match says: the object looks
    in the query's crop camera as in the template's crop camera, only at another scale. The
    anchor is the point the template camera looks at (the object's bounding-sphere centre, on the
    template's optical axis at depth ``d_t``); keeping the rotation and scaling the anchor's
    position by the ratio of the crop focals keeps the look (directions and pixel size ``f D /
    z``; exact for the anchor's direction, the rest differs by the perspective of another
    distance):

    1. In the template crop camera: rotation ``R_tc^T R_template``, anchor ``a = R_tc^T [0, 0,
       d_t]`` (``R_tc`` = ``R_template_crop``).
    2. In the query crop camera: the same rotation, anchor ``k a`` with ``k = f_c / f_tc`` (query
       crop focal over template crop focal).
    3. In the camera (``R_qc`` = ``R_camera_crop``): ``R = R_qc R_tc^T R_template``, anchor ``p =
       k R_qc a`` and ``t = p - R anchor_obj``.

    A partly occluded proposal (smaller box, larger ``f_c``) comes out too far away.

    Args:
        T_template_object: (..., 4, 4) template poses, metres.
        anchor_obj_m: (..., 3) the anchor (bounding-sphere centre) in the object frame, metres.
        R_template_crop, template_crop_focal_px: (..., 3, 3), (...,) the template's crop camera.
        R_camera_crop, crop_focal_px: (..., 3, 3), (...,) the query's crop camera.
    Returns:
        (..., 4, 4) float64 ``T_camera_object`` priors, metres.
    """
    T_t = np.asarray(T_template_object, dtype=np.float64)
    anchor = np.asarray(anchor_obj_m, dtype=np.float64)
    R_tc = np.asarray(R_template_crop, dtype=np.float64)
    R_qc = np.asarray(R_camera_crop, dtype=np.float64)
    k = np.asarray(crop_focal_px, dtype=np.float64) / np.asarray(template_crop_focal_px, dtype=np.float64)
    d_t = (T_t[..., :3, :3] @ anchor[..., None])[..., 2, 0] + T_t[..., 2, 3]
    a = np.swapaxes(R_tc, -1, -2)[..., :, 2] * d_t[..., None]  # R_tc^T [0, 0, d_t]
    R = R_qc @ np.swapaxes(R_tc, -1, -2) @ T_t[..., :3, :3]
    p = k[..., None] * (R_qc @ a[..., None])[..., 0]
    out = np.zeros((*R.shape[:-2], 4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = p - (R @ anchor[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def priors_for_matches(bank: TemplateBank, object_index: np.ndarray, template_indices: np.ndarray,
                       R_camera_crop: np.ndarray, crop_focal_px: np.ndarray) -> np.ndarray:
    """Pose priors (N, k, 4, 4) of N detections from their k best templates.

    Args:
        object_index: (N,) bank object index of each detection.
        template_indices: (N, k) template indices within that object, best first.
        R_camera_crop, crop_focal_px: (N, 3, 3), (N,) the detections' crop cameras.
    """
    o = np.asarray(object_index, dtype=np.int64)[:, None]
    t = np.asarray(template_indices, dtype=np.int64)
    if t.shape[1] == 0:
        return np.zeros((len(o), 0, 4, 4))
    return template_pose_priors(
        bank.T_template_object[o, t], bank.sphere_center_obj_m[o[:, 0]][:, None], bank.R_template_crop[o, t],
        bank.crop_focal_px[o, t], np.asarray(R_camera_crop, dtype=np.float64)[:, None],
        np.asarray(crop_focal_px, dtype=np.float64)[:, None],
    )
