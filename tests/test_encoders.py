"""Frozen encoder registry: tap point, normalisation, freezing, weight formats (timm / DINO), errors."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from adaslot import encoders
from adaslot.encoders import EncoderSpec, build_encoder, register_encoder
from adaslot.errors import AdaslotError


@pytest.fixture(scope="module")
def tiny() -> encoders.FrozenEncoder:
    return build_encoder("random-vit-tiny")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # 64 px (16 tokens) keeps the CPU tests fast; the native 224 is checked once below.
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_shapes_contract_and_determinism(tiny, images):
    assert tiny(torch.rand(1, 3, 224, 224)).shape == (1, 196, 192)
    tokens = tiny(images)
    assert tokens.shape == (2, 16, 192) and tokens.dtype == torch.float32
    assert tiny.num_tokens(224) == 196 and tiny.num_tokens(112) == 49
    c = tiny.contract(224)
    assert c["encoder"] == "random-vit-tiny" and c["num_tokens"] == 196 and c["feature_dim"] == 192
    assert c["normalisation"]["mean"] == [0.485, 0.456, 0.406] and len(c["weights_sha256"]) == 64
    again = build_encoder("random-vit-tiny")  # same name -> same weights, bit for bit
    assert again.weights_sha256 == tiny.weights_sha256
    assert torch.equal(again(images), tokens)


def test_tap_point_is_last_block_before_norm_without_cls(tiny, images):
    vit = tiny.backbone.vit
    seen = {}
    hook = vit.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        tokens = tiny(images)
    finally:
        hook.remove()
    assert torch.equal(tokens, seen["out"][:, 1:])  # CLS dropped, no final LayerNorm
    # normalisation happens inside: the same tap on manually normalised images agrees
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # a plain timm ViT interpolates its position embedding as timm does (docs/method.md#encoders)
    with torch.no_grad():
        manual = vit.blocks(vit._pos_embed(vit.patch_embed((images - mean) / std)))[:, 1:]
    torch.testing.assert_close(tokens, manual, rtol=0, atol=1e-5)


def test_frozen_eval_no_grad(tiny, images):
    tiny.train()
    assert not tiny.training and not tiny.backbone.training
    assert all(not p.requires_grad for p in tiny.parameters())
    assert not tiny(images.requires_grad_(True)).requires_grad


def test_build_leaves_global_rng_alone():
    torch.manual_seed(5)
    a = torch.rand(3)
    torch.manual_seed(5)
    build_encoder("random-vit-tiny")
    assert torch.equal(torch.rand(3), a)


def _random_tiny_state() -> dict[str, torch.Tensor]:
    """timm-format ViT-Tiny weights that differ from the seed-0 init (so loading is really exercised)."""
    state = build_encoder("random-vit-tiny").backbone.vit.state_dict()
    return {k: v * 1.05 + 0.01 for k, v in state.items()}  # cheap, deterministic, changes every output


def test_dino_release_format_equals_timm_format(tmp_path, images):
    state = _random_tiny_state()
    timm_pth, timm_st = tmp_path / "timm.pth", tmp_path / "timm.safetensors"
    torch.save(state, timm_pth)
    save_file(state, str(timm_st))
    # The DINO v1 backbone release (dino_vitbase16_pretrain.pth) is a flat dict with timm's key names and no
    # head: for a num_classes=0 model that is exactly `state` (timm_pth). Its full training checkpoint wraps
    # teacher/student with prefixes, a projection head and pickled args:
    dino_full = tmp_path / "dino_full.pth"
    head = {"head.mlp.0.weight": torch.randn(8, 192), "head.last_layer.weight_g": torch.ones(16, 1)}
    torch.save({
        "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **head},
        "student": {**{f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()}},
        "args": argparse.Namespace(arch="vit_tiny", patch_size=16), "epoch": 100,
    }, dino_full)
    # DINOv2-style release (extra mask_token), here also without the final norm the tap point never uses.
    dinov2_like = tmp_path / "dinov2_like.pth"
    torch.save({**{k: v for k, v in state.items() if not k.startswith("norm.")},
                "mask_token": torch.zeros(1, 192)}, dinov2_like)

    ref = build_encoder("random-vit-tiny", weights=timm_pth)
    out = ref(images)
    assert ref.weights_sha256 != build_encoder("random-vit-tiny").weights_sha256
    for path in (timm_st, dino_full, dinov2_like):
        enc = build_encoder("random-vit-tiny", weights=path)
        assert torch.equal(enc(images), out), path.name
        assert enc.weights_sha256 == ref.weights_sha256, path.name


def _weights_file(tmp_path, kind: str):
    """A weights file of `kind`: missing, not a checkpoint, or ViT-Ti weights."""
    path = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif kind == "tiny":
        torch.save(_random_tiny_state(), path)
    return path


@pytest.mark.parametrize("name,weights,msg", [
    ("dino-vitb-16", None, "dino_vitbase16_pretrain.pth and pass --encoder-weights FILE"),
    ("random-vit-tiny", "missing", "not found"),
    ("random-vit-tiny", "garbage", "cannot read encoder weights"),
    ("dino-vits-16", "tiny", "does not match"),  # ViT-S/16 architecture, ViT-Ti weights
    ("no-such-encoder", None, "unknown encoder"),
], ids=["not-in-any-cache", "missing-file", "unreadable", "wrong-architecture", "unknown-name"])
def test_missing_and_wrong_weights_are_one_line_errors(tmp_path, monkeypatch, name, weights, msg):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    with pytest.raises(AdaslotError, match=msg) as e:
        build_encoder(name, weights=_weights_file(tmp_path, weights) if weights else None)
    assert "\n" not in str(e.value)


def test_weights_from_local_hf_hub_cache(tmp_path, monkeypatch, images):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    state = _random_tiny_state()
    snap = tmp_path / "hf" / "models--test--tiny-hub" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file(state, str(snap / "model.safetensors"))
    (tmp_path / "hf" / "models--test--tiny-hub" / "refs").mkdir()
    (tmp_path / "hf" / "models--test--tiny-hub" / "refs" / "main").write_text("0" * 40)
    register_encoder(name="test-tiny-hub", timm_name="vit_tiny_patch16_224", embed_dim=192, patch_size=16,
                     hf_hub_id="test/tiny-hub")
    try:
        enc = build_encoder("test-tiny-hub")
        torch.save(state, tmp_path / "same.pth")
        same = build_encoder("random-vit-tiny", weights=tmp_path / "same.pth")
        assert torch.equal(enc(images), same(images))
    finally:
        encoders.ENCODERS.pop("test-tiny-hub")


class _PatchMean(nn.Module):
    """A custom non-timm 'encoder': 8x8 patches -> linear -> tokens."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.proj = nn.Conv2d(3, 16, kernel_size=8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def test_register_custom_encoder(images):
    register_encoder(EncoderSpec(name="test-custom", embed_dim=16, patch_size=8, builder=_PatchMean,
                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), tap_point="conv patches"))
    try:
        enc = build_encoder("test-custom")
        assert enc(images).shape == (2, 8 * 8, 16)
        c = enc.contract(224)
        assert c["timm_model"] is None and c["tap_point"] == "conv patches" and c["num_tokens"] == 784
        assert c["weights_sha256"] == build_encoder("test-custom").weights_sha256
    finally:
        encoders.ENCODERS.pop("test-custom")
    with pytest.raises(ValueError):
        register_encoder(name="both", embed_dim=1, patch_size=1)


def test_demo_encoder_by_chunks_equals_the_whole_batch_formula():
    """The demo encoder computes its colour features a few images at a time (docs/scale.md): the values are
    exactly those of the formula over the whole batch, for a batch of more than one chunk."""
    import math

    from adaslot.demo_encoder import PIXELS_PER_CHUNK, PatchColourPositionEncoder

    enc = PatchColourPositionEncoder()
    x = torch.rand(PIXELS_PER_CHUNK // (64 * 64) + 3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    per_pixel = torch.cos(x.permute(0, 2, 3, 1) @ enc.proj + enc.phase)  # [B, H, W, C] at once
    colour = torch.nn.functional.avg_pool2d(per_pixel.permute(0, 3, 1, 2), 8).flatten(2).transpose(1, 2)
    pos = enc.position_code(8).expand(len(x), -1, -1)
    want = torch.cat([colour * math.sqrt(2.0 / 96), pos], -1) * enc.scale
    with torch.no_grad():
        got = enc(x)
    assert got.shape == (len(x), 64, 128)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
