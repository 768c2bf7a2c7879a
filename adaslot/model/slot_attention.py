"""Slot attention with a learned Gaussian slot initialisation (docs/method.md#slot-attention).

Layer names follow the official `ocl` modules so the checkpoint converter is a prefix rename:
`slots_mu`/`slots_logsigma` (conditioning), `norm_input`, `to_q/to_k/to_v`, `gru`, `norm_slots`,
`mlp` (= official `ff_mlp.module`, a residual LN -> Linear -> ReLU -> Linear).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def two_layer_mlp(in_dim: int, hidden: int, out_dim: int, layer_norm: bool = True) -> nn.Sequential:
    """[LN] -> Linear -> ReLU -> Linear with zero biases (official `build_two_layer_mlp`)."""
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)] if layer_norm else []
    layers += [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)]
    mlp = nn.Sequential(*layers)
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return mlp


class SlotAttention(nn.Module):
    """inputs [B, T, S] (already projected) -> slots [B, K, S], attn [B, K, T].

    One head; q/k/v without bias; LN on the inputs once and on the slots every iteration; softmax over
    slots; (A + eps) renormalised over tokens; GRUCell; residual MLP. Gradients flow through every
    iteration and into the slot initialisation.
    """

    def __init__(self, slot_dim: int, mlp_hidden: int, num_iterations: int = 3, eps: float = 1e-8,
                 slot_init_scale: float = 1.0, attention_temperature: float = 1.0) -> None:
        super().__init__()
        self.slot_dim = slot_dim
        self.num_iterations = num_iterations
        self.eps = eps
        self.slot_init_scale = slot_init_scale
        self.scale = 1.0 / (math.sqrt(slot_dim) * attention_temperature)
        # Learned Gaussian shared by all slots, so the same weights serve any K.
        self.slots_mu = nn.Parameter(torch.empty(1, 1, slot_dim))
        self.slots_logsigma = nn.Parameter(torch.empty(1, 1, slot_dim))
        nn.init.xavier_uniform_(self.slots_mu)
        nn.init.xavier_uniform_(self.slots_logsigma)
        self.norm_input = nn.LayerNorm(slot_dim)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_k = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(slot_dim, slot_dim, bias=False)
        self.norm_slots = nn.LayerNorm(slot_dim)
        # PyTorch's default init, biases not zeroed (docs/method.md#slot-attention)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.mlp = two_layer_mlp(slot_dim, mlp_hidden, slot_dim)

    def init_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """noise [B, K, S] ~ N(0, I) -> S0 = mu + scale * exp(log sigma) * noise [B, K, S], differentiable."""
        return self.slots_mu + self.slots_logsigma.exp() * self.slot_init_scale * noise

    def sample_init(self, batch_size: int, num_slots: int) -> torch.Tensor:
        """S0 [B, K, S] with fresh N(0, I) noise (sampled in train and eval, as official)."""
        noise = torch.randn(batch_size, num_slots, self.slot_dim, dtype=self.slots_mu.dtype,
                            device=self.slots_mu.device)
        return self.init_from_noise(noise)

    def fixed_init(self, batch_size: int, num_slots: int, seed: int) -> torch.Tensor:
        """S0 [B, K, S] from one N(0, I) draw [K, S] of a CPU generator seeded with `seed`, for every image.

        Inference (eval, segment, the Python API) starts from it, so a result is a function of (image,
        weights, seed) alone: the same whatever the batch, its order, the device or the rest of the run
        (docs/method.md#deviations)."""
        noise = torch.randn(num_slots, self.slot_dim, generator=torch.Generator().manual_seed(seed))
        noise = noise.to(device=self.slots_mu.device, dtype=self.slots_mu.dtype)
        return self.init_from_noise(noise.expand(batch_size, -1, -1))

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T, S], slots (initial) [B, K, S] -> (slots [B, K, S], attn [B, K, T]).

        `attn` is the last iteration's softmax over slots before the eps renormalisation (official output).
        """
        keys, values = self.project(inputs)
        attn = inputs.new_zeros(slots.shape[0], slots.shape[1], inputs.shape[1])
        for _ in range(self.num_iterations):
            slots, attn = self.iterate(slots, keys, values)
        return slots, attn

    def project(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, T, S] -> (keys, values) [B, T, S], after the input LayerNorm."""
        inputs = self.norm_input(inputs)
        return self.to_k(inputs), self.to_v(inputs)

    def iterate(self, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                active: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: slots [B, K, S], keys / values [B, T, S] -> (slots, attn [B, K, T]).

        active [B, K] bool (docs/method.md#count-options, re-assignment): only these slots compete for the
        tokens (the others get attention 0) and only they are updated; an image with no active slot is left
        as a plain iteration."""
        b, k, s = slots.shape
        q = self.to_q(self.norm_slots(slots))  # [B, K, S]
        logits = torch.einsum("bks,bts->bkt", q, keys) * self.scale
        if active is not None:
            active = active | ~active.any(dim=1, keepdim=True)
            logits = logits.masked_fill(~active[..., None], float("-inf"))
        attn = logits.softmax(dim=1)  # slots compete for each token
        weights = attn + self.eps
        weights = weights / weights.sum(dim=-1, keepdim=True)  # weighted mean over tokens
        updates = torch.einsum("bkt,bts->bks", weights, values)
        new = self.gru(updates.reshape(b * k, s), slots.reshape(b * k, s)).reshape(b, k, s)
        new = new + self.mlp(new)
        return (new if active is None else torch.where(active[..., None], new, slots)), attn

    def reassign(self, inputs: torch.Tensor, slots: torch.Tensor,
                 keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last iteration again over the kept slots only: inputs [B, T, S], slots [B, K, S], keep [B, K]
        (hard 0/1) -> (slots, attn [B, K, T]); dropped slots keep their vectors and get no attention."""
        keys, values = self.project(inputs)
        return self.iterate(slots, keys, values, active=keep.detach() > 0.5)
