"""One optimisation step, shared by every input mode, one process or DDP: noise, model + loss, update."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from adaslot import distributed
from adaslot.config import ModelConfig
from adaslot.device import autocast
from adaslot.losses import reconstruction_loss, sparsity_loss, sparsity_penalty

if TYPE_CHECKING:
    from adaslot.model import AdaSlot


class NoiseSampler:
    """All randomness of a forward pass (slot init noise, Gumbel noise) from one seeded generator.

    Every rank draws the noise of the whole global batch and keeps its slice, so a DDP run computes exactly
    what one process computes on the same global batch; the generator state is saved for exact resume.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.device = device

    def sample(self, global_batch: int, cfg: ModelConfig,
               rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> slot noise [b, K, S] ~ N(0, I), Gumbel noise [b, K, 2] (stage 2) or None; b = rows in `rows`."""
        k, s = cfg.num_slots, cfg.slot_dim
        slot_noise = torch.randn(global_batch, k, s, generator=self.gen, device=self.device)[rows]
        gumbel = None
        if cfg.adaptive:
            expo = torch.empty(global_batch, k, 2, device=self.device).exponential_(generator=self.gen)
            gumbel = -expo[rows].log()
        return slot_noise, gumbel

    def state_dict(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.gen.set_state(state.cpu())


class TrainForward(nn.Module):
    """model + loss as one module (what DDP / torch.compile wrap).

    features [B, T, D], slot_noise [B, K, S], gumbel [B, K, 2] | None, select (False: selection warm-up),
    scale (the sparsity ramp's factor at this step, docs/method.md#count-options) -> (loss, mse, kept
    fraction [scalar]). S0 comes from `SlotAttention.init_from_noise` with the noise passed in (so ranks can
    slice one draw). Loss: docs/method.md#losses, with the official quadratic term when
    `quadratic_weight` > 0.
    """

    def __init__(self, model: AdaSlot, sparsity_weight: float, precision: str,
                 quadratic_weight: float = 0.0, quadratic_bias: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.sparsity_weight = sparsity_weight
        self.quadratic_weight, self.quadratic_bias = quadratic_weight, quadratic_bias
        self.precision = precision

    def forward(self, features: torch.Tensor, slot_noise: torch.Tensor, gumbel: torch.Tensor | None,
                select: bool = True, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slots_init = self.model.slot_attention.init_from_noise(slot_noise)
        with autocast(self.precision, features.device):
            out = self.model(features, slots_init=slots_init, gumbel_noise=gumbel, keep_mode="gumbel",
                             select=select)
        mse = reconstruction_loss(out.recon.float(), features)
        if out.keep is None:
            return mse, mse.detach(), torch.ones((), device=features.device)
        kept = sparsity_loss(out.keep.float())
        if out.keep_logits is None:  # quality selection: no gradient reaches the keep mask, so no penalty
            return mse, mse.detach(), kept.detach()
        penalty = sparsity_penalty(kept, scale * self.sparsity_weight, scale * self.quadratic_weight,
                                   self.quadratic_bias)
        return mse + penalty, mse.detach(), kept.detach()


class NonFiniteError(Exception):
    """A NaN/inf loss or gradient norm; raised before the optimiser touches the parameters."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


def optimisation_step(forward: nn.Module, model: nn.Module, optimiser: torch.optim.Optimizer,
                      features: torch.Tensor, slot_noise: torch.Tensor, gumbel: torch.Tensor | None,
                      grad_clip: float, select: bool = True, scale: float = 1.0
                      ) -> tuple[float, float, float, float]:
    """One update: loss, backward, clip, Adam -> (loss, mse, kept fraction, grad norm) as floats.

    features [b, T, D]; select False skips stage 2's keep decision (a selection warm-up); scale multiplies
    the sparsity weights (their ramp). The loss values
    are averaged over DDP ranks, so every rank takes the same NaN decision. Raises NonFiniteError
    (parameters untouched) on a NaN/inf loss or gradient norm.
    """
    loss, mse, kept = forward(features, slot_noise, gumbel, select, scale)
    stats = distributed.all_reduce_mean(torch.stack([loss.detach(), mse, kept]).float())
    loss_v, mse_v, kept_v = stats.tolist()
    if not math.isfinite(loss_v):
        raise NonFiniteError("loss", loss_v)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    # grad_clip <= 0: no clipping (the norm is still measured for the log and the NaN check).
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                               grad_clip if grad_clip > 0 else float("inf")).item()
    if not math.isfinite(grad_norm):
        raise NonFiniteError("gradient norm", grad_norm)
    optimiser.step()
    return loss_v, mse_v, kept_v, grad_norm
