"""The demo's frozen encoder `demo-colour-pos` (docs/method.md#demo): DINO-like features of synthetic shapes
(similar within an object, different across objects, position-aware) computed in microseconds, no weights
file."""

from __future__ import annotations

import math

import torch
from torch import nn

PIXELS_PER_CHUNK = 65_536  # pixels per step of the colour features (16 images at 64 px, 1 at 224)


class PatchColourPositionEncoder(nn.Module):
    """The demo encoder: fixed features with what DINO gives real images, computed in microseconds.

    images [B, 3, H, W] in [0, 1] -> tokens [B, T, colour_dim + position_dim], T = (H / patch)^2:
      colour part   = the patch mean of sqrt(2 / colour_dim) * cos(W rgb + b) over its pixels,
                      W ~ N(0, sigma^2) and b ~ U(0, 2 pi) fixed by `seed` (random Fourier features: dot
                      products approximate the Gaussian kernel exp(-sigma^2 |c1 - c2|^2 / 2) of colours, so
                      patches of one object are near-parallel and objects of different colours
                      near-orthogonal). Averaged per pixel, so a patch on a boundary is the area-weighted
                      mixture of its objects' features, which the decoder's alpha blending rebuilds
                      (docs/method.md#demo).
      position part = a 2-D sin-cos code of the patch centre (log-spaced frequencies per axis), scaled to
                      norm `position_weight` per token (0.1 of the colour part's), so same-coloured objects
                      at different places differ while slots still group by colour first.
    The concatenation is multiplied by sqrt(D), so values are O(1) per dimension like a ViT's features: the
    reconstruction MSE then has the magnitude the reference sparsity weight (0.1) was chosen against.
    No learned or trained weights: W and b are buffers drawn from a fixed seed (so the weights checksum in
    the feature contract identifies them; the tap-point string names the averaging and the position weight).
    """

    proj: torch.Tensor  # buffers: [3, colour_dim], [colour_dim], [1]
    phase: torch.Tensor
    scale: torch.Tensor

    def __init__(self, patch_size: int = 8, colour_dim: int = 96, position_dim: int = 32, sigma: float = 6.0,
                 position_weight: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        if position_dim % 4:
            raise ValueError("position_dim must be a multiple of 4 (sin, cos per axis)")
        g = torch.Generator().manual_seed(seed)
        self.patch_size, self.colour_dim, self.position_dim = patch_size, colour_dim, position_dim
        self.position_weight = position_weight
        self.register_buffer("proj", torch.randn(3, colour_dim, generator=g) * sigma)
        self.register_buffer("phase", torch.rand(colour_dim, generator=g) * 2 * math.pi)
        # shape [1], not a 0-d tensor: weights_checksum views every buffer as bytes
        self.register_buffer("scale", torch.tensor([math.sqrt(colour_dim + position_dim)]))

    def position_code(self, grid: int) -> torch.Tensor:
        """[grid*grid, position_dim]: sin/cos of x and y at frequencies from 1/2 to grid/4 periods per
        image side (row-major tokens), each row scaled to norm `position_weight`."""
        nf = self.position_dim // 4
        periods = torch.logspace(math.log10(0.5), math.log10(max(grid / 4, 1.0)), nf)  # periods per side
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid  # in (0, 1)
        ang = 2 * math.pi * centres[:, None] * periods[None, :]  # [grid, nf]
        axis = torch.cat([ang.sin(), ang.cos()], 1)  # [grid, 2 nf]
        code = torch.cat([axis[None, :, :].expand(grid, grid, -1),  # x varies along a row
                          axis[:, None, :].expand(grid, grid, -1)], -1).reshape(grid * grid, -1)
        return code / code.norm(dim=1, keepdim=True) * self.position_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.patch_size
        if h != w or h % p:
            raise ValueError(f"demo encoder needs square images with a side divisible by {p}, got {h}x{w}")
        # A few images at a time: the per-pixel features [n, H, W, C] stay in the CPU's cache instead of
        # going through memory whole (2.3x faster at 64 px on a CPU, the same values: docs/scale.md)
        n = max(1, PIXELS_PER_CHUNK // (h * w))
        pooled = []
        for i in range(0, b, n):
            rgb = x[i:i + n].permute(0, 2, 3, 1).reshape(-1, 3)  # [n H W, 3]
            per_pixel = torch.addmm(self.phase, rgb, self.proj).cos_()  # [n H W, C]
            per_pixel = per_pixel.view(-1, h, w, self.colour_dim).permute(0, 3, 1, 2)  # [n, C, H, W]
            pooled.append(torch.nn.functional.avg_pool2d(per_pixel, p))  # [n, C, H/p, W/p]
        colour = torch.cat(pooled)
        colour = colour.flatten(2).transpose(1, 2) * math.sqrt(2.0 / self.colour_dim)  # [B, T, C]
        pos = self.position_code(h // p).to(colour).expand(b, -1, -1)
        return torch.cat([colour, pos], -1) * self.scale
