"""DINOv2 ViT-S/B/L with patch size 14, loaded from a local copy of the official weights.

A minimal ViT whose parameter names match the official ``dinov2_vit{s,b,l}14_pretrain.pth`` state
dicts (facebookresearch/dinov2, hub models with ``block_chunks=0``): ``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``mask_token``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,
norm2,mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``. The position embeddings are resized to the input's
patch grid as DINOv2 does (bicubic, scale factor ``(n + 0.1) / M``, no antialiasing), so features
match the reference implementation. Variants with register tokens or SwiGLU (ViT-g) are not
supported; their files fail to load with an error naming the unexpected keys.

Inputs whose sides are not multiples of 14 are padded on the right and bottom with the
normalization mean (zero after normalization), so patch ``(i, j)`` always covers pixels
``[14 j, 14 j + 14) x [14 i, 14 i + 14)`` and the ``stride14`` map is ``ceil(H/14) x ceil(W/14)``.
Global descriptor: the class token after the final layer norm (as in CNOS).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pose_node.core.errors import InvalidInputError
from pose_node.features.backbones import (
    DTYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    InputNormalization,
    load_into,
    load_state_dict_file,
    resolve_weights_file,
    stride_key,
)

PATCH_SIZE_PX = 14
_POS_EMBED_OFFSET = 0.1  # DINOv2's interpolate_offset: avoids floor() errors in the scale factor


@dataclass(frozen=True)
class VitArchitecture:
    """Transformer size of one DINOv2 variant (MLP ratio 4, LayerScale, LayerNorm eps 1e-6)."""

    embed_dim: int
    depth: int
    num_heads: int


DINOV2_ARCHITECTURES: dict[str, VitArchitecture] = {
    "dinov2_vits14": VitArchitecture(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": VitArchitecture(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14": VitArchitecture(embed_dim=1024, depth=24, num_heads=16),
}


class _PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE_PX, stride=PATCH_SIZE_PX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head dim), as DINOv2
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, 4 * dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """The DINOv2 ViT trunk (no head), parameter names as in the official state dicts.

    Args:
        arch: transformer size.
        pos_grid: side M of the square patch grid the position embeddings were trained on
            (37 for the official 518 x 518 checkpoints).
    """

    def __init__(self, arch: VitArchitecture, pos_grid: int = 37) -> None:
        super().__init__()
        D = arch.embed_dim
        self.patch_embed = _PatchEmbed(D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid * pos_grid, D))
        self.mask_token = nn.Parameter(torch.zeros(1, D))  # training-time only; kept so files load strictly
        self.blocks = nn.ModuleList(_Block(D, arch.num_heads) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.pos_grid = pos_grid
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, D) for a grid_h x grid_w patch grid."""
        M = self.pos_grid
        if grid_h == M and grid_w == M:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.float().reshape(1, M, M, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((grid_h + _POS_EMBED_OFFSET) / M, (grid_w + _POS_EMBED_OFFSET) / M),
            mode="bicubic",
            antialias=False,
        )
        patch_pos = patch_pos.to(self.pos_embed.dtype).flatten(2).transpose(1, 2)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, x: torch.Tensor, feature_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Class token and patch tokens.

        Args:
            x: (B, 3, H, W) normalized images, H and W multiples of 14.
            feature_layer: 1-based block whose output gives the patch tokens; None: the last.
        Returns:
            cls (B, D) after the final norm, and patch tokens (B, D, H/14, W/14) after the final norm.
        """
        B, _, H, W = x.shape
        grid_h, grid_w = H // PATCH_SIZE_PX, W // PATCH_SIZE_PX
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), self.patch_embed(x)], dim=1)
        tokens = tokens + self.interpolated_pos_embed(grid_h, grid_w)
        patch_source = None
        for index, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if index == feature_layer:
                patch_source = tokens
        final = self.norm(tokens)
        patches = final if patch_source is None else self.norm(patch_source)
        patches = patches[:, 1:].transpose(1, 2).reshape(B, -1, grid_h, grid_w)
        return final[:, 0], patches


class DinoV2Backbone(Backbone):
    """DINOv2 features: the class token as descriptor and patch tokens as the ``stride14`` map."""

    def __init__(self, config: BackboneConfig) -> None:
        arch = DINOV2_ARCHITECTURES[config.name]
        device = config.torch_device()
        layer = config.vit_feature_layer
        if layer is not None and layer > arch.depth:
            raise InvalidInputError(
                f"BackboneConfig.vit_feature_layer: {config.name} has {arch.depth} blocks, got {layer}"
            )
        weights_file = resolve_weights_file(config)
        what = f"an official DINOv2 {config.name} state dict (*_pretrain.pth)"
        state = load_state_dict_file(weights_file, what)
        pos_embed = state.get("pos_embed")
        pos_grid = math.isqrt(pos_embed.shape[1] - 1) if pos_embed is not None and pos_embed.ndim == 3 else 0
        if pos_embed is None or pos_grid * pos_grid != pos_embed.shape[1] - 1 or pos_embed.shape[2] != arch.embed_dim:
            got = None if pos_embed is None else tuple(pos_embed.shape)
            raise BackboneWeightsError(
                f"BackboneConfig.weights_path: {weights_file} is not {what}: expected pos_embed of shape "
                f"(1, 1 + M*M, {arch.embed_dim}), got {got}"
            )
        vit = DinoVisionTransformer(arch, pos_grid)
        load_into(vit, state, weights_file, what)
        super().__init__(
            name=config.name,
            descriptor_dim=arch.embed_dim,
            channels_per_stride={PATCH_SIZE_PX: arch.embed_dim},
            input_normalization=config.normalization(InputNormalization(IMAGENET_MEAN, IMAGENET_STD)),
            weights_file=weights_file,
            cache_options={"vit_feature_layer": layer},
        )
        self.vit = vit
        self.feature_layer = layer
        self.requires_grad_(False)
        self.to(device=device, dtype=DTYPES[config.dtype])
        self.eval()

    def _extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        H, W = x.shape[-2:]
        pad_h, pad_w = -H % PATCH_SIZE_PX, -W % PATCH_SIZE_PX
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))  # zero = the mean colour after normalization
        cls, patches = self.vit(x, self.feature_layer)
        return cls, {stride_key(PATCH_SIZE_PX): patches}
