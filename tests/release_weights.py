"""Random weights in the DINO / DINOv2 release files' key layout (for the tests; nothing downloads)."""

from __future__ import annotations

import functools

import torch

# name -> (depth, dim, heads, patch, release grid, registers, DINOv2 layout (mask_token, LayerScale))
RELEASES = {
    "dino-vits-8": (12, 384, 6, 8, 28, 0, False),
    "dinov2-vits-14": (12, 384, 6, 14, 37, 0, True),
    "dinov2-vits-14-reg": (12, 384, 6, 14, 37, 4, True),
    "dinov2-vitb-14-reg": (12, 768, 12, 14, 37, 4, True),
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@functools.lru_cache(maxsize=8)  # the same weights serve several tests: generated once; never mutated
def release_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the key names and shapes of the release file (`dino_deitsmall8_pretrain.pth`,
    `dinov2_vit*14[_reg4]_pretrain.pth`); LayerNorm scales near 1 so the features stay well-scaled."""
    depth, d, _, p, grid, regs, v2 = RELEASES[name]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale + mean

    sd = {"cls_token": rnd(1, 1, d), "pos_embed": rnd(1, 1 + grid * grid, d),
          "patch_embed.proj.weight": rnd(d, 3, p, p), "patch_embed.proj.bias": rnd(d),
          "norm.weight": rnd(d, mean=1.0), "norm.bias": rnd(d)}
    if v2:
        sd["mask_token"] = rnd(1, d)
    if regs:
        sd["register_tokens"] = rnd(1, regs, d)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": rnd(d, mean=1.0), b + "norm1.bias": rnd(d),
                   b + "attn.qkv.weight": rnd(3 * d, d), b + "attn.qkv.bias": rnd(3 * d),
                   b + "attn.proj.weight": rnd(d, d), b + "attn.proj.bias": rnd(d),
                   b + "norm2.weight": rnd(d, mean=1.0), b + "norm2.bias": rnd(d),
                   b + "mlp.fc1.weight": rnd(4 * d, d), b + "mlp.fc1.bias": rnd(4 * d),
                   b + "mlp.fc2.weight": rnd(d, 4 * d), b + "mlp.fc2.bias": rnd(d)})
        if v2:
            sd.update({b + "ls1.gamma": rnd(d, scale=0.1, mean=0.5),
                       b + "ls2.gamma": rnd(d, scale=0.1, mean=0.5)})
    return sd
