"""`--precision bf16` and `--compile` against fp32 on CPU: loss-curve parity and step time.

A small stage-1 model (slot dim 32, decoder 2 x 64, K=4) trains for --steps steps on real frozen-encoder
features (random-init ViT-Tiny on the synthetic dataset, 196 x 192 tokens), batch 4, with the training
loop's own `TrainForward` (model + loss, autocast for bf16, torch.compile for compile), Adam at constant lr
1e-3 and grad clipping 1.0. Every mode sees the same batches and the same slot-init noise, so the curves
differ only by arithmetic. Parity: the mean loss over windows of --window steps, max relative difference to
fp32 over all windows. Step time: median after the first 5 steps (compile time reported separately).

    .venv/bin/python benchmarks/precision.py [--steps 150] [--window 25] [--modes fp32,bf16,compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from adaslot.config import model_config_for
from adaslot.device import set_matmul_precision
from adaslot.model import AdaSlot
from adaslot.train import NoiseSampler, TrainForward

SMALL = dict(slot_dim=32, input_mlp_hidden=64, slot_mlp_hidden=64, decoder_hidden=(64, 64), num_slots=4)


def encoder_features(num_images: int = 32) -> torch.Tensor:
    """features [N, 196, 192]: random-vit-tiny on synthetic COCO-layout images (center crop 224, no flip)."""
    from adaslot.data.coco import CocoDataset
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.data.synthetic import SyntheticConfig
    from adaslot.encoders import build_encoder

    with tempfile.TemporaryDirectory() as tmp:
        run_make_synthetic(SyntheticConfig(out=f"{tmp}/coco", num_train=num_images, num_val=1, image_size=224,
                                       seed=0, progress=False))
        ds = CocoDataset.from_root(f"{tmp}/coco", "train", size=224)
        images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    enc = build_encoder("random-vit-tiny")
    return torch.cat([enc(images[i:i + 8]) for i in range(0, len(images), 8)])


def run_mode(mode: str, feats: torch.Tensor, steps: int, batch: int) -> dict:
    cfg = model_config_for("coco", 1, feature_dim=feats.shape[2], num_tokens=feats.shape[1], **SMALL)
    set_matmul_precision("bf16" if mode == "bf16" else "fp32")
    torch.manual_seed(0)
    model = AdaSlot(cfg)
    fwd: torch.nn.Module = TrainForward(model, 0.1, "bf16" if mode == "bf16" else "fp32")
    if mode == "compile":
        fwd = torch.compile(fwd)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    noise = NoiseSampler(0, torch.device("cpu"))
    order = torch.Generator().manual_seed(1)
    n = feats.shape[0]
    losses, times = [], []
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=order)
        t = time.perf_counter()
        slot_noise, gumbel = noise.sample(batch, cfg, slice(0, batch))
        loss, _, _ = fwd(feats[idx], slot_noise, gumbel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    return {"losses": losses, "first": times[0], "median": statistics.median(times[5:])}


def window_means(xs: list[float], w: int) -> list[float]:
    return [sum(xs[i:i + w]) / len(xs[i:i + w]) for i in range(0, len(xs), w)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--window", type=int, default=25)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="fp32,bf16,compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    feats = encoder_features()
    modes = ["fp32"] + [m for m in args.modes.split(",") if m != "fp32"]
    res = {}
    for m in modes:
        res[m] = run_mode(m, feats, args.steps, args.batch)
        r = res[m]
        print(f"{m:8s} first step {r['first']:.2f} s, median step {r['median'] * 1000:.1f} ms, "
              f"loss {r['losses'][0]:.4f} -> {window_means(r['losses'], args.window)[-1]:.4f} "
              f"(mean of the last {args.window} steps)")
    ref = window_means(res["fp32"]["losses"], args.window)
    lines = []
    for m in modes[1:]:
        win = window_means(res[m]["losses"], args.window)
        rel = max(abs(a - b) / b for a, b in zip(win, ref, strict=True))
        first = abs(res[m]["losses"][0] - res["fp32"]["losses"][0]) / res["fp32"]["losses"][0]
        speed = res["fp32"]["median"] / res[m]["median"]
        lines.append(f"{m} vs fp32 over {args.steps} CPU steps: loss-curve max rel. diff {rel:.2e} "
                     f"(windows of {args.window}; first step {first:.1e}); "
                     f"step-time ratio fp32/{m} = {speed:.2f}x")
    for ln in lines:
        print(ln)


if __name__ == "__main__":
    main()
