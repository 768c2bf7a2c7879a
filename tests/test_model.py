"""Model core vs the reference (docs/method.md): parameter counts, shapes, masked decoding, Gumbel
straight-through, determinism, and a float64 forward against an independent re-computation from raw
tensors (`reference_forward`, also used by tests/test_convert.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from adaslot.config import ModelConfig, model_config_for
from adaslot.errors import AdaslotError
from adaslot.losses import reconstruction_loss, sparsity_loss
from adaslot.model import AdaSlot, load_stage1_into_stage2

SMALL = ModelConfig(feature_dim=24, num_tokens=9, slot_dim=16, num_slots=6, input_mlp_hidden=20,
                    slot_mlp_hidden=32, decoder_hidden=(32, 32, 32), selector_hidden=32)


def small(adaptive: bool = True, **kw) -> AdaSlot:
    torch.manual_seed(0)
    return AdaSlot(dataclasses.replace(SMALL, adaptive=adaptive, **kw)).double()


def inputs(cfg: ModelConfig, b: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(b, cfg.num_tokens, cfg.feature_dim, generator=g, dtype=torch.float64)
    s0 = torch.randn(b, cfg.num_slots, cfg.slot_dim, generator=g, dtype=torch.float64)
    noise = torch.randn(b, cfg.num_slots, 2, generator=g, dtype=torch.float64)
    return f, s0, noise


# ---- an independent forward from raw tensors with the official names (no model code used) ----

def _ln(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def _softmax(x, dim):
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def _mlp(x, p, prefix, idx, ln=True):
    """LN (idx[0]) -> Linear -> ReLU -> ... -> Linear, with the given Sequential indices."""
    if ln:
        x = _ln(x, p[f"{prefix}.{idx[0]}.weight"], p[f"{prefix}.{idx[0]}.bias"])
        idx = idx[1:]
    for j, i in enumerate(idx):
        x = x @ p[f"{prefix}.{i}.weight"].T + p[f"{prefix}.{i}.bias"]
        if j < len(idx) - 1:
            x = torch.clamp(x, min=0)
    return x


def reference_forward(p: dict, features, slots_init, noise=None, iters=3, eps=1e-8):
    """p: official key names without the `models.` prefix. Returns (slots, alpha, recon, keep)."""
    sa = "perceptual_grouping.slot_attention"
    x = _mlp(features, p, "perceptual_grouping.positional_embedding.layers.1", [0, 1, 3])
    x = _ln(x, p[f"{sa}.norm_input.weight"], p[f"{sa}.norm_input.bias"])
    k, v = x @ p[f"{sa}.to_k.weight"].T, x @ p[f"{sa}.to_v.weight"].T
    s = slots_init
    d = s.shape[-1]
    for _ in range(iters):
        q = _ln(s, p[f"{sa}.norm_slots.weight"], p[f"{sa}.norm_slots.bias"]) @ p[f"{sa}.to_q.weight"].T
        a = _softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=1) + eps
        u = (a / a.sum(-1, keepdim=True)) @ v
        gi = u @ p[f"{sa}.gru.weight_ih"].T + p[f"{sa}.gru.bias_ih"]
        gh = s @ p[f"{sa}.gru.weight_hh"].T + p[f"{sa}.gru.bias_hh"]
        r = torch.sigmoid(gi[..., :d] + gh[..., :d])
        z = torch.sigmoid(gi[..., d:2 * d] + gh[..., d:2 * d])
        n = torch.tanh(gi[..., 2 * d:] + r * gh[..., 2 * d:])
        s = (1 - z) * n + z * s
        s = s + _mlp(s, p, f"{sa}.ff_mlp.module", [0, 1, 3])
    keep = None
    if f"{sa}.single_gumbel_score_network.0.weight" in p:
        logits = _mlp(s, p, f"{sa}.single_gumbel_score_network", [0, 1, 3]) + noise
        keep = (logits[..., 1] > logits[..., 0]).to(s.dtype)
    n_lin = sum(1 for key in p if key.startswith("object_decoder.decoder.") and key.endswith(".weight"))
    h = s[:, :, None, :] + p["object_decoder.pos_embed"][None]
    out = _mlp(h, p, "object_decoder.decoder", [2 * i for i in range(n_lin)], ln=False)
    patches, logit = out[..., :-1], out[..., -1]
    alpha = _softmax(logit, dim=1)
    if keep is not None:
        alpha = alpha * keep[..., None]
        alpha = alpha / (alpha.sum(1, keepdim=True) + 1e-5)
    recon = (alpha[..., None] * patches).sum(1)
    return s, alpha, recon, keep


# Our names -> official names, written out here independently of adaslot/convert.py.
OURS_TO_OFFICIAL = [
    ("slot_attention.slots_mu", "conditioning.slots_mu"),
    ("slot_attention.slots_logsigma", "conditioning.slots_logsigma"),
    ("input_mlp.", "perceptual_grouping.positional_embedding.layers.1."),
    ("slot_attention.mlp.", "perceptual_grouping.slot_attention.ff_mlp.module."),
    ("slot_attention.", "perceptual_grouping.slot_attention."),
    ("selector.net.", "perceptual_grouping.slot_attention.single_gumbel_score_network."),
    ("decoder.mlp.", "object_decoder.decoder."),
    ("decoder.pos_embed", "object_decoder.pos_embed"),
]


def as_official(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        new = next(o + key[len(a):] for a, o in OURS_TO_OFFICIAL if key.startswith(a))
        out[new] = value
    return out


# ---- reference numbers (docs/method.md#parameter-counts) ----

@pytest.mark.parametrize("stage,k,count,tensors", [(1, 7, 12_452_865, 34), (2, 33, 12_718_595, 40)])
def test_reference_size_parameter_counts(stage, k, count, tensors):
    cfg = model_config_for("coco", stage)
    model = AdaSlot(cfg)
    params = list(model.parameters())
    assert cfg.num_slots == k
    assert sum(p.numel() for p in params) == count
    assert len(params) == tensors == len(model.state_dict())


@pytest.mark.e2e  # a forward pass at the full reference size (seconds; smaller models cover the same code)
@pytest.mark.parametrize("stage,k", [(1, 7), (2, 33)])
def test_reference_size_shapes(stage, k):
    torch.manual_seed(0)
    model = AdaSlot(model_config_for("coco", stage)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 196, 768))
    assert out.slots.shape == (1, k, 256)
    assert out.alpha.shape == out.attn.shape == (1, k, 196)
    assert out.recon.shape == (1, 196, 768)
    if stage == 1:
        assert out.keep is None and out.keep_logits is None
    else:
        assert out.keep.shape == (1, k) and out.keep_logits.shape == (1, k, 2)
    total = out.alpha.sum(1)  # stage 1: 1; stage 2: 1 / (1 + 1e-5) or 0 if every slot is dropped
    assert torch.all(total <= 1 + 1e-6) and (stage == 2 or torch.allclose(total, torch.ones(1, 196)))


def test_initialisation_as_spec():
    model = AdaSlot(model_config_for("coco", 2))
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.bias is not None and ".gru" not in name:
            assert torch.count_nonzero(m.bias) == 0, name
    sa = model.slot_attention
    assert sa.slots_mu.shape == sa.slots_logsigma.shape == (1, 1, 256)
    bound = math.sqrt(6 / (256 + 256))  # xavier-uniform of a (1, 1, 256) tensor: fan_in = fan_out = 256
    assert sa.slots_mu.abs().max() <= bound and sa.slots_mu.std() > bound / 3
    assert torch.count_nonzero(sa.gru.bias_ih) > 0  # PyTorch default GRU init kept
    assert sa.to_q.bias is None and sa.to_k.bias is None and sa.to_v.bias is None
    pos = model.decoder.pos_embed
    assert pos.shape == (1, 196, 256) and 0.015 < pos.std() < 0.025


# ---- float64 forward vs an independent re-computation ----

@pytest.mark.parametrize("adaptive", [False, True])
def test_forward_matches_independent_recomputation_float64(adaptive):
    model = small(adaptive).train()
    f, s0, noise = inputs(model.cfg)
    out = model(f, slots_init=s0, gumbel_noise=noise if adaptive else None)
    p = as_official({k: v.detach() for k, v in model.state_dict().items()})
    slots, alpha, recon, keep = reference_forward(p, f, s0, noise if adaptive else None)
    torch.testing.assert_close(out.slots, slots, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.alpha, alpha, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.recon, recon, rtol=1e-10, atol=1e-10)
    if adaptive:
        assert torch.equal(out.keep, keep)
        assert 0 < keep.sum() < keep.numel()  # the fixed noise exercises both branches


def test_explicit_slots_and_noise_make_forward_reproducible():
    model = small(True).train()
    f, s0, noise = inputs(model.cfg)
    a, b = model(f, s0, noise), model(f, s0, noise)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.keep, b.keep)
    torch.manual_seed(5)
    c = model(f)
    torch.manual_seed(5)
    d = model(f)
    assert torch.equal(c.recon, d.recon)


def test_slot_init_scale_and_temperature_are_honoured():
    base, hot = small(False), small(False, attention_temperature=2.0, slot_init_scale=0.5)
    hot.load_state_dict(base.state_dict())
    f, s0, _ = inputs(base.cfg)
    assert not torch.allclose(base(f, s0).slots, hot(f, s0).slots)
    torch.manual_seed(3)
    a = base.slot_attention.sample_init(2, 4)
    torch.manual_seed(3)
    b = hot.slot_attention.sample_init(2, 4)
    mu = base.slot_attention.slots_mu
    torch.testing.assert_close(b - mu, 0.5 * (a - mu))


# ---- stage 2: masking, straight-through, sparsity, deterministic keep ----

def test_dropped_slots_have_zero_alpha_and_recon_equals_kept_only_decoding():
    model = small(True).train()
    model.cfg.sparse_decoding = False
    f, s0, noise = inputs(model.cfg)
    out = model(f, s0, noise)
    keep = out.keep.detach()
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    dropped = keep == 0
    assert dropped.any()
    assert torch.all(out.alpha[dropped] == 0)  # exactly zero, every token
    for i in range(f.shape[0]):
        kept = out.slots[i:i + 1, keep[i] == 1]
        recon_i, alpha_i = model.decoder(kept, torch.ones(1, kept.shape[1], dtype=kept.dtype))
        # Equal up to the 1e-5 renormalisation constant (it also sees the dropped slots' softmax mass).
        torch.testing.assert_close(out.recon[i:i + 1], recon_i, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out.alpha[i:i + 1, keep[i] == 1], alpha_i, rtol=1e-4, atol=1e-6)


def test_gumbel_straight_through_forward_hard_backward_soft():
    model = small(True).train()
    f, s0, noise = inputs(model.cfg)
    slots = model(f, s0, noise).slots.detach().requires_grad_(True)
    keep, logits = model.selector(slots, "gumbel", noise)
    assert torch.equal(keep, (logits + noise).argmax(-1).to(keep.dtype))  # forward: one-hot index 1
    (g_keep,) = torch.autograd.grad((keep * torch.arange(keep.shape[1])).sum(), slots)
    soft = (model.selector.net(slots) + noise).softmax(-1)[..., 1]
    (g_soft,) = torch.autograd.grad((soft * torch.arange(keep.shape[1])).sum(), slots)
    torch.testing.assert_close(g_keep, g_soft, rtol=1e-12, atol=1e-12)
    assert g_keep.abs().sum() > 0


def test_sparsity_loss_is_kept_fraction_and_reaches_selector():
    model = small(True).train()
    f, s0, noise = inputs(model.cfg)
    out = model(f, s0, noise)
    loss = sparsity_loss(out.keep)
    assert loss.item() == out.keep.detach().sum().item() / out.keep.numel()
    total = reconstruction_loss(out.recon, f) + 0.1 * loss
    torch.testing.assert_close(total, ((out.recon - f) ** 2).mean() + 0.1 * loss)
    total.backward()
    for name, p in model.selector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.decoder.mlp[0].weight.grad.abs().sum() > 0


def test_deterministic_keep_is_logit_comparison_and_default_in_eval():
    model = small(True).eval()
    f, s0, _ = inputs(model.cfg)
    out = model(f, s0)
    assert torch.equal(out.keep, (out.keep_logits[..., 1] > out.keep_logits[..., 0]).to(out.keep.dtype))
    torch.manual_seed(0)
    again = model(f, s0, gumbel_noise=torch.randn(3, 6, 2, dtype=torch.float64) * 100)
    assert torch.equal(out.keep, again.keep)  # noise ignored in deterministic mode
    gumbel = model(f, s0, gumbel_noise=torch.full((3, 6, 2), 0.0, dtype=torch.float64), keep_mode="gumbel")
    assert torch.equal(out.keep, gumbel.keep)  # zero noise == deterministic
    with pytest.raises(AdaslotError, match="keep_mode"):
        model(f, s0, keep_mode="sometimes")


def test_stage1_weights_warm_start_stage2():
    s1 = small(False, num_slots=3)
    s2 = small(True)
    missing = load_stage1_into_stage2(s2, s1.state_dict())
    assert sorted(missing) == sorted(k for k in s2.state_dict() if k.startswith("selector."))
    assert len(missing) == 6
    for k, v in s1.state_dict().items():
        assert torch.equal(s2.state_dict()[k], v)


@pytest.mark.parametrize("damage,msg", [
    (lambda sd: {**sd, "decoder.pos_embed": torch.zeros(1, 5, 16)}, "decoder.pos_embed"),  # another shape
    (lambda sd: {**sd, "decoder.extra": torch.zeros(1)}, "decoder.extra"),  # a tensor stage 2 lacks
    (lambda sd: {k: v for k, v in sd.items() if k != "slot_attention.gru.weight_ih"}, "gru.weight_ih"),
], ids=["shape", "unexpected", "missing"])
def test_stage1_weights_that_do_not_fit_stage2_are_refused_naming_the_tensor(damage, msg):
    s1 = small(False, num_slots=3)
    with pytest.raises(AdaslotError, match=msg):
        load_stage1_into_stage2(small(True), damage(dict(s1.state_dict())))


def test_wrong_feature_shape_is_a_user_error():
    model = small(False)
    with pytest.raises(AdaslotError, match="expects"):
        model(torch.zeros(1, 10, 24, dtype=torch.float64))
