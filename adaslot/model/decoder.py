"""MLP patch decoder with alpha masks (docs/method.md#decoder), masked alpha renormalisation (stage 2), and
two exact speed-ups (docs/method.md#deviations):

- split first layer: W (slot + pos) + b = (W slot + b) + W pos, computed once per slot and once per token and
  broadcast-added, instead of a matmul over K x T rows (mathematically identical);
- sparse decoding: with a hard keep mask, dropped slots get alpha = 0, so their decoded patches only feed
  the straight-through gradient of the keep mask (which needs their forward values, not their backward).
  Their rows run under `torch.no_grad` and only the kept rows (packed) are recorded by autograd.

Names follow the official `PatchDecoder`: `pos_embed` [1, T, S] and `mlp` (= official `decoder`, a
Sequential Linear, ReLU, ..., Linear with indices 0, 2, 4, 6).
"""

from __future__ import annotations

import torch
from torch import nn

RENORM_EPS = 1e-5  # official "mask_normalized" constant


def masked_alpha(alpha_logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """alpha_logits [B, K, T] -> alpha [B, K, T]: softmax over slots; with keep [B, K] (stage 2)
    alpha * Z / (sum_k alpha * Z + 1e-5). Dropped slots get exactly 0."""
    alpha = alpha_logits.softmax(dim=1)
    if keep is None:
        return alpha
    alpha = alpha * keep.unsqueeze(-1)
    return alpha / (alpha.sum(dim=1, keepdim=True) + RENORM_EPS)


class MLPDecoder(nn.Module):
    """slots [B, K, S] -> (recon [B, T, D], alpha [B, K, T]); each slot decodes every token independently."""

    def __init__(self, slot_dim: int, feature_dim: int, num_tokens: int, hidden: tuple[int, ...],
                 split_first_layer: bool = True) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.num_tokens = num_tokens
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, slot_dim) * 0.02)
        layers: list[nn.Module] = []
        d = slot_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, feature_dim + 1))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        self.split_first_layer = split_first_layer  # False = the official broadcast-then-Linear

    def decode(self, slots: torch.Tensor) -> torch.Tensor:
        """slots [N, S] -> per-slot outputs [N, T, D + 1] (features then alpha logit)."""
        out: torch.Tensor
        if not self.split_first_layer:
            out = self.mlp(slots.unsqueeze(1) + self.pos_embed)
            return out
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        per_slot = first(slots)  # [N, H] = W slot + b
        per_token = self.pos_embed[0] @ first.weight.t()  # [T, H] = W pos
        out = self.mlp[1:](per_slot.unsqueeze(1) + per_token)
        return out

    def decode_sparse(self, slots: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """slots [B, K, S], kept [B, K] bool -> outputs [B, K, T, D + 1]; autograd records kept rows only.

        Dropped rows are computed without autograd: nothing flows back into them (see `forward`)."""
        b, k, s = slots.shape
        flat = slots.reshape(b * k, s)
        kept = kept.reshape(b * k)
        kept_idx = kept.nonzero().squeeze(1)
        drop_idx = (~kept).nonzero().squeeze(1)
        out_kept = self.decode(flat[kept_idx])
        with torch.no_grad():
            out_drop = self.decode(flat[drop_idx])
        order = torch.cat([kept_idx, drop_idx])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = torch.cat([out_kept, out_drop])[inverse]
        return out.reshape(b, k, self.num_tokens, self.feature_dim + 1)

    def forward(self, slots: torch.Tensor, keep: torch.Tensor | None = None,
                sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """slots [B, K, S], keep [B, K] (hard 0/1, may carry a straight-through gradient) or None (stage 1)
        -> recon [B, T, D], alpha [B, K, T].

        sparse=True needs a hard keep. Forward values are identical; every gradient is exact except one term
        of relative size <= 1e-5: the renormalising constant couples a dropped slot's alpha logit to the
        kept alphas through the softmax denominator (alpha_k = e^a_k Z_k / (sum_kept e^a + 1e-5 sum_all e^a)),
        and sparse decoding treats the dropped rows as constants. See tests/test_sparse_decoding.py.
        """
        if sparse and keep is not None:
            out = self.decode_sparse(slots, keep.detach() > 0.5)
        else:
            b, k, s = slots.shape
            out = self.decode(slots.reshape(b * k, s)).reshape(b, k, self.num_tokens, self.feature_dim + 1)
        patches, alpha_logits = torch.split(out, [self.feature_dim, 1], dim=-1)
        alpha = masked_alpha(alpha_logits.squeeze(-1), keep)
        recon = torch.einsum("bkt,bktd->btd", alpha, patches)
        return recon, alpha
