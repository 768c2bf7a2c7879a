"""Disk, host RAM, GPU memory and time of the COCO recipe, computed from the model and store code.

No GPU is needed: the model is the real `coco` preset built on the CPU. What is computed, and how:
- stores: samples x views x (T x D x 2 bytes + the 4-byte crc32c of each chunk) + each shard's chunk index
  (the layout of docs/store.md);
- checkpoint: the bytes of `torch.save` of the model and the Adam state after one real step (what a
  checkpoint holds besides small counters), times `keep_last` + last.pt;
- `--cache-in-memory` host RAM per rank: that rank's 1/ranks of the store's rows, every view;
- GPU memory per rank: parameters + gradients + the two Adam moments (fp32) + the bytes autograd saves for
  the backward of one training forward, counted with saved-tensor hooks at batch 1 and scaled to the rank's
  batch (linear in the batch), + the frozen ViT-B/16 for eval and online mode. Allocator overhead and
  cuDNN/cuBLAS workspaces are not counted: an estimate;
- time: FLOPs of one forward + backward counted with torch's FlopCounterMode, at an assumed 40 % of an
  H100 SXM's dense fp32 peak (67 TFLOP/s; fp32 is the default precision) and perfect scaling over GPUs.
  Stage 2 is counted dense (all K_max slots decoded with autograd: `--model sparse_decoding=false`), an
  upper bound; sparse decoding saves the backward of dropped slots.

    python scripts/coco_estimates.py [--out docs/results/coco-estimates.json]
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adaslot.config.model import model_config_for  # noqa: E402
from adaslot.config.store import CacheConfig  # noqa: E402
from adaslot.config.train import DEFAULT_NUM_ITERS, TrainConfig  # noqa: E402
from adaslot.files import write_json  # noqa: E402
from adaslot.model.adaslot import AdaSlot  # noqa: E402
from adaslot.train.step import TrainForward  # noqa: E402

COCO = {"train": (118_287, 2), "val": (5_000, 1)}  # images in COCO 2017, views stored (train: + flip)
PEAK_FP32 = 67e12  # H100 SXM dense fp32 (no tensor cores), FLOP/s
UTILISATION = 0.4
VIT_B16_PARAMS = 85_798_656  # timm vit_base_patch16_224 without its head, fp32 on the GPU for eval/online
GIB, GB = 2**30, 1e9


def store_bytes(samples: int, views: int, tokens: int, dim: int, shard: int) -> int:
    chunk = tokens * dim * 2 + 4
    shards = -(-samples // shard)
    return samples * views * chunk + shards * (shard * views * 16 + 4) + samples * 9


def model_numbers(stage: int, sparse: bool) -> dict:
    """Parameters, checkpoint bytes, saved activation bytes and FLOPs per image of one training step."""
    torch.manual_seed(0)
    cfg = model_config_for("coco", stage, sparse_decoding=sparse)
    model = AdaSlot(cfg).train()
    fwd = TrainForward(model, 0.1, "fp32")
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    k, s = cfg.num_slots, cfg.slot_dim

    def inputs(b: int):
        gumbel = torch.randn(b, k, 2) if cfg.adaptive else None
        return torch.randn(b, cfg.num_tokens, cfg.feature_dim), torch.randn(b, k, s), gumbel

    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = fwd(*inputs(1))
    loss.backward()
    opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    with FlopCounterMode(display=False) as counter:
        loss, _, _ = fwd(*inputs(1))
        loss.backward()
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "checkpoint_bytes": buf.tell(), "saved_bytes_per_image": saved,
            "flops_per_image": counter.get_total_flops(), "num_slots": k}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "coco-estimates.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    train = TrainConfig()
    shard = CacheConfig.__dataclass_fields__["shard_samples"].default
    cfg = model_config_for("coco", 1)
    t, d = cfg.num_tokens, cfg.feature_dim
    stores = {split: store_bytes(n, v, t, d, shard) for split, (n, v) in COCO.items()}
    rows = [{"item": f"feature store, COCO {split} ({n} images x {v} view{'s' * (v > 1)})",
             "size": f"{stores[split] / GB:.1f} GB"} for split, (n, v) in COCO.items()]
    stage_rows = []
    for stage in (1, 2):
        m = model_numbers(stage, sparse=False)
        run_ckpts = (train.keep_last + 1) * m["checkpoint_bytes"]
        rows.append({"item": f"stage-{stage} checkpoint (model + Adam), and a run folder's "
                             f"{train.keep_last} kept + last.pt",
                     "size": f"{m['checkpoint_bytes'] / 1e6:.0f} MB, {run_ckpts / 1e6:.0f} MB"})
        steps = DEFAULT_NUM_ITERS[stage]
        for gpus in (1, 8):
            per_rank = train.batch_size // gpus
            state = 4 * m["params"] * 4
            act = m["saved_bytes_per_image"] * per_rank
            vit = VIT_B16_PARAMS * 4
            total_flops = m["flops_per_image"] * train.batch_size * steps
            hours = total_flops / (gpus * PEAK_FP32 * UTILISATION) / 3600
            ram = COCO["train"][0] * COCO["train"][1] * (t * d * 2) / gpus
            stage_rows.append({
                "stage": f"{stage} (K={m['num_slots']}, {steps // 1000}k steps)", "gpus": gpus,
                "batch_per_gpu": per_rank,
                "gpu_memory_cached": f"{(state + act) / GIB:.1f} GiB",
                "gpu_memory_online": f"{(state + act + vit) / GIB:.1f} GiB",
                "cache_in_memory_ram_per_rank": f"{ram / GIB:.1f} GiB",
                "gflop_per_image": f"{m['flops_per_image'] / 1e9:.0f}",
                "hours": f"{hours:.1f}"})
    write_json(args.out, {
        "title": "COCO recipe: resources (estimates)",
        "machine": f"computed on {platform.machine()} CPU, no GPU",
        "date": time.strftime("%Y-%m-%d"), "command": "python scripts/coco_estimates.py",
        "note": " ".join((__doc__ or "").split("\n\n")[1].split()),
        "assumptions": {"peak_fp32_flops": PEAK_FP32, "utilisation": UTILISATION,
                        "precision": train.precision, "global_batch": train.batch_size, "shard_size": shard},
        "disk": rows, "rows": stage_rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
