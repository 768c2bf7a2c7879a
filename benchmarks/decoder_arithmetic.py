"""Decoder first layer on slot + position, concat (official: broadcast-add, then Linear on
K x T rows) / split ((W slot + b) once per slot, W pos once per token, broadcast-add; exact).

Reference decoder (slot 256 -> 2048 x 3 -> 769, 196 tokens), stage-1 K=7; timed: decoder forward +
backward of the recon loss. Alternating runs, medians. Last line: the ratio.

    .venv/bin/python benchmarks/decoder_arithmetic.py [--batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _timing import alternate

from adaslot.config import model_config_for
from adaslot.model import MLPDecoder


def run(batch: int = 2, repeats: int = 5, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = model_config_for("coco", 1)
    dec = MLPDecoder(cfg.slot_dim, cfg.feature_dim, cfg.num_tokens, tuple(cfg.decoder_hidden))
    slots = torch.randn(batch, cfg.num_slots, cfg.slot_dim, requires_grad=True)
    target = torch.randn(batch, cfg.num_tokens, cfg.feature_dim)

    def step(split: bool) -> float:
        dec.split_first_layer = split
        dec.zero_grad(set_to_none=True)
        slots.grad = None
        t = time.perf_counter()
        recon, _ = dec(slots)
        ((recon - target) ** 2).mean().backward()
        return time.perf_counter() - t

    concat, split = alternate(lambda: step(False), lambda: step(True), repeats)
    c, s = statistics.median(concat), statistics.median(split)
    return {"measure": f"decoder fwd+bwd, B={batch}, K={cfg.num_slots}", "ours": s, "baseline": c,
            "ratio": c / s, "unit": "s/step"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    r = run(a.batch, a.repeats, a.threads)
    print(f"{r['measure']} ({a.threads} thread(s)): concat {r['baseline']:.3f} s, split {r['ours']:.3f} s")
    print(f"ratio concat/split: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
