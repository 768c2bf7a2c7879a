"""Losses (docs/method.md#losses): feature reconstruction MSE and the sparsity penalty (its weight is
applied by train)."""

from __future__ import annotations

import torch


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE, mean over B x T x D, against the (detached) encoder features. recon, target: [B, T, D]."""
    return torch.nn.functional.mse_loss(recon, target.detach().to(recon.dtype))


def sparsity_loss(keep: torch.Tensor) -> torch.Tensor:
    """Mean of the hard keep mask keep [B, K] (kept fraction of K); carries the straight-through gradient."""
    return keep.mean()


def sparsity_penalty(kept: torch.Tensor, linear: float, quadratic: float = 0.0, bias: float = 0.5
                     ) -> torch.Tensor:
    """The official penalty on the kept fraction `kept` (= sparsity_loss, a scalar):
    linear * kept + quadratic * (kept - bias)^2 (docs/method.md#losses; quadratic = 0 in every released
    config)."""
    penalty = linear * kept
    return penalty + quadratic * (kept - bias) ** 2 if quadratic else penalty
