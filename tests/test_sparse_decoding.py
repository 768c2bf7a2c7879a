"""Exact speed-ups of the decoder, checked in float64.

Sparse decoding (stage 2, hard keep): dropped slots' rows run without autograd. Forward values are the
dense ones. Gradients equal the dense ones exactly except for one term: the renormalising constant 1e-5
makes a kept alpha depend on the dropped slots' alpha logits (alpha_k = e^a_k Z_k / (sum_kept e^a +
1e-5 sum_all e^a)). With that constant set to 0 the two paths agree to rounding, which proves it is the
only difference; with the official 1e-5 the relative gap is bounded by 1e-5.
Split first layer: W (slot + pos) + b == (W slot + b) + W pos, forward and gradients.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import adaslot.model.decoder as decoder_module
from adaslot.config import ModelConfig
from adaslot.model import AdaSlot

CFG = ModelConfig(feature_dim=24, num_tokens=9, slot_dim=16, num_slots=8, input_mlp_hidden=20,
                  slot_mlp_hidden=32, decoder_hidden=(32, 32, 32), adaptive=True, selector_hidden=32)


def build(**kw) -> AdaSlot:
    torch.manual_seed(0)
    return AdaSlot(dataclasses.replace(CFG, **kw)).double().train()


def batch(noise_shift: float = 0.0, b: int = 4):
    g = torch.Generator().manual_seed(2)
    f = torch.randn(b, CFG.num_tokens, CFG.feature_dim, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, CFG.num_slots, CFG.slot_dim, generator=g, dtype=torch.float64)
    noise = torch.randn(b, CFG.num_slots, 2, generator=g, dtype=torch.float64)
    noise[..., 1] += noise_shift
    return f, s0, noise


def step(model: AdaSlot, sparse: bool, f, s0, noise):
    """One stage-2 loss + backward -> (outputs, {param name: grad})."""
    model.zero_grad()
    model.cfg.sparse_decoding = sparse
    out = model(f, s0, noise, keep_mode="gumbel")
    loss = ((out.recon - f) ** 2).mean() + 0.1 * out.keep.mean()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sparse_forward_equals_dense():
    model = build()
    f, s0, noise = batch()
    with torch.no_grad():
        model.cfg.sparse_decoding = False
        dense = model(f, s0, noise, keep_mode="gumbel")
    sparse, _ = step(model, True, f, s0, noise)
    assert 0 < dense.keep.sum() < dense.keep.numel()
    torch.testing.assert_close(sparse.recon, dense.recon, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(sparse.alpha, dense.alpha, rtol=1e-13, atol=1e-13)
    assert torch.all(sparse.alpha[sparse.keep == 0] == 0)


def test_sparse_gradients_equal_dense_without_the_renormalising_constant(monkeypatch):
    monkeypatch.setattr(decoder_module, "RENORM_EPS", 0.0)
    model = build()
    f, s0, noise = batch()
    out, dense = step(model, False, f, s0, noise)
    assert torch.all(out.keep.detach().sum(1) > 0)  # eps 0 needs a kept slot per image
    _, sparse = step(model, True, f, s0, noise)
    assert dense.keys() == sparse.keys() and len(dense) == 38  # all but slots_mu/logsigma (explicit s0)
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-10, atol=1e-14, msg=name)


def test_sparse_gradients_match_official_dense_within_the_constant():
    model = build()
    f, s0, noise = batch()
    _, dense = step(model, False, f, s0, noise)
    _, sparse = step(model, True, f, s0, noise)
    for name in dense:
        scale = dense[name].abs().max()
        assert (sparse[name] - dense[name]).abs().max() <= 1e-5 * scale + 1e-15, name
    for name in dense:
        if name.startswith("selector."):  # the straight-through gradient needs forward values only: exact
            torch.testing.assert_close(sparse[name], dense[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("shift", [-50.0, 50.0])  # every slot dropped / every slot kept
def test_sparse_edge_cases_all_dropped_all_kept(shift):
    model = build()
    f, s0, noise = batch(noise_shift=shift)
    out, sparse = step(model, True, f, s0, noise)
    assert out.keep.sum() == (0 if shift < 0 else out.keep.numel())
    ref, dense = step(model, False, f, s0, noise)
    torch.testing.assert_close(out.recon, ref.recon, rtol=1e-13, atol=1e-13)
    for name in dense:
        scale = dense[name].abs().max()
        assert (sparse[name] - dense[name]).abs().max() <= 1e-5 * scale + 1e-15, name


def test_split_first_layer_equals_concat_forward_and_gradients():
    model = build()
    f, s0, noise = batch()
    model.decoder.split_first_layer = False
    ref, dense = step(model, False, f, s0, noise)
    model.decoder.split_first_layer = True
    out, split = step(model, False, f, s0, noise)
    torch.testing.assert_close(out.recon, ref.recon, rtol=1e-12, atol=1e-13)
    for name in dense:
        torch.testing.assert_close(split[name], dense[name], rtol=1e-10, atol=1e-14, msg=name)


def test_sparse_path_not_used_without_autograd_or_keep():
    model = build()
    f, s0, noise = batch()
    with torch.no_grad():
        a = model(f, s0, noise, keep_mode="gumbel")
    model.cfg.sparse_decoding = False
    with torch.no_grad():
        b = model(f, s0, noise, keep_mode="gumbel")
    assert torch.equal(a.recon, b.recon)
    stage1 = build(adaptive=False)
    stage1.cfg.sparse_decoding = True
    out = stage1(f, s0)
    assert out.keep is None and out.recon.requires_grad
