"""Quality-guided slot selection against a hand-built attention map."""

from __future__ import annotations

import pytest
import torch

from adaslot.config import ModelConfig
from adaslot.model import AdaSlot
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
PUBLISHED = {"k_min": 2, "tau": 0.5, "rho": 0.8, "alpha": 0.3}  # QASA on COCO = ModelConfig defaults


def select(attn: torch.Tensor, **changes) -> torch.Tensor:
    return quality_select(attn, **{**PUBLISHED, **changes})


def test_quality_by_hand():
    q = slot_quality(ATTN)[0]
    expected = torch.tensor([2.55 / 2.55, 1.6 / 2.15, 0.6 / 1.75, 1.4 / 1.55])
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-5)


def test_greedy_selection_by_hand():
    # K_min 2 -> {0, 3}. Covered (active sum >= 0.5): tokens 0-2 (0.9), 6-7 (0.7) = 5/8 < 0.8.
    # Next slot 1: mass 2.15, on covered tokens 0.15 -> novelty 0.93 >= 0.3: taken. Now tokens 3-4 (0.8) are
    # covered too, token 5 (0.4) is not: 7/8 >= 0.8 -> stop; slot 2 stays off.
    assert select(ATTN)[0].tolist() == [True, True, False, True]
    # rho 0.95: 7/8 is short, so slot 2 is considered: mass 1.75, on covered tokens 0.15 + 0.4 + 0.6 = 1.15
    # -> novelty 1 - 1.15 / 1.75 = 0.343: taken with alpha 0.3, skipped with alpha 0.35.
    assert select(ATTN, rho=0.95)[0].tolist() == [True, True, True, True]
    assert select(ATTN, rho=0.95, alpha=0.35)[0].tolist() == [True, True, False, True]
    # K_min 1 reaches the same set ({0} covers 3/8; slot 3 novelty 1 - 0.15/1.55 = 0.90: taken; then slot 1)
    assert select(ATTN, k_min=1)[0].tolist() == [True, True, False, True]
    # rho 0.6: {0, 3} already covers 5/8 = 0.625 -> nothing added
    assert select(ATTN, rho=0.6)[0].tolist() == [True, False, False, True]


@pytest.mark.parametrize("k_min", [3, 4, 9])
def test_k_min_honoured(k_min):
    keep = select(ATTN, k_min=k_min, rho=0.0)  # rho 0: nothing beyond the first k_min
    assert int(keep.sum()) == min(k_min, 4)
    assert keep[0, 0] and keep[0, 3]  # the two best-quality slots are always among them


def test_batch_independence_and_slot_permutation():
    perm = torch.tensor([2, 0, 3, 1])
    other = torch.softmax(torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    batch = torch.cat([ATTN, ATTN[:, perm], other])
    keep = select(batch, rho=0.9)
    for i in range(3):
        assert torch.equal(keep[i], select(batch[i:i + 1], rho=0.9)[0])
    assert torch.equal(keep[1], keep[0][perm])  # relabelling the slots relabels the selection
    assert not keep.requires_grad and keep.dtype == torch.bool


def test_defaults_are_the_published_settings():
    m = ModelConfig()
    assert (m.quality_k_min, m.quality_tau, m.quality_rho, m.quality_alpha) == tuple(PUBLISHED.values())
    assert m.selector == "adaslot"


def test_no_gradient_and_zero_mass_slot():
    attn = ATTN.clone().requires_grad_(True)
    assert select(attn).tolist() == [[True, True, False, True]]
    # a slot with no attention at all is never added, however short the coverage is (tau 1.5: no token
    # can be covered, so every other slot is taken with novelty 1)
    dead = torch.cat([ATTN, torch.zeros(1, 1, 8)], dim=1)
    assert select(dead, tau=1.5)[0].tolist() == [True, True, True, True, False]


# ---- in the model and in training -------------------------------------------------------------------

def quality_model(**kw) -> AdaSlot:
    cfg = ModelConfig(feature_dim=24, num_tokens=9, slot_dim=16, num_slots=6, input_mlp_hidden=20,
                      slot_mlp_hidden=32, decoder_hidden=(32,), adaptive=True, selector="quality", **kw)
    torch.manual_seed(0)
    return AdaSlot(cfg).double()


def test_quality_selector_masks_the_decoder():
    model = quality_model(quality_rho=0.0)  # rho 0: exactly the K_min = 2 best slots per image
    assert model.selector is None and not any(k.startswith("selector.") for k in model.state_dict())
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 9, 24, generator=g, dtype=torch.float64)
    s0 = torch.randn(3, 6, 16, generator=g, dtype=torch.float64)
    out = model(f, s0)
    assert out.keep_logits is None and out.keep.sum(1).tolist() == [2.0, 2.0, 2.0]
    best = slot_quality(out.attn).argsort(dim=1, descending=True, stable=True)[:, :2]
    assert torch.equal(out.keep.bool(), torch.zeros(3, 6, dtype=torch.bool).scatter(1, best, True))
    assert torch.all(out.alpha[out.keep == 0] == 0)
    torch.testing.assert_close(out.alpha.sum(1), torch.full((3, 9), 1.0, dtype=torch.float64), atol=1e-4,
                               rtol=0)
    # warm-up: no selection, every slot decodes with the plain softmax (stage-1 alpha)
    warm = model(f, s0, select=False)
    assert warm.keep is None
    torch.testing.assert_close(warm.alpha.sum(1), torch.ones(3, 9, dtype=torch.float64))
    # training: MSE only (no penalty on a keep mask without gradient); the decoder still learns
    model.train()
    from adaslot.train import TrainForward

    sa = model.slot_attention
    slot_noise = ((s0 - sa.slots_mu) / sa.slots_logsigma.exp()).detach()  # the noise that gives S0 = s0
    loss, mse, kept = TrainForward(model, sparsity_weight=0.5, precision="fp32")(f, slot_noise, None)
    assert loss.item() == mse.item() and kept.item() == pytest.approx(2 / 6)
    loss.backward()
    assert model.decoder.mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.e2e  # trains, then runs eval
def test_train_quality_selector_with_warmup_then_eval(tmp_path, train_store, synthetic_coco):
    from helpers import TINY_MODEL

    from adaslot.checkpoint import load_checkpoint
    from adaslot.config import DataSpec, EvalConfig, TrainConfig
    from adaslot.errors import AdaslotError
    from adaslot.evaluate import run_eval
    from adaslot.train import read_metrics, run_train

    common = dict(from_cache=str(train_store), stage=2, num_slots=6, batch_size=4, lr_schedule="constant",
                  lr=1e-3, log_every=1, ckpt_every=10, workers=0, device="cpu", progress=False)
    model = {**TINY_MODEL, "quality_rho": 0.0}  # rho 0: K_min = 2 slots after warm-up
    r = run_train(TrainConfig(out=str(tmp_path / "q"), num_iters=4, selection_warmup=2, selector="quality",
                          model_overrides=model, **common))
    rows = [row for row in read_metrics(tmp_path / "q") if "loss" in row]
    assert [row["kept_slots"] for row in rows] == pytest.approx([6, 6, 2, 2])
    assert all(row["loss"] == row["mse"] for row in rows)  # no sparsity penalty
    payload = load_checkpoint(r["checkpoint"])
    assert payload["model_config"]["selector"] == "quality"
    assert not any(k.startswith("selector.") for k in payload["model"])

    # eval selects as training did: exactly K_min slots kept on every image
    ecfg = EvalConfig(checkpoint=r["checkpoint"], data=DataSpec(root=str(synthetic_coco), split="val"),
                      out=str(tmp_path / "e"), workers=0, num_vis=0, device="cpu", progress=False)
    m = run_eval(ecfg)
    assert m["keep_mode"].startswith("quality selection (tau 0.5, rho 0.0")
    s = m["protocols"]["adaslot"]
    assert s["mean_kept_slots"] == 2.0 and s["count_confusion"]["slots"] == "kept"
    assert all(len(row) == 3 and row[:2] == [0, 0] for row in s["count_confusion"]["counts"])
    with pytest.raises(AdaslotError, match="quality"):
        run_eval(ecfg.replace(gumbel_eval=1))


def test_selection_warmup_is_for_the_quality_selector(tmp_path, train_store):
    from helpers import tiny_train

    from adaslot.errors import AdaslotError
    from adaslot.train import run_train

    with pytest.raises(AdaslotError, match="quality selector"):
        run_train(tiny_train(tmp_path / "a", from_cache=str(train_store), stage=2, num_slots=6, num_iters=1,
                             selection_warmup=1))


def test_the_selector_flag_is_for_stage_2():
    from adaslot.config import TrainConfig
    from adaslot.errors import AdaslotError

    with pytest.raises(AdaslotError, match="--selector is for stage 2"):
        TrainConfig(out="b", from_cache="s", selector="quality").validate()


def test_the_selector_flag_beats_the_model_override():
    """As --num-slots beats --model num_slots=..., --selector beats --model selector=...."""
    from adaslot.config import TrainConfig

    both = TrainConfig(out="x", from_cache="s", stage=2, selector="adaslot",
                       model_overrides={"selector": "quality", "num_slots": 3}, num_slots=5)
    assert both.model_settings()["selector"] == "adaslot" and both.model_settings()["num_slots"] == 5


def test_quality_stage2_warm_starts_from_a_stage1_checkpoint(tmp_path, train_store):
    """Stage 1 has no selector: its checkpoint (selector 'adaslot', the default) warm-starts a quality
    stage 2."""
    from helpers import TINY_MODEL, tiny_train

    from adaslot.checkpoint import load_checkpoint
    from adaslot.train import run_train

    s1 = run_train(tiny_train(tmp_path / "s1", from_cache=str(train_store), num_iters=2))
    s2 = run_train(tiny_train(tmp_path / "s2", from_cache=str(train_store), num_iters=2, stage=2,
                          selector="quality", warmstart=s1["checkpoint"],
                          model_overrides={**TINY_MODEL, "quality_tau": 0.3}))
    payload = load_checkpoint(s2["checkpoint"])
    assert payload["model_config"]["selector"] == "quality" and payload["model_config"]["quality_tau"] == 0.3
    first = load_checkpoint(s1["checkpoint"])["model"]
    assert set(first) == set(payload["model"])  # no score network to add, nothing left out
