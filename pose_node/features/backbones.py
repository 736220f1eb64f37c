"""The feature backbone interface shared by detection, correspondence and refinement.

A :class:`Backbone` turns a batch of RGB images into one L2-normalized global descriptor per image
(template matching, CNOS style) and dense feature maps at a few strides (correspondences,
feature-metric refinement), computed once per view and shared by those stages.

Conventions (written once, here):
- Input images are ``(B, 3, H, W)`` floats in ``[0, 1]``, RGB channel order, on the backbone's
  device. The backbone applies its own input normalization inside (``input_normalization``).
- A feature map at stride ``s`` is keyed ``f"stride{s}"`` (:func:`stride_key`) and has shape
  ``(B, C_s, ceil(H / s), ceil(W / s))``. Cell ``(i, j)`` covers pixels ``[s*j, s*j + s)`` by
  ``[s*i, s*i + s)``; its centre is at pixel ``(s*j + (s-1)/2, s*i + (s-1)/2)`` with pixel centres
  at integer coordinates (OpenCV). This is exact for patch-based ViTs and the receptive-field
  centre up to a pixel or so for CNNs. :meth:`BackboneFeatures.sample` implements it.
- Backbones are frozen: ``forward`` runs without autograd and ``train()`` keeps them in eval mode.
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from pose_node.core.errors import InvalidInputError, StageUnavailableError
from pose_node.core.onnx_session import OnnxSessionError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneWeightsError(StageUnavailableError, OnnxSessionError):
    """A backbone's weights file is missing, unreadable or does not match the architecture."""


def stride_key(stride: int) -> str:
    """The ``feature_maps`` key of the map at ``stride`` pixels per cell (``8 -> "stride8"``)."""
    return f"stride{stride}"


@dataclass(frozen=True)
class InputNormalization:
    """Per-channel normalization ``(x - mean) / std`` of RGB images in ``[0, 1]``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise InvalidInputError(f"InputNormalization: mean and std need 3 values (RGB), got {self.mean}, {self.std}")
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            raise InvalidInputError(f"InputNormalization.std: must be positive and finite, got {self.std}")


@dataclass(frozen=True)
class BackboneConfig:
    """Which backbone to build and where (see :func:`pose_node.features.create_backbone`).

    Attributes:
        name: a registered backbone (``available_backbones()``): ``efficientnet_lite0`` (default;
            pretrained ImageNet weights shipped in a Python package), ``dinov2_vits14``,
            ``dinov2_vitb14``, ``dinov2_vitl14`` (official DINOv2 ``*_pretrain.pth`` state dict
            from a local file) or ``onnx`` (any model following the contract in
            :mod:`pose_node.features.onnx_backbone`).
        weights_path: local weights file. None: the packaged default (``efficientnet_lite0`` only).
            Nothing is ever downloaded.
        device: torch device of the module and of every input and output (``cpu``, ``cuda:0``).
        dtype: ``float32``, ``float16`` or ``bfloat16`` (the ``onnx`` backbone runs float32 only).
        input_mean, input_std: RGB normalization applied inside the backbone to images in
            ``[0, 1]``. None: the one the weights were trained with; required for ``onnx``.
        vit_feature_layer: DINOv2 only: 1-based transformer block whose (layer-normed) patch
            tokens form the ``stride14`` map; None: the last block. The global descriptor is always
            the last block's class token.
        onnx_providers: onnxruntime execution providers, in order of preference.
    """

    name: str = "efficientnet_lite0"
    weights_path: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    input_mean: tuple[float, float, float] | None = None
    input_std: tuple[float, float, float] | None = None
    vit_feature_layer: int | None = None
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidInputError(f"BackboneConfig.dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        if (self.input_mean is None) != (self.input_std is None):
            raise InvalidInputError("BackboneConfig.input_mean / input_std: give both or neither")
        if self.input_mean is not None:
            object.__setattr__(self, "input_mean", tuple(float(v) for v in self.input_mean))
            object.__setattr__(self, "input_std", tuple(float(v) for v in self.input_std))
            InputNormalization(self.input_mean, self.input_std)
        if self.vit_feature_layer is not None and self.vit_feature_layer < 1:
            raise InvalidInputError(f"BackboneConfig.vit_feature_layer: must be >= 1, got {self.vit_feature_layer}")

    def normalization(self, default: InputNormalization | None) -> InputNormalization:
        """The configured normalization, else ``default``.

        Raises:
            InvalidInputError: neither is given (the message names ``input_mean`` / ``input_std``).
        """
        if self.input_mean is not None:
            return InputNormalization(self.input_mean, self.input_std)
        if default is None:
            raise InvalidInputError(
                f"BackboneConfig.input_mean / input_std: required for backbone {self.name!r} "
                "(the normalization its model was trained with)"
            )
        return default

    def torch_device(self) -> torch.device:
        """``device`` as a torch device.

        Raises:
            InvalidInputError: the device string is malformed or names an unavailable CUDA device.
        """
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise InvalidInputError(f"BackboneConfig.device: {err}") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InvalidInputError(f"BackboneConfig.device: {self.device!r} requested but CUDA is not available")
        return device


def resolve_weights_file(config: BackboneConfig, default: Path | None = None) -> Path:
    """The weights file a backbone loads: ``config.weights_path``, else ``default``.

    Raises:
        BackboneWeightsError: no path is configured and there is no default, or the file is missing;
            the message names ``BackboneConfig.weights_path`` and the path.
    """
    if config.weights_path is None:
        if default is None:
            raise BackboneWeightsError(
                f"BackboneConfig.weights_path: required for backbone {config.name!r} (a local file; "
                "nothing is downloaded at run time)"
            )
        path = default
    else:
        path = Path(config.weights_path).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"BackboneConfig.weights_path: weights file for backbone {config.name!r} not found: {path}"
        )
    return path


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a torch state dict safely (``weights_only``: no code runs from the file) onto the CPU.

    Raises:
        BackboneWeightsError: the file is unreadable or not a state dict; the message names
            ``BackboneConfig.weights_path``, the path and ``what`` was expected.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise BackboneWeightsError(f"BackboneConfig.weights_path: cannot read {path} as {what}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneWeightsError(f"BackboneConfig.weights_path: {path} is not {what} (expected a tensor dict)")
    return state


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the file.

    Raises:
        BackboneWeightsError: missing, unexpected or mis-shaped keys.
    """
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise BackboneWeightsError(f"BackboneConfig.weights_path: {path} does not match {what}: {err}") from err


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class BackboneFeatures:
    """Features of a batch of B images of size H x W.

    Attributes:
        global_descriptor: (B, D), unit L2 norm; cosine similarity is a dot product.
        feature_maps: ``stride_key(s)`` -> (B, C_s, ceil(H / s), ceil(W / s)), not normalized.
        image_hw: (H, W) of the input images, pixels.
    """

    global_descriptor: torch.Tensor
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    image_hw: tuple[int, int] = (0, 0)

    def sample(self, stride: int, uv_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bilinear features at pixel positions (the cell-centre rule of the module docstring).

        Differentiable with respect to ``uv_img``; positions outside the map take the border value.

        Args:
            stride: which map (``feature_maps[stride_key(stride)]``).
            uv_img: (B, N, 2) pixel coordinates (u right, v down; pixel centres at integers), on the
                features' device.
        Returns:
            features (B, N, C_s) and valid (B, N) bool: the position lies inside the image
            (``-0.5 <= u <= W - 0.5`` and the same for v).
        Raises:
            InvalidInputError: no map at that stride, or ``uv_img`` has the wrong shape.
        """
        key = stride_key(stride)
        if key not in self.feature_maps:
            raise InvalidInputError(f"stride: no feature map {key!r}; have {sorted(self.feature_maps)}")
        fmap = self.feature_maps[key]
        B, _, Hs, Ws = fmap.shape
        if uv_img.ndim != 3 or uv_img.shape[0] != B or uv_img.shape[2] != 2:
            raise InvalidInputError(f"uv_img: expected shape ({B}, N, 2), got {tuple(uv_img.shape)}")
        uv = uv_img.to(fmap.dtype)
        # Cell j spans pixels [s*j - 0.5, s*j + s - 0.5], so the map edge sits at pixel -0.5 and at
        # s * Ws - 0.5: exactly grid_sample's align_corners=False frame.
        scale = uv.new_tensor([2.0 / (stride * Ws), 2.0 / (stride * Hs)])
        grid = (uv + 0.5) * scale - 1.0
        sampled = F.grid_sample(fmap, grid[:, :, None, :], mode="bilinear", padding_mode="border", align_corners=False)
        H, W = self.image_hw
        u, v = uv_img[..., 0], uv_img[..., 1]
        valid = (u >= -0.5) & (u <= W - 0.5) & (v >= -0.5) & (v <= H - 0.5)
        return sampled[..., 0].transpose(1, 2), valid


class Backbone(torch.nn.Module):
    """A frozen image feature extractor (see the module docstring for the conventions).

    Subclasses implement :meth:`_extract` and set the metadata in ``__init__``.

    Attributes:
        name: the registry name (``BackboneConfig.name``).
        descriptor_dim: D of ``global_descriptor``.
        channels_per_stride: stride (pixels) -> channels of that feature map, strides ascending.
        input_normalization: applied inside ``forward``.
        weights_file: the loaded weights file.
    """

    def __init__(
        self,
        name: str,
        descriptor_dim: int,
        channels_per_stride: dict[int, int],
        input_normalization: InputNormalization,
        weights_file: Path,
        cache_options: dict | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.descriptor_dim = descriptor_dim
        self.channels_per_stride = dict(sorted(channels_per_stride.items()))
        self.input_normalization = input_normalization
        self.weights_file = weights_file
        self._cache_options = dict(cache_options or {})
        self._cache_key: str | None = None
        self.register_buffer("_mean", torch.tensor(input_normalization.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(input_normalization.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self._mean.dtype

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.channels_per_stride)

    @property
    def cache_key(self) -> str:
        """Identifies the features this backbone computes, for onboarding caches.

        ``"{name}@{first 16 hex of the weights file's SHA-256}#{8 hex of the options}"``; the options
        are the input normalization and any feature choice (e.g. the ViT layer). Device and dtype
        are left out. Hashing reads the weights file once, on first use.
        """
        if self._cache_key is None:
            options = {"mean": self.input_normalization.mean, "std": self.input_normalization.std, **self._cache_options}
            options_hash = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
            self._cache_key = f"{self.name}@{file_sha256(self.weights_file)[:16]}#{options_hash[:8]}"
        return self._cache_key

    def train(self, mode: bool = True) -> Backbone:
        """Backbones stay in eval mode (frozen batch-norm statistics); ``mode`` is ignored."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> BackboneFeatures:
        """Global descriptors and feature maps of a batch of images, without autograd.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1], on ``self.device``; cast to ``self.dtype``.
        Returns:
            :class:`BackboneFeatures` on ``self.device`` in ``self.dtype``.
        Raises:
            InvalidInputError: wrong shape, non-float dtype, or another device than the backbone's.
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
            raise InvalidInputError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InvalidInputError(f"images: expected float RGB in [0, 1], got dtype {images.dtype}")
        if images.device != self.device:
            raise InvalidInputError(
                f"images: on {images.device} but backbone {self.name!r} is on {self.device}; "
                "move the images (the backbone never moves data)"
            )
        B, _, H, W = images.shape
        if B == 0:
            return self._empty_features(H, W)
        with torch.no_grad():
            x = (images.to(self.dtype) - self._mean) / self._std
            descriptor, maps = self._extract(x)
            descriptor = F.normalize(descriptor.float(), dim=-1).to(self.dtype)
        return BackboneFeatures(global_descriptor=descriptor, feature_maps=maps, image_hw=(H, W))

    def dense_maps(self, images: torch.Tensor, max_stride: int) -> dict[str, torch.Tensor]:
        """Only the feature maps at strides <= ``max_stride``, without autograd (dense alignment
        needs no descriptor; backbones that can stop early override :meth:`_extract_maps`).

        Args:
            images: (B, 3, H, W) float RGB in [0, 1] on ``self.device``.
            max_stride: largest stride wanted, pixels; must be one of :attr:`strides`.
        Returns:
            ``stride_key(s)`` -> (B, C_s, ceil(H / s), ceil(W / s)) for every ``s <= max_stride``.
        Raises:
            InvalidInputError: wrong images (as :meth:`forward`) or an unknown stride.
        """
        if max_stride not in self.channels_per_stride:
            raise InvalidInputError(f"max_stride: {max_stride} is not a stride of {self.name!r} {self.strides}")
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point() or images.device != self.device:
            return self.forward(images).feature_maps  # raises the detailed error
        with torch.no_grad():
            x = (images.to(self.dtype) - self._mean) / self._std
            maps = self._extract_maps(x, max_stride)
        return {stride_key(s): maps[stride_key(s)] for s in self.strides if s <= max_stride}

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Raw (unnormalized) descriptor (B, D) and feature maps of normalized images (B, 3, H, W)."""
        raise NotImplementedError

    def _extract_maps(self, x: torch.Tensor, max_stride: int) -> dict[str, torch.Tensor]:
        """Feature maps of normalized images, at least those at strides <= ``max_stride``."""
        return self._extract(x)[1]

    def _empty_features(self, H: int, W: int) -> BackboneFeatures:
        kw = {"device": self.device, "dtype": self.dtype}
        maps = {
            stride_key(s): torch.zeros(0, c, math.ceil(H / s), math.ceil(W / s), **kw)
            for s, c in self.channels_per_stride.items()
        }
        return BackboneFeatures(torch.zeros(0, self.descriptor_dim, **kw), maps, (H, W))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, descriptor_dim={self.descriptor_dim}, channels_per_stride={self.channels_per_stride}"
