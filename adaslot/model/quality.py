"""Quality-guided slot selection (docs/method.md#quality-selection), after QASA (arXiv 2601.12936).

A slot's quality is the share of its slot-attention mass that lies on tokens it wins; slots are taken in
order of quality until the active slots cover enough of the image, skipping slots that would mostly add
attention to tokens already covered. No parameters and no gradient: selection is decoupled from the loss.
"""

from __future__ import annotations

import torch

QUALITY_EPS = 1e-6  # the constant of QASA's quality and novelty ratios


def slot_quality(attn: torch.Tensor) -> torch.Tensor:
    """attn [B, K, T] (softmax over slots) -> quality [B, K] = W_win / (W + 1e-6).

    W = a slot's attention summed over all tokens, W_win = summed over the tokens it wins (its attention
    there is the largest over slots; ties go to the lower slot index, as argmax does).
    """
    won = attn.argmax(dim=1, keepdim=True) == torch.arange(attn.shape[1], device=attn.device)[:, None]
    return (attn * won).sum(-1) / (attn.sum(-1) + QUALITY_EPS)


@torch.no_grad()
def quality_select(attn: torch.Tensor, *, k_min: int, tau: float, rho: float, alpha: float) -> torch.Tensor:
    """attn [B, K, T] (last slot-attention iteration, softmax over slots) -> keep [B, K] bool.

    Per image: order slots by `slot_quality`, descending; activate the first `k_min` (at least 1). A token is
    covered when the active slots' attention on it sums to >= tau. While fewer than a fraction rho of the
    tokens are covered, take the next slot in order: skip it if its attention mass is ~0 or its novelty
    1 - (its mass on covered tokens) / (its mass) is below alpha, else activate it. Images are independent;
    the loop runs over slot ranks, batched over images. Settings: ModelConfig.quality_* (the published COCO
    values are their defaults).
    """
    attn = attn.detach().float()
    b, k, _ = attn.shape
    rows = torch.arange(b, device=attn.device)
    order = slot_quality(attn).argsort(dim=1, descending=True, stable=True)  # [B, K]
    first = min(max(int(k_min), 1), k)
    keep = torch.zeros(b, k, dtype=torch.bool, device=attn.device)
    keep[rows[:, None], order[:, :first]] = True
    mass = attn.sum(-1)  # [B, K]
    for rank in range(first, k):
        covered = (attn * keep[..., None]).sum(1) >= tau  # [B, T]
        short = covered.float().mean(-1) < rho  # [B]: still below the coverage target
        cand = order[:, rank]
        cand_attn, cand_mass = attn[rows, cand], mass[rows, cand]  # [B, T], [B]
        novelty = 1 - (cand_attn * covered).sum(-1) / (cand_mass + QUALITY_EPS)
        keep[rows, cand] = short & (cand_mass > QUALITY_EPS) & (novelty >= alpha)
    return keep
