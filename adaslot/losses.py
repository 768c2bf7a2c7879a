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
