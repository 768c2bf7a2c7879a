"""`adaslot convert-official`: a random state dict with the official `ocl` names and shapes (built here, no
official code) is converted and must reproduce a forward computed independently from the raw tensors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_model import reference_forward

from adaslot.checkpoint import load_checkpoint, load_model
from adaslot.cli import main
from adaslot.convert import convert_official, convert_state_dict
from adaslot.errors import AdaslotError
from adaslot.model import AdaSlot, load_stage1_into_stage2

PG = "models.perceptual_grouping"
SA = f"{PG}.slot_attention"


def official_state_dict(feature_dim=768, slot_dim=256, tokens=196, dec=(2048, 2048, 2048), score=True,
                        seed=0) -> dict[str, torch.Tensor]:
    """Random tensors under the official key names and shapes (biases and LN affine non-trivial too)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def lin(key, out_dim, in_dim, bias=True):
        sd[f"{key}.weight"] = torch.randn(out_dim, in_dim, generator=g) / in_dim ** 0.5
        if bias:
            sd[f"{key}.bias"] = torch.randn(out_dim, generator=g) * 0.1

    def ln(key, dim):
        sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
        sd[f"{key}.bias"] = 0.1 * torch.randn(dim, generator=g)

    sd["models.conditioning.slots_mu"] = torch.randn(1, 1, slot_dim, generator=g) * 0.1
    sd["models.conditioning.slots_logsigma"] = torch.randn(1, 1, slot_dim, generator=g) * 0.1
    # The frozen encoder: ignored by the converter (a few stand-in tensors with timm names).
    sd["models.feature_extractor.model.pos_embed"] = torch.randn(1, 197, feature_dim, generator=g)
    sd["models.feature_extractor.model.blocks.0.attn.qkv.weight"] = torch.randn(3 * 8, 8, generator=g)
    ln(f"{PG}.positional_embedding.layers.1.0", feature_dim)
    lin(f"{PG}.positional_embedding.layers.1.1", feature_dim, feature_dim)
    lin(f"{PG}.positional_embedding.layers.1.3", slot_dim, feature_dim)
    for name in ("to_q", "to_k", "to_v"):
        lin(f"{SA}.{name}", slot_dim, slot_dim, bias=False)
    for kind in ("ih", "hh"):  # GRUCell: weight_ih [3S, S], bias_ih [3S], weight_hh, bias_hh
        sd[f"{SA}.gru.weight_{kind}"] = torch.randn(3 * slot_dim, slot_dim, generator=g) / slot_dim ** 0.5
        sd[f"{SA}.gru.bias_{kind}"] = torch.randn(3 * slot_dim, generator=g) * 0.1
    ln(f"{SA}.norm_input", slot_dim)
    ln(f"{SA}.norm_slots", slot_dim)
    ln(f"{SA}.ff_mlp.module.0", slot_dim)
    lin(f"{SA}.ff_mlp.module.1", 4 * slot_dim, slot_dim)
    lin(f"{SA}.ff_mlp.module.3", slot_dim, 4 * slot_dim)
    if score:
        ln(f"{SA}.single_gumbel_score_network.0", slot_dim)
        lin(f"{SA}.single_gumbel_score_network.1", 4 * slot_dim, slot_dim)
        lin(f"{SA}.single_gumbel_score_network.3", 2, 4 * slot_dim)
    sd["models.object_decoder.pos_embed"] = torch.randn(1, tokens, slot_dim, generator=g) * 0.02
    dims = [slot_dim, *dec, feature_dim + 1]
    for i in range(len(dims) - 1):
        lin(f"models.object_decoder.decoder.{2 * i}", dims[i + 1], dims[i])
    return sd


def lightning(sd: dict, path: Path) -> Path:
    torch.save({"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.9.0", "state_dict": sd,
                "optimizer_states": [], "lr_schedulers": []}, path)
    return path


@pytest.mark.parametrize("shapes,encoder", [
    pytest.param({}, None, marks=pytest.mark.e2e, id="reference"),  # the coco preset, found from the shapes
    pytest.param(dict(feature_dim=192, slot_dim=32, dec=(64, 64)), "random-vit-tiny", id="small"),
])
def test_converted_model_reproduces_independent_forward_float64(tmp_path, shapes, encoder):
    sd = official_state_dict(**shapes)
    ckpt = lightning(sd, tmp_path / "official.ckpt")
    out = tmp_path / "converted.pt"
    # K is not in the weights; 4 keeps the test fast
    conv = convert_official(ckpt, out, num_slots=4, encoder=encoder)
    assert conv.stage == 2 and conv.preset == (None if encoder else "coco") and conv.step == 1234
    assert len(conv.mapped) == 40 - 2 * (3 - len(shapes.get("dec", (0, 0, 0))))  # 2 per decoder layer
    assert sorted(conv.ignored) == sorted(k for k in sd if ".feature_extractor." in k)
    model, payload = load_model(out)
    assert payload["stage"] == 2 and payload["encoder"] == (encoder or "dino-vitb-16")
    d, width = shapes.get("feature_dim", 768), shapes.get("slot_dim", 256)
    model = model.double()
    g = torch.Generator().manual_seed(1)
    f = torch.randn(2, 196, d, generator=g, dtype=torch.float64)
    s0 = torch.randn(2, 4, width, generator=g, dtype=torch.float64)
    noise = torch.randn(2, 4, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = model(f, slots_init=s0, gumbel_noise=noise, keep_mode="gumbel")
    raw = {k.removeprefix("models."): v.double() for k, v in sd.items()}
    slots, alpha, recon, keep = reference_forward(raw, f, s0, noise)
    assert torch.equal(got.keep, keep) and 0 < keep.sum() < keep.numel()
    for a, b in ((got.slots, slots), (got.alpha, alpha), (got.recon, recon)):
        assert (a - b).abs().max().item() < 1e-5
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_presets_and_slot_counts_are_inferred_from_shapes():
    s2 = convert_state_dict(official_state_dict())
    assert (s2.stage, s2.preset, s2.model_config.num_slots, s2.model_config.adaptive) == (2, "coco", 33, True)
    s1 = convert_state_dict(official_state_dict(score=False))
    assert (s1.stage, s1.preset, s1.model_config.num_slots, s1.model_config.adaptive) == (1, "coco", 7, False)
    assert len(s1.mapped) == 34
    dropped = convert_state_dict(official_state_dict(), stage=1)  # a stage-2 checkpoint used as fixed K
    assert dropped.stage == 1 and sum("single_gumbel" in k for k in dropped.ignored) == 6
    e = convert_state_dict(official_state_dict(slot_dim=128, dec=(1024, 1024, 1024)), preset="movi-e")
    assert (e.preset, e.model_config.num_slots, e.model_config.slot_mlp_hidden) == ("movi-e", 24, 512)


@pytest.mark.parametrize("shapes,kw,msg", [
    (dict(slot_dim=128, dec=(1024, 1024, 1024)), {}, "--num-slots"),  # movi-c and movi-e: the same shapes
    (dict(slot_dim=128, dec=(1024, 1024, 1024)), dict(preset="coco"), "do not fit preset"),
    (dict(score=False), dict(stage=2), "stage 1"),
], ids=["ambiguous-preset", "wrong-preset", "stage1-as-stage2"])
def test_conversions_that_cannot_be_told_apart_or_do_not_fit_are_refused(shapes, kw, msg):
    with pytest.raises(AdaslotError, match=msg):
        convert_state_dict(official_state_dict(**shapes), **kw)


@pytest.mark.parametrize("edit,match", [
    ("unknown", "to_q.bias"),
    ("missing", "gru.bias_hh"),
    ("shape", "to_k.weight"),
    ("stray", "models.something_else.weight"),
])
def test_bad_checkpoints_name_the_key_and_write_nothing(tmp_path, edit, match):
    sd = official_state_dict(score=False)
    if edit == "unknown":
        sd[f"{SA}.to_q.bias"] = torch.zeros(256)
    elif edit == "missing":
        del sd[f"{SA}.gru.bias_hh"]
    elif edit == "shape":
        sd[f"{SA}.to_k.weight"] = torch.zeros(256, 255)
    else:
        sd["models.something_else.weight"] = torch.zeros(3)
    out = tmp_path / "out.pt"
    with pytest.raises(AdaslotError, match=match.replace(".", r"\.")):
        convert_official(lightning(sd, tmp_path / "bad.ckpt"), out)
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.ckpt"]


@pytest.mark.e2e
def test_converted_stage1_warm_starts_stage2(tmp_path):
    out = tmp_path / "s1.pt"
    convert_official(lightning(official_state_dict(score=False), tmp_path / "s1.ckpt"), out)
    payload = load_checkpoint(out)
    assert payload["stage"] == 1 and payload["model_config"]["num_slots"] == 7
    cfg = dict(payload["model_config"], adaptive=True, num_slots=33)
    from adaslot.config import ModelConfig

    stage2 = AdaSlot(ModelConfig.from_dict(cfg))
    missing = load_stage1_into_stage2(stage2, payload["model"])
    assert len(missing) == 6 and all(k.startswith("selector.") for k in missing)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`adaslot ARGS` in-process through the console-script entry (`main`)."""
    monkeypatch.setattr(sys, "argv", ["adaslot", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.mark.e2e
def test_cli_reports_mapped_and_ignored_and_errors_in_one_line(tmp_path, monkeypatch, capsys):
    ckpt = lightning(official_state_dict(), tmp_path / "official.ckpt")
    code, out, err = run_cli(monkeypatch, capsys, "convert-official", str(ckpt), str(tmp_path / "c.pt"),
                             "--stage", "2")
    assert code == 0, err
    assert "mapped 40 tensors (12,718,595 parameters): stage 2, preset coco, K=33" in out
    assert "ignored 2 tensors under models.feature_extractor.*" in out
    assert (tmp_path / "c.pt").is_file()
    code, out, err = run_cli(monkeypatch, capsys, "convert-official", str(tmp_path / "missing.ckpt"),
                             str(tmp_path / "d.pt"))
    assert code == 2 and err.startswith("adaslot: error:") and err.count("\n") == 1
    assert not (tmp_path / "d.pt").exists()
