"""Slot merging (docs/method.md#slot-merging), after SOLV (NeurIPS 2023): slots whose vectors point the
same way are one object. Agglomerative clustering (complete linkage) of each image's slot vectors under
cosine distance; clusters closer than a threshold merge. Works on any checkpoint at eval time.

Shapes stay [B, K, ...]: a group is stored in its representative row (the lowest slot index in the group)
and the other members' rows become zero, so an argmax over slots and the kept-slot count work unchanged.
"""

from __future__ import annotations

import numpy as np
import torch


def merge_groups(slots: torch.Tensor, threshold: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """slots [B, K, S] -> groups [B, K] long: groups[b, k] = the representative slot index of k's cluster.

    Two clusters merge while their complete-linkage cosine distance (1 - cos, the largest over member pairs)
    is below `threshold` (strictly, as scikit-learn's `distance_threshold` that SOLV uses). Slots with
    keep [B, K] false (dropped by a selector) are left out and stay alone. SOLV's threshold: 0.12.
    """
    # scipy here, not at the top: loading a model must not pay for it when no slots merge (docs/scale.md)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    b, k, _ = slots.shape
    x = torch.nn.functional.normalize(slots.detach().double(), dim=-1).cpu()
    distance = (1 - x @ x.transpose(1, 2)).clamp_min(0).numpy()  # [B, K, K]
    active = np.ones((b, k), bool) if keep is None else keep.detach().cpu().numpy() > 0.5
    groups = np.tile(np.arange(k), (b, 1))
    cut = np.nextafter(threshold, -np.inf)  # fcluster keeps distances <= t together; SOLV merges below t
    for i in range(b):
        idx = np.flatnonzero(active[i])
        if len(idx) < 2:
            continue
        d = distance[i][np.ix_(idx, idx)]
        np.fill_diagonal(d, 0)
        labels = fcluster(linkage(squareform(d, checks=False), method="complete"), cut, criterion="distance")
        for label in np.unique(labels):
            members = idx[labels == label]
            groups[i, members] = members.min()
    return torch.from_numpy(groups).to(slots.device)


def sum_groups(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x [B, K, ...], groups [B, K] (from `merge_groups`) -> [B, K, ...]: each representative row holds the
    sum of its group's rows, every other row is zero (e.g. merged alpha masks)."""
    k = x.shape[1]
    assign = torch.nn.functional.one_hot(groups, k).to(x.dtype)  # [B, member, representative]
    return torch.einsum("bkr,bk...->br...", assign, x)


def mean_groups(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """As `sum_groups`, with the mean over the group instead of the sum (e.g. merged slot vectors)."""
    size = torch.nn.functional.one_hot(groups, x.shape[1]).sum(1).clamp_min(1)  # [B, K] members per group
    return sum_groups(x, groups) / size.view(*size.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def slot_features(alpha: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """alpha [B, K, T], features [B, T, D] -> [B, K, D]: each slot's alpha-weighted mean input feature, what
    it explains of the image (docs/method.md#slot-merging); a slot with no alpha gets zeros."""
    weight = alpha / alpha.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("bkt,btd->bkd", weight, features)


def merged_keep(groups: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """groups [B, K] -> [B, K] bool: the representatives (of kept slots, if keep [B, K] is given); its row sum
    is the number of slots after merging."""
    rep = groups == torch.arange(groups.shape[1], device=groups.device)
    return rep if keep is None else rep & (keep > 0.5)
