"""MOVi reading speed and disk sizes (docs/movi.md): decoded frames per second per core, webdataset and TFDS,
against the frames per second one H100 would encode (estimate), and the feature-store size of each split.

Reading = what cache-features and eval do per frame: find the video, decode it (TFDS: the frame's PNGs;
webdataset: the gzip'd npy of the whole video), measured without and with the resize 128 -> 224 bicubic
(torch's CPU kernel). Two access orders: in order (cache-features, eval: each video decoded once) and random
(online training: one frame of a random video per sample). One thread, CPU time: rates per core. The
synthetic MOVi set has MOVi's shapes and encodings (24 PNG or npy.gz frames of 128 px); real MOVi frames
compress differently, so these are estimates of the same order, not MOVi measurements.

The H100 estimate follows benchmarks/train_step.py: 989 TFLOP/s bf16 at 40 %, divided by the encoder's
FLOPs per 224 px frame (counted on a random-init ViT-B/16). Store size: bytes per stored frame measured on
a real store of this code's layout (features fp16 + checksums + shard index), times the official frame
counts. Writes docs/results/movi_read.json.

    python benchmarks/movi_read.py [--videos 12] [--out docs/results/movi_read.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

H100_BF16_FLOPS = 989e12  # as benchmarks/train_step.py
H100_UTILISATION = 0.4
CORES_PER_GPU = 8
# Frames the official protocol uses (docs/method.md#movi): train 9 per video, val 24 per video.
FRAMES = {"movi-c": {"train": 9_737 * 9, "val": 250 * 24}, "movi-e": {"train": 9_749 * 9, "val": 250 * 24}}


def read_rate(root: Path, split: str, order: str, limit: int, resize: bool) -> float:
    """Frames per CPU-second of a fresh MoviDataset read sample by sample: decode only (`frame`) or decode +
    resize to 224 (`__getitem__`). CPU time of this single-threaded process, so a per-core rate that other
    processes on the machine do not deflate."""
    from adaslot.data.movi import MoviDataset

    ds = MoviDataset(root, split, size=224)
    idx = list(range(len(ds)))
    if order == "random":
        random.Random(0).shuffle(idx)
    idx = idx[:limit]
    t = time.process_time()
    for i in idx:
        if resize:
            assert ds[i]["ok"]
        else:
            ds.frame(i)
    return len(idx) / (time.process_time() - t)


def encoder_flops() -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from adaslot.encoders import ENCODERS, build_encoder, register_encoder

    if "random-vit-b16" not in ENCODERS:
        register_encoder(name="random-vit-b16", timm_name="vit_base_patch16_224", embed_dim=768,
                         patch_size=16, random_init_seed=0, description="ViT-B/16, random init (benchmark)")
    enc = build_encoder("random-vit-b16")
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        enc(torch.rand(1, 3, 224, 224))
    return float(fc.get_total_flops())


def store_bytes_per_frame(tmp: Path, tokens: int = 196, dim: int = 768, n: int = 16) -> float:
    """Bytes per stored frame (one view) of a real store in this code's layout, measured on disk."""
    import zarr

    from adaslot.store import size_on_disk
    from adaslot.store.layout import create_arrays, for_writing

    out = tmp / "size.zarr"
    root = zarr.open_group(str(out), mode="w")
    create_arrays(root, np.arange(n, dtype=np.int64), 1, tokens, dim, n)
    rng = np.random.default_rng(0)
    for_writing(root, "features")[:] = rng.standard_normal((n, 1, tokens, dim)).astype(np.float16)
    for_writing(root, "status")[:] = np.ones(n, np.uint8)
    return float(size_on_disk(str(out)) or 0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12, help="synthetic videos per split")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/results/movi_read.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from adaslot.config import SyntheticConfig
    from adaslot.data.movi_synthetic import write_movi_synthetic

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_movi_synthetic(SyntheticConfig(out=str(tmp / "movi"), format="movi", num_train=args.videos,
                                       num_val=args.videos, seed=0, progress=False))
        rates: dict[str, dict[str, float]] = {}
        for layout in ("wds", "tfds"):
            root = tmp / "movi" / layout
            accesses = (("in_order", "val", args.videos * 24), ("random", "train", args.videos * 9))
            for order, split, n in accesses:
                for resize in (False, True):
                    what = f"{order}{'+resize' if resize else ''}"
                    rates.setdefault(layout, {})[what] = read_rate(root, split, order, n, resize)
        per_frame = store_bytes_per_frame(tmp)
    flops = encoder_flops()
    h100 = H100_BF16_FLOPS * H100_UTILISATION / flops
    sizes = {ds: {split: {"frames": n, "gb": round(n * per_frame / 1e9, 2)} for split, n in c.items()}
             for ds, c in FRAMES.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch {torch.__version__}",
        "videos_per_split": args.videos,
        "frames_per_s_per_core": {k: {o: round(v, 1) for o, v in r.items()} for k, r in rates.items()},
        "encoder_gflop_per_frame": round(flops / 1e9, 2),
        "h100_encoder_frames_per_s": round(h100),
        "cores_per_gpu": CORES_PER_GPU,
        "ratio_read_8_cores_over_h100": {k: {o: round(CORES_PER_GPU * v / h100, 3) for o, v in r.items()}
                                         for k, r in rates.items()},
        "store_bytes_per_frame": round(per_frame),
        "store_sizes": sizes,
    }
    print(f"{'layout':6s} {'access':16s} {'frames/s/core':>13s} {'cores to feed one H100':>23s}")
    for k, r in rates.items():
        for o, v in r.items():
            print(f"{k:6s} {o:16s} {v:13.1f} {h100 / v:23.1f}")
    print(f"encoder: {flops / 1e9:.1f} GFLOP per 224 px frame -> {h100:.0f} frames/s on the H100 estimate")
    print(f"store: {per_frame:.0f} bytes per frame; " + "; ".join(
        f"{ds} train {s['train']['gb']} GB, val {s['val']['gb']} GB" for ds, s in sizes.items()))
    for k, r in result["ratio_read_8_cores_over_h100"].items():
        for o, v in r.items():
            print(f"ratio {k} {o} read with {CORES_PER_GPU} cores / H100 encoder estimate = {v:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
