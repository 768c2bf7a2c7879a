"""Stage-2 training step time, dense decoding / exact sparse decoding.

Reference COCO model (K=33, decoder 3 x 2048, 196 tokens x 768), one full step: forward, MSE + 0.1 sparsity,
backward, Adam. The keep mask is forced to a given fraction through explicit Gumbel noise (no trained
model here; default 7/33, i.e. AdaSlot keeping about as many slots as the fixed-K stage-1 model). Dense and
sparse steps alternate and the median of each is compared. Last line: the ratio.

    .venv/bin/python benchmarks/sparse_decoding.py [--batch 1] [--keep-fraction 0.21] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import alternate

from adaslot.config import model_config_for
from adaslot.losses import reconstruction_loss, sparsity_loss
from adaslot.model import AdaSlot


def forced_noise(b: int, k: int, kept: int, generator: torch.Generator) -> torch.Tensor:
    """Gumbel noise [B, K, 2] that keeps exactly `kept` random slots per image."""
    noise = torch.zeros(b, k, 2)
    for i in range(b):
        idx = torch.randperm(k, generator=generator)[:kept]
        noise[i, :, 0] = 50.0
        noise[i, idx, 0] = -50.0
    return noise


def run(batch: int = 1, keep_fraction: float = 7 / 33, repeats: int = 3, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = model_config_for("coco", 2)
    model = AdaSlot(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, cfg.num_tokens, cfg.feature_dim, generator=g)
    kept = max(1, round(keep_fraction * cfg.num_slots))
    noise = forced_noise(batch, cfg.num_slots, kept, g)

    def step(sparse: bool) -> float:
        model.cfg.sparse_decoding = sparse
        t = time.perf_counter()
        out = model(feats, gumbel_noise=noise, keep_mode="gumbel")
        loss = reconstruction_loss(out.recon, feats) + 0.1 * sparsity_loss(out.keep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t

    dense, sparse = alternate(lambda: step(False), lambda: step(True), repeats)
    d, s = statistics.median(dense), statistics.median(sparse)
    return {"measure": f"stage-2 step, B={batch}, K=33, keep {kept}/33", "ours": s, "baseline": d,
            "ratio": d / s, "unit": "s/step", "keep_fraction": kept / cfg.num_slots}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--keep-fraction", type=float, default=7 / 33)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    r = run(a.batch, a.keep_fraction, a.repeats, a.threads)
    print(f"{r['measure']} ({a.threads} thread(s)): dense {r['baseline']:.3f} s, sparse {r['ours']:.3f} s")
    print(f"ratio dense/sparse: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
