"""What the feature cache buys a stage-1 training step, on this machine.

1. Input cost per sample: online (JPEG decode + reference transform + frozen encoder forward) / reading one
   sample from a feature store (streaming FeatureLoader, one view of a 2-view train store), for
   `random-vit-tiny` (a store cached from the images) and a random-init ViT-B/16 (the reference encoder's
   cost; weights do not change FLOPs), read from a COCO-shaped 196 x 768 fp16 store of --store-samples
   samples in chunks of 64 (page-cache warm: the CPU cost of reading, not a cold disk).
2. Whole stage-1 step (input + forward + backward + Adam), cache / online, for the reference model (K=7,
   decoder 3 x 2048, ViT-B/16 features) and a small ablation model (decoder 3 x 512), batch --batch.
   Online here is serial (decode, then encode, then step), as with --workers 0 on this 2-core machine.
3. FLOP split of one reference training image, counted with torch.utils.flop_counter: encoder forward,
   slot model (input MLP + slot attention) forward + backward, decoder forward + backward; and what it
   implies for an H100 (assumed: 989 TFLOP/s dense bf16, 40% of it achieved; an assumption, not measured).
4. Loader samples/s (streaming and --cache-in-memory) / trainer samples/s, here (CPU,
   reference model) and against the H100 estimate of 3; RAM needed for a resident COCO cache.
5. Encoder rows (`--encoder-row NAME[@SIDE]`, default dino-vits-8@224: 784 tokens): tokens, store bytes per
   view (fp16), FLOPs per training image (encoder forward; reference decoder fwd+bwd, K=7), encoder
   forward s/image, and the stage-2 step with dense / sparse decoding (K=33, keep 7/33, B=1; the
   `sparse_decoding` benchmark at this T x D). Random-init weights of the same architecture (same FLOPs).
   Written with the registry's table (docs/encoders.md) to docs/results/encoders.json.
   `--encoder-row-only` runs just this section.

Images: the built-in synthetic dataset at 480 x 480 JPEG (COCO photos are ~640 x 480). Ratios last.

    .venv/bin/python benchmarks/train_step.py [--images 16] [--batch 2] [--steps 3]
    .venv/bin/python benchmarks/train_step.py --encoder-row-only [--encoder-row dino-vits-8@224]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _timing import alternate, seconds

from adaslot.config import CacheConfig, DataSpec, model_config_for
from adaslot.model import AdaSlot
from adaslot.train import NoiseSampler, TrainForward, optimisation_step

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak (SXM)
H100_UTILISATION = 0.4  # assumed fraction of peak a well-fed training step achieves
COCO_TRAIN = 118_287


def register_random_vit_b() -> str:
    from adaslot.encoders import ENCODERS, register_encoder

    if "random-vit-b16" not in ENCODERS:
        register_encoder(name="random-vit-b16", timm_name="vit_base_patch16_224", embed_dim=768,
                         patch_size=16, random_init_seed=0, description="ViT-B/16, random init (benchmark)")
    return "random-vit-b16"


def build_store(root: Path, encoder: str, out: Path) -> None:
    """A real 2-view train store of the synthetic images (cache-features)."""
    from adaslot.store.writer import run_cache_features

    run_cache_features(CacheConfig(out=str(out), data=DataSpec(root=str(root)), encoder=encoder,
                                   chunk_samples=8, shard_samples=8, batch_size=8, workers=0, device="cpu",
                                   progress=False))


def build_coco_shaped_store(out: Path, n: int) -> None:
    """n samples x 2 views x 196 x 768 float16 in the writer's layout (chunks of 64): ViT-B-sized reads
    without running ViT-B over n images (benchmarks/loader_throughput.py writes it)."""
    from loader_throughput import write_store

    write_store(str(out), n, 2, 64, 256)


def online_input_cost(root: Path, encoder_name: str, n: int) -> tuple[float, float]:
    """-> (decode + transform s/sample, encoder forward s/sample at batch 8)."""
    from adaslot.data.coco import CocoDataset
    from adaslot.encoders import build_encoder

    ds = CocoDataset.from_root(root, "train", size=224)
    t = time.perf_counter()
    images = torch.stack([ds[i]["image"] for i in range(n)])
    decode = (time.perf_counter() - t) / n
    enc = build_encoder(encoder_name)
    enc(images[:2])  # warm-up
    t = time.perf_counter()
    for i in range(0, n, 8):
        enc(images[i:i + 8])
    return decode, (time.perf_counter() - t) / n


def loader_rate(store: Path, batch: int, in_memory: bool, samples: int = 2048) -> float:
    """Steady-state samples/s of the FeatureLoader (float16 batches, reader threads), after start-up.

    Several epochs: a short run mostly drains batches prefetched during start-up and overstates the rate."""
    from adaslot.store.loader import FeatureLoader

    loader = FeatureLoader(str(store), batch, seed=0, in_memory=in_memory, reuse_buffers=True)  # as training
    next(loader)
    t = time.perf_counter()
    got = 0
    while got < samples:
        got += next(loader)[0].shape[0]
    rate = got / (time.perf_counter() - t)
    loader.close()
    return rate


def step_times(cfg, store: Path, root: Path, encoder_name: str, batch: int,
               steps: int) -> tuple[float, float]:
    """Median seconds of a full stage-1 step, (from the store, online)."""
    from adaslot.data.coco import CocoDataset
    from adaslot.encoders import build_encoder
    from adaslot.store.loader import FeatureLoader

    torch.manual_seed(0)
    model = AdaSlot(cfg)
    fwd = TrainForward(model, 0.1, "fp32")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    noise = NoiseSampler(0, torch.device("cpu"))
    rows = slice(0, batch)
    loader = FeatureLoader(str(store), batch, seed=0)
    ds = CocoDataset.from_root(root, "train", size=224)
    enc = build_encoder(encoder_name)

    def cache_step() -> None:
        feats = next(loader)[0].float()
        optimisation_step(fwd, model, opt, feats, *noise.sample(batch, cfg, rows), 1.0)

    pos = 0

    def online_step() -> None:
        nonlocal pos
        images = torch.stack([ds[(pos + i) % len(ds)]["image"] for i in range(batch)])
        pos += batch
        optimisation_step(fwd, model, opt, enc(images), *noise.sample(batch, cfg, rows), 1.0)

    # Alternate the two modes so both see the same (shared, noisy) machine load; medians.
    cache_times, online_times = alternate(seconds(cache_step), seconds(online_step), steps)
    loader.close()
    return statistics.median(cache_times), statistics.median(online_times)


def flop_split(encoder_name: str) -> dict[str, float]:
    """FLOPs of one 224 x 224 training image: encoder forward, slot model fwd+bwd, decoder fwd+bwd."""
    from torch.utils.flop_counter import FlopCounterMode

    from adaslot.encoders import build_encoder
    from adaslot.losses import reconstruction_loss

    def count(fn) -> float:
        fc = FlopCounterMode(display=False)
        with fc:
            fn()
        return float(fc.get_total_flops())

    enc = build_encoder(encoder_name)
    encoder = count(lambda: enc(torch.rand(1, 3, 224, 224)))
    cfg = model_config_for("coco", 1)
    model = AdaSlot(cfg)
    x = torch.randn(1, cfg.num_tokens, cfg.feature_dim)
    total = count(lambda: reconstruction_loss(model(x).recon, x).backward())
    slots = torch.randn(1, cfg.num_slots, cfg.slot_dim, requires_grad=True)
    decoder = count(lambda: reconstruction_loss(model.decoder(slots)[0], x).backward())
    return {"encoder": encoder, "slot_model": total - decoder, "decoder": decoder, "train_total": total}


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "encoders.json"


def encoder_table() -> list[dict]:
    """The registry's release encoders: tokens at 224 and store bytes per view (fp16), from the code."""
    import numpy as np

    from adaslot.encoders import ENCODERS

    rows = []
    for spec in ENCODERS.values():
        if spec.release_file is None:  # random-init test encoders, the demo's encoder
            continue
        t = spec.num_tokens(224)
        rows.append({"name": spec.name, "timm_name": spec.timm_name, "release_file": spec.release_file,
                     "patch_size": spec.patch_size, "feature_dim": spec.embed_dim, "tokens_224": t,
                     "store_bytes_per_view_fp16": t * spec.embed_dim * np.dtype(np.float16).itemsize})
    return rows


def encoder_row(name: str, side: int, repeats: int, threads: int) -> dict:
    """Section 5: one encoder at `side` (see the module docstring)."""
    from sparse_decoding import run as sparse_run
    from torch.utils.flop_counter import FlopCounterMode

    from adaslot.encoders import build_encoder, get_encoder_spec, register_encoder
    from adaslot.losses import reconstruction_loss

    spec = get_encoder_spec(name)
    assert spec.timm_name is not None
    twin = register_encoder(name=f"random-{name}", timm_name=spec.timm_name.split(".")[0],
                            embed_dim=spec.embed_dim, patch_size=spec.patch_size, random_init_seed=0,
                            pos_offset=spec.pos_offset, pos_antialias=spec.pos_antialias)

    def count(fn) -> float:
        fc = FlopCounterMode(display=False)
        with fc:
            fn()
        return float(fc.get_total_flops())

    torch.set_num_threads(threads)
    enc = build_encoder(twin.name, image_size=side)
    image = torch.rand(1, 3, side, side)
    encoder_flops = count(lambda: enc(image))
    enc(image)  # warm-up
    encode_s = statistics.median(seconds(lambda: enc(image))() for _ in range(repeats))
    cfg = model_config_for("coco", 1, name, side)
    model = AdaSlot(cfg)
    x = torch.randn(1, cfg.num_tokens, cfg.feature_dim)
    slots = torch.randn(1, cfg.num_slots, cfg.slot_dim, requires_grad=True)
    decoder_flops = count(lambda: reconstruction_loss(model.decoder(slots)[0], x).backward())
    sparse = sparse_run(batch=1, repeats=repeats, threads=threads, encoder=name, image_size=side)
    return {"encoder": name, "side": side, "tokens": cfg.num_tokens, "feature_dim": cfg.feature_dim,
            "store_bytes_per_view_fp16": cfg.num_tokens * cfg.feature_dim * 2,
            "encoder_forward_gflop": encoder_flops / 1e9, "decoder_fwd_bwd_gflop_k7": decoder_flops / 1e9,
            "encoder_forward_s_per_image": encode_s, "stage2_step_dense_s": sparse["baseline"],
            "stage2_step_sparse_s": sparse["ours"], "ratio_dense_over_sparse": sparse["ratio"],
            "measure": sparse["measure"], "threads": threads, "repeats": repeats}


def run_encoder_rows(rows: list[str], repeats: int, threads: int) -> list[str]:
    """Section 5 for every `NAME@SIDE`; writes docs/results/encoders.json; returns the ratio lines."""
    import datetime
    import platform

    from adaslot.files import write_json

    ratios, measured = [], []
    for item in rows:
        name, _, side = item.partition("@")
        r = encoder_row(name, int(side or 224), repeats, threads)
        measured.append(r)
        print(f"{name} at {r['side']} px: {r['tokens']} x {r['feature_dim']} tokens, "
              f"{r['store_bytes_per_view_fp16']} B/view fp16; encoder fwd {r['encoder_forward_gflop']:.1f} "
              f"GFLOP ({r['encoder_forward_s_per_image']:.2f} s/image); decoder fwd+bwd (K=7) "
              f"{r['decoder_fwd_bwd_gflop_k7']:.1f} GFLOP; stage-2 step dense "
              f"{r['stage2_step_dense_s']:.2f} s, "
              f"sparse {r['stage2_step_sparse_s']:.2f} s")
        ratios.append(f"ratio stage-2 step dense / sparse decoding, {name} at {r['side']} px "
                      f"({r['tokens']} tokens): {r['ratio_dense_over_sparse']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS, {"source": "benchmarks/train_step.py --encoder-row-only",
                         "date": datetime.date.today().isoformat(),
                         "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                         "encoders": encoder_table(), "train_step_rows": measured})
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="synthetic train images (480 x 480 JPEG)")
    ap.add_argument("--batch", type=int, default=2, help="batch of the whole-step measurement")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode (median)")
    ap.add_argument("--store-samples", type=int, default=512, help="samples of the COCO-shaped store")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder-row", action="append", default=None,
                    help="NAME[@SIDE]: section 5 for this encoder (repeatable; default dino-vits-8@224)")
    ap.add_argument("--encoder-row-only", action="store_true", help="run only section 5")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.encoder_row_only:
        for line in run_encoder_rows(args.encoder_row or ["dino-vits-8@224"], args.steps, args.threads):
            print(line)
        return
    vit_b = register_random_vit_b()
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.data.synthetic import SyntheticConfig

    ratios: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        run_make_synthetic(SyntheticConfig(out=str(root), num_train=args.images, num_val=1, image_size=480,
                                       seed=0, progress=False))
        stores = {"random-vit-tiny": Path(tmp) / "tiny.zarr", vit_b: Path(tmp) / "coco_shaped.zarr"}
        build_store(root, "random-vit-tiny", stores["random-vit-tiny"])
        build_coco_shaped_store(stores[vit_b], args.store_samples)
        # 1. input cost per sample
        for name in ("random-vit-tiny", vit_b):
            decode, encode = online_input_cost(root, name, args.images)
            read = 1.0 / loader_rate(stores[name], 64, in_memory=False)
            print(f"input/sample {name}: decode+transform {decode * 1e3:.1f} ms + encoder "
                  f"{encode * 1e3:.1f} ms online; store read {read * 1e3:.3f} ms (streaming, batch 64)")
            ratios.append(f"ratio input cost per sample, online / store read, {name}: "
                          f"{(decode + encode) / read:.0f}x")

        # 2. whole stage-1 step
        trainer_rate = None
        for label, hidden in (("reference (decoder 3x2048)", (2048, 2048, 2048)),
                              ("ablation (decoder 3x512)", (512, 512, 512))):
            cfg = model_config_for("coco", 1, decoder_hidden=hidden)
            cache_s, online_s = step_times(cfg, stores[vit_b], root, vit_b, args.batch, args.steps)
            print(f"stage-1 step, {label}, batch {args.batch}: cache {cache_s:.2f} s, "
                  f"online {online_s:.2f} s")
            ratios.append(f"ratio stage-1 step, online / cache, {label}: {online_s / cache_s:.2f}x")
            if trainer_rate is None:
                trainer_rate = args.batch / cache_s

        # 3. FLOP split
        f = flop_split(vit_b)
        online_total = f["encoder"] + f["train_total"]
        print(f"FLOPs per training image (counted): encoder fwd {f['encoder'] / 1e9:.1f} G, "
              f"input MLP + slot attention fwd+bwd {f['slot_model'] / 1e9:.1f} G, "
              f"decoder fwd+bwd {f['decoder'] / 1e9:.1f} G")
        print(f"  online step: encoder {f['encoder'] / online_total:.0%}, slot model "
              f"{f['slot_model'] / online_total:.1%}, decoder {f['decoder'] / online_total:.0%}")
        h100_rate = H100_BF16_FLOPS * H100_UTILISATION / f["train_total"]
        print(f"  H100 estimate ({H100_UTILISATION:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16): "
              f"{h100_rate:.0f} images/s from the cache; online, the same GPU also runs the encoder "
              f"({H100_BF16_FLOPS * H100_UTILISATION / online_total:.0f} images/s) and the CPUs must decode "
              f"and resize that many JPEGs per second")

        # 4. loader vs trainer
        stream = loader_rate(stores[vit_b], 64, in_memory=False)
        resident = loader_rate(stores[vit_b], 64, in_memory=True)
        print(f"loader (ViT-B-sized features, batch 64): streaming {stream:.0f} samples/s, in-memory "
              f"{resident:.0f} samples/s; trainer (reference, this CPU) {trainer_rate:.2f} samples/s")
        ram = COCO_TRAIN * 2 * 196 * 768 * 2
        print(f"resident COCO train cache: {COCO_TRAIN} x 2 views x 196 x 768 x 2 B = {ram / 1e9:.1f} GB "
              f"({ram / 2e9:.1f} GB with one view)")
        for mode, rate in (("streaming", stream), ("in-memory", resident)):
            ratios.append(f"ratio loader / trainer samples/s, {mode}: {rate / trainer_rate:.0f}x on this "
                          f"CPU, {rate / h100_rate:.2f}x vs the H100 estimate")
    ratios += run_encoder_rows(args.encoder_row or ["dino-vits-8@224"], args.steps, args.threads)
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
