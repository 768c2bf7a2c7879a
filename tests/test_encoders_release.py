"""The DINO / DINOv2 encoders from their release files and from timm's layout, without downloads.

For each registered release encoder: random weights written in the release's key layout (names and shapes
of the DINO v1 / DINOv2 release models, written out here) and in timm's layout (converted by timm's own
`checkpoint_filter_fn`, an independent converter) load through adaslot to bit-equal features and the same
checksum; the features match a plain-torch forward written from the release code (docs/method.md#encoders:
tap point, prefix tokens, position-embedding interpolation); token counts follow the input side; wrong
files are one line naming the encoder and the file.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from release_weights import MEAN, RELEASES, STD, release_state
from safetensors.torch import save_file

from adaslot.encoders import build_encoder, get_encoder_spec
from adaslot.errors import AdaslotError


def timm_layout(name: str, release: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in timm's layout, converted by timm itself (what the HF hub's timm files hold)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(get_encoder_spec(name).timm_name, pretrained=False, num_classes=0,
                              weight_init="skip")
    out = checkpoint_filter_fn(dict(release), model)
    assert set(out) <= set(model.state_dict()) and "mask_token" not in out
    return {k: v.contiguous() for k, v in out.items()}


def release_forward(name: str, sd: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The release model's forward in plain torch (DINO / DINOv2 `prepare_tokens_with_masks` and blocks),
    up to the last block, patch tokens only: the reference the tap point must reproduce."""
    depth, d, heads, p, grid, regs, v2 = RELEASES[name]
    spec = get_encoder_spec(name)
    x = F.conv2d((images - MEAN) / STD, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    h, w = x.shape[-2:]
    x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = sd["pos_embed"]
    if (h, w) != (grid, grid):  # interpolate_pos_encoding
        if spec.pos_offset:
            kw = {"scale_factor": ((h + spec.pos_offset) / grid, (w + spec.pos_offset) / grid)}
        else:
            kw = {"size": (h, w)}
        patch = F.interpolate(pos[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2), mode="bicubic",
                              antialias=spec.pos_antialias, **kw)
        pos = torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, d)], dim=1)
    x = x + pos
    if regs:
        x = torch.cat([x[:, :1], sd["register_tokens"].expand(len(x), -1, -1), x[:, 1:]], dim=1)
    hd = d // heads
    for i in range(depth):
        b = f"blocks.{i}."
        y = F.layer_norm(x, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(
            len(x), -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1) @ v
        y = F.linear(a.transpose(1, 2).reshape(len(x), -1, d), sd[b + "attn.proj.weight"],
                     sd[b + "attn.proj.bias"])
        x = x + (y * sd[b + "ls1.gamma"] if v2 else y)
        y = F.layer_norm(x, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + (y * sd[b + "ls2.gamma"] if v2 else y)
    return x[:, 1 + regs:]


# The inner loop checks one DINO and one DINOv2 layout (registers included); the others (the ViT-B file is
# the size of the release, 350 MB twice) run the same code and are e2e.
INNER_LOOP = ("dino-vits-8", "dinov2-vits-14-reg")


@pytest.mark.parametrize("name", [n if n in INNER_LOOP else pytest.param(n, marks=pytest.mark.e2e)
                                  for n in RELEASES])
def test_release_and_timm_layouts_give_the_same_features(name, tmp_path):
    depth, d, heads, p, grid, regs, v2 = RELEASES[name]
    release = release_state(name)
    official = tmp_path / get_encoder_spec(name).release_file
    torch.save(release, official)
    timm_file = tmp_path / "model.safetensors"
    save_file(timm_layout(name, release), str(timm_file))

    a = build_encoder(name, weights=official)
    b = build_encoder(name, weights=timm_file)
    assert a.weights_sha256 == b.weights_sha256 and len(a.weights_sha256) == 64
    small = 5 * p  # another side than the default: 5 x 5 tokens, position embedding interpolated
    images = torch.rand(1, 3, small, small, generator=torch.Generator().manual_seed(1))
    fa, fb = a(images), b(images)
    assert fa.shape == (1, 25, d) and torch.equal(fa, fb)
    torch.testing.assert_close(fa, release_forward(name, release, images), rtol=1e-4, atol=1e-4)

    # tokens at the default side 224 (and the contract says so); T follows the side. Only the /14 ViT-S
    # models run the forward at 224, for time: the others run the same code on larger grids.
    assert a.image_size == 224
    if d == 384 and p == 14:
        at224 = a(torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
        assert at224.shape == (1, (224 // p) ** 2, d)
    c = a.contract()
    assert c["num_tokens"] == (224 // p) ** 2 and c["input_size"] == [224, 224] and c["feature_dim"] == d
    assert c["weights_sha256"] == a.weights_sha256 and c["timm_model"] == get_encoder_spec(name).timm_name
    assert build_encoder(name, weights=timm_file, image_size=small).contract()["num_tokens"] == 25
    if p == 14:
        assert a.num_tokens(518) == 1369  # the release side: the weights' own 37 x 37 grid


def test_tap_point_drops_cls_and_registers_before_the_final_norm(tmp_path):
    name = "dinov2-vits-14-reg"
    release = release_state(name, seed=3)
    torch.save(release, tmp_path / "w.pth")
    enc = build_encoder(name, weights=tmp_path / "w.pth")
    vit = enc.backbone.vit
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers
    seen = {}
    hook = vit.blocks[-1].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    images = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    try:
        tokens = enc(images)
    finally:
        hook.remove()
    assert seen["out"].shape[1] == 5 + 16 and torch.equal(tokens, seen["out"][:, 5:])


def _save(tmp_path, fname, sd):
    torch.save(sd, tmp_path / fname)
    return tmp_path / fname


@pytest.mark.parametrize("name, wrong", [("dinov2-vits-14-reg", "dinov2-vits-14"),
                                         ("dinov2-vits-14", "dinov2-vits-14-reg"),
                                         ("dino-vits-8", "dinov2-vits-14"),
                                         ("dinov2-vitb-14-reg", "dinov2-vits-14-reg")])
def test_weights_of_another_architecture_are_one_line(name, wrong, tmp_path):
    path = _save(tmp_path, "other.pth", release_state(wrong))
    with pytest.raises(AdaslotError) as e:
        build_encoder(name, weights=path)
    msg = str(e.value)
    assert "\n" not in msg and f"encoder {name!r}" in msg and str(path) in msg and "does not match" in msg


def test_other_key_layout_and_truncated_files_are_one_line(tmp_path):
    name = "dinov2-vits-14"
    sd = release_state(name)
    # Hugging Face transformers' Dinov2Model names: another key layout
    hf = {k.replace("blocks.", "encoder.layer.").replace("patch_embed.proj", "embeddings.patch_embeddings."
                                                          "projection"): v for k, v in sd.items()}
    path = _save(tmp_path, "hf.pth", hf)
    with pytest.raises(AdaslotError) as e:
        build_encoder(name, weights=path)
    msg = str(e.value)
    assert "\n" not in msg and f"encoder {name!r}" in msg and str(path) in msg and "layout" in msg
    full = _save(tmp_path, "full.pth", sd)
    for path in (tmp_path / "cut.pth", tmp_path / "cut.safetensors"):
        if path.suffix == ".pth":
            torch.save(sd, path)
        else:
            save_file(sd, str(path))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(AdaslotError) as e:
            build_encoder(name, weights=path)
        msg = str(e.value)
        assert "\n" not in msg and f"encoder {name!r}" in msg and str(path) in msg and "cannot read" in msg
    assert build_encoder(name, weights=full).num_tokens() == 256
