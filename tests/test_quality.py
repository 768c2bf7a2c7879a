"""Quality-guided slot selection against a hand-built attention map."""

from __future__ import annotations

import pytest
import torch

from adaslot.model.quality import quality_select, slot_quality

# Slot attention over 8 tokens (columns sum to 1 over the 4 slots):
#   tokens 0-2: (0.85, 0.05, 0.05, 0.05)   slot 0 wins
#   tokens 3-4: (0,    0.8,  0.2,  0)      slot 1 wins
#   token  5:   (0,    0.4,  0.6,  0)      slot 2 wins
#   tokens 6-7: (0,    0,    0.3,  0.7)    slot 3 wins
# Mass W and won mass W_win: slot 0: 2.55 / 2.55; slot 1: 0.15 + 1.6 + 0.4 = 2.15 / 1.6;
# slot 2: 0.15 + 0.4 + 0.6 + 0.6 = 1.75 / 0.6; slot 3: 0.15 + 1.4 = 1.55 / 1.4.
# Quality: 1.0, 0.744, 0.343, 0.903 -> order 0, 3, 1, 2.
COLUMNS = [(0.85, 0.05, 0.05, 0.05)] * 3 + [(0.0, 0.8, 0.2, 0.0)] * 2 + [(0.0, 0.4, 0.6, 0.0)] + [
    (0.0, 0.0, 0.3, 0.7)] * 2
ATTN = torch.tensor(COLUMNS).t()[None]  # [1, 4, 8]


def test_quality_by_hand():
    q = slot_quality(ATTN)[0]
    expected = torch.tensor([2.55 / 2.55, 1.6 / 2.15, 0.6 / 1.75, 1.4 / 1.55])
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-5)


def test_greedy_selection_by_hand():
    # K_min 2 -> {0, 3}. Covered (active sum >= 0.5): tokens 0-2 (0.9), 6-7 (0.7) = 5/8 < 0.8.
    # Next slot 1: mass 2.15, on covered tokens 0.15 -> novelty 0.93 >= 0.3: taken. Now tokens 3-4 (0.8) are
    # covered too, token 5 (0.4) is not: 7/8 >= 0.8 -> stop; slot 2 stays off.
    assert quality_select(ATTN)[0].tolist() == [True, True, False, True]
    # rho 0.95: 7/8 is short, so slot 2 is considered: mass 1.75, on covered tokens 0.15 + 0.4 + 0.6 = 1.15
    # -> novelty 1 - 1.15 / 1.75 = 0.343: taken with alpha 0.3, skipped with alpha 0.35.
    assert quality_select(ATTN, rho=0.95)[0].tolist() == [True, True, True, True]
    assert quality_select(ATTN, rho=0.95, alpha=0.35)[0].tolist() == [True, True, False, True]
    # K_min 1 reaches the same set ({0} covers 3/8; slot 3 novelty 1 - 0.15/1.55 = 0.90: taken; then slot 1)
    assert quality_select(ATTN, k_min=1)[0].tolist() == [True, True, False, True]
    # rho 0.6: {0, 3} already covers 5/8 = 0.625 -> nothing added
    assert quality_select(ATTN, rho=0.6)[0].tolist() == [True, False, False, True]


@pytest.mark.parametrize("k_min", [3, 4, 9])
def test_k_min_honoured(k_min):
    keep = quality_select(ATTN, k_min=k_min, rho=0.0)  # rho 0: nothing beyond the first k_min
    assert int(keep.sum()) == min(k_min, 4)
    assert keep[0, 0] and keep[0, 3]  # the two best-quality slots are always among them


def test_batch_independence_and_slot_permutation():
    perm = torch.tensor([2, 0, 3, 1])
    other = torch.softmax(torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    batch = torch.cat([ATTN, ATTN[:, perm], other])
    keep = quality_select(batch, rho=0.9)
    for i in range(3):
        assert torch.equal(keep[i], quality_select(batch[i:i + 1], rho=0.9)[0])
    assert torch.equal(keep[1], keep[0][perm])  # relabelling the slots relabels the selection
    assert not keep.requires_grad and keep.dtype == torch.bool


def test_no_gradient_and_zero_mass_slot():
    attn = ATTN.clone().requires_grad_(True)
    assert quality_select(attn).tolist() == [[True, True, False, True]]
    # a slot with no attention at all is never added, however short the coverage is (tau 1.5: no token
    # can be covered, so every other slot is taken with novelty 1)
    dead = torch.cat([ATTN, torch.zeros(1, 1, 8)], dim=1)
    assert quality_select(dead, tau=1.5)[0].tolist() == [True, True, True, True, False]
