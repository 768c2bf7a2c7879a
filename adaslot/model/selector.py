"""AdaSlot's Gumbel keep/drop selector (stage 2, docs/method.md#selector).

`net` = official `single_gumbel_score_network`: LN -> Linear -> ReLU -> Linear(., 2); index 1 = keep.
"""

from __future__ import annotations

import torch
from torch import nn

from adaslot.errors import AdaslotError
from adaslot.model.slot_attention import two_layer_mlp

KEEP_MODES = ("gumbel", "deterministic")


def sample_gumbel(shape: torch.Size | tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(Exp(1)) of `shape` (same sampler as torch's gumbel_softmax)."""
    return -torch.empty(shape, dtype=like.dtype, device=like.device).exponential_().log()


class GumbelSelector(nn.Module):
    """slots [B, K, S] -> (keep [B, K] hard 0/1 with a straight-through gradient, logits [B, K, 2])."""

    def __init__(self, slot_dim: int, hidden: int, tau: float = 1.0, context: bool = False) -> None:
        super().__init__()
        self.tau, self.context = tau, context
        # context (docs/method.md#count-options, ours): each slot is scored beside its image's mean slot
        self.net = two_layer_mlp(2 * slot_dim if context else slot_dim, hidden, 2)

    def scores(self, slots: torch.Tensor) -> torch.Tensor:
        """slots [B, K, S] -> logits [B, K, 2] (index 1 = keep)."""
        if self.context:
            slots = torch.cat([slots, slots.mean(dim=1, keepdim=True).expand_as(slots)], dim=-1)
        logits: torch.Tensor = self.net(slots)
        return logits

    def forward(self, slots: torch.Tensor, mode: str = "gumbel",
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """mode "gumbel": hard Gumbel-softmax (tau=1), forward one-hot of argmax(logits + g), gradient of
        softmax((logits + g) / tau); `noise` [B, K, 2] fixes g. mode "deterministic": keep <=> logit_keep >
        logit_drop (g = 0), same straight-through gradient."""
        logits = self.scores(slots)  # [B, K, 2]
        if mode == "gumbel":
            g = sample_gumbel(logits.shape, logits) if noise is None else noise.to(logits)
        elif mode == "deterministic":
            g = torch.zeros_like(logits)
        else:
            raise AdaslotError(f"keep_mode must be one of {KEEP_MODES}, got {mode!r}")
        y = (logits + g) / self.tau
        soft = y.softmax(dim=-1)[..., 1]
        hard = (y[..., 1] > y[..., 0]).to(soft.dtype)  # ties -> drop, like argmax picking index 0
        # hard + (soft - soft) is exactly 0/1 in the forward (hard - soft + soft can be off by one ulp);
        # the backward is that of soft (straight-through).
        keep = hard + (soft - soft.detach())
        return keep, logits
