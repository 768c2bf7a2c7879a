"""Slot merging: identical slots become one mask, distinct ones stay apart, complete linkage, thresholds."""

from __future__ import annotations

import math

import torch

from adaslot.model.merge import merge_groups, merged_keep, slot_features, sum_groups


def _unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees)), 0.0]


def test_identical_slots_merge_into_one_summed_mask():
    # slots 0 and 2 identical, slot 3 = 2 x slot 0, slot 1 orthogonal to them
    slots = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0], [2.0, 4.0, 0.0]]])
    alpha = torch.softmax(torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(0)), dim=1)
    groups = merge_groups(slots, 0.12)
    assert groups.tolist() == [[0, 1, 0, 0]]  # same direction = cosine distance 0, whatever the length
    merged = sum_groups(alpha, groups)
    torch.testing.assert_close(merged[0, 0], alpha[0, 0] + alpha[0, 2] + alpha[0, 3])
    torch.testing.assert_close(merged[0, 1], alpha[0, 1])
    assert merged[0, 2:].abs().sum() == 0
    torch.testing.assert_close(merged.sum(1), alpha.sum(1))  # still a partition of every token
    assert merged_keep(groups).sum().item() == 2


def test_threshold_and_complete_linkage():
    # cosine distances: d(0 deg, 20 deg) = 1 - cos 20 = 0.060, d(20, 45) = 1 - cos 25 = 0.094,
    # d(0, 45) = 0.293. Complete linkage: {0, 20} merge first, then {0, 20} vs 45 is
    # max(0.293, 0.094) = 0.293.
    slots = torch.tensor([[_unit(0), _unit(20), _unit(45)]])
    assert merge_groups(slots, 0.12).tolist() == [[0, 0, 2]]  # single linkage would chain all three
    assert merge_groups(slots, 0.05).tolist() == [[0, 1, 2]]
    assert merge_groups(slots, 0.3).tolist() == [[0, 0, 0]]
    # strictly below the threshold merges (as SOLV's scikit-learn call): orthogonal slots, d = 1 exactly
    pair = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert merge_groups(pair, 1.0).tolist() == [[0, 1]]
    assert merge_groups(pair, 1.0 + 1e-9).tolist() == [[0, 0]]


def test_orthogonal_slots_stay_apart_and_batches_are_independent():
    eye = torch.eye(3)[None]
    same = torch.ones(1, 3, 3)
    groups = merge_groups(torch.cat([eye, same]), 0.12)
    assert groups.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert merged_keep(groups).sum(1).tolist() == [3, 1]


def test_dropped_slots_are_not_merged():
    slots = torch.ones(1, 4, 3)
    keep = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    groups = merge_groups(slots, 0.12, keep=keep)
    assert groups.tolist() == [[0, 1, 0, 0]]
    assert merged_keep(groups, keep).tolist() == [[True, False, False, False]]


def test_slot_features_are_alpha_weighted_means_and_merge_split_objects():
    """Two slots splitting one object explain the same features: merging on features joins them even when
    their slot vectors point apart."""
    feats = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # object A: tokens 0-1, B: 2-3
    alpha = torch.tensor([[[1.0, 0.0, 0.0, 0.0],    # slot 0: half of A
                           [0.0, 1.0, 0.0, 0.0],    # slot 1: the other half of A
                           [0.0, 0.0, 0.5, 0.5]]])  # slot 2: B
    f = slot_features(alpha, feats)
    assert torch.equal(f, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]))
    slots = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])  # orthogonal vectors
    assert merge_groups(slots, 0.12).tolist() == [[0, 1, 2]]
    assert merge_groups(f, 0.12).tolist() == [[0, 0, 2]]
    assert torch.equal(sum_groups(alpha, merge_groups(f, 0.12))[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
