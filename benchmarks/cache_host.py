"""The host side of `cache-features` at GPU rate: the pipeline with an encoder that costs nothing.

Four parts, each printed as a rate and a ratio measured in this run:
  1. decode + transform per core: COCO-size JPEGs (640 x 480 smooth-noise photos) -> [3, 224, 224], with the
     reference decoder (PIL) and with `--decoder torchvision` (torchvision.io.decode_jpeg on the CPU), both
     through the code cache-features runs (adaslot/data/decode.py), one process.
  2. the shard writer at ViT-B size (196 x 768 fp16 per view, shards of 512 samples x 2 views), with
     crc32c checksums: the direct writer cache-features uses (adaslot/store/shardfile.py) vs writing the same
     shard through zarr-python (the writer before), in views/s and views per CPU second (= per core).
  3. the loader's work on 64-px images (decode + transform + collate, 2 views), one process, per CPU second:
     the per-image path (what the DataLoader did before) vs the batch path (CocoDataset.__getitems__).
  4. the whole `cache-features` on 64-px images (2 views) with the "instant" encoder (benchmark-only: zeros of
     the contract's shape, 16 x 768 at 64 px), images/s end to end, with each decoder.
Goals (docs/scale.md): writer >= 6000 ViT-B views/s on one core; pipeline >= 1000 images/s on 2 cores.
Results: docs/results/cache_host_rates.json (or --json).
    .venv/bin/python benchmarks/cache_host.py [--jpegs 48] [--shards 2] [--images 4000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _timing import alternate
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class InstantTokens(nn.Module):
    """[B, 3, H, W] -> zeros [B, (H / patch) * (W / patch), dim]: an encoder that takes no time."""

    def __init__(self, dim: int = 768, patch: int = 16) -> None:
        super().__init__()
        self.dim, self.patch = dim, patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = (x.shape[-2] // self.patch) * (x.shape[-1] // self.patch)
        return x.new_zeros(x.shape[0], t, self.dim)


def register_instant(name: str = "instant-vitb-16") -> str:
    """Register the benchmark-only instant encoder (ViT-B/16 shapes) and return its name."""
    from adaslot.encoders import register_encoder

    register_encoder(
        name=name,
        embed_dim=768,
        patch_size=16,
        image_size=64,
        builder=InstantTokens,
        tap_point="zeros (benchmark: an encoder that costs nothing)",
    )
    return name


def make_jpegs(folder: Path, count: int) -> list[Path]:
    """640 x 480 photo-like JPEGs: smooth noise (low-frequency colour fields) plus fine grain, quality 90."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        low = torch.from_numpy(rng.random((1, 3, 12, 16), dtype=np.float32))
        img = torch.nn.functional.interpolate(low, size=(480, 640), mode="bicubic", align_corners=False)[0]
        img = img + torch.from_numpy(rng.normal(0, 0.04, (3, 480, 640)).astype(np.float32))
        a = (img.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        p = folder / f"{i:06d}.jpg"
        Image.fromarray(a).save(p, quality=90)
        paths.append(p)
    return paths


def decode_part(paths: list[Path], repeats: int) -> dict[str, float]:
    """640 x 480 JPEG -> [3, 224, 224], one image at a time in this process: the reference (PIL) vs
    torchvision.io.decode_jpeg, both through the code cache-features runs (data/decode.py)."""
    from adaslot.data.decode import decode_file, transform_batch

    cpu: dict[str, list[float]] = {"pil": [], "torchvision": []}

    def one(decoder: str, p: Path) -> torch.Tensor:
        return transform_batch([decode_file(p, None, "auto", decoder).pixels], 224)[0][0]  # type: ignore[list-item]

    def timed(decoder: str) -> float:
        c, t = time.process_time(), time.perf_counter()
        for p in paths:
            one(decoder, p)
        cpu[decoder].append(len(paths) / (time.process_time() - c))  # images per CPU second of this process
        return len(paths) / (time.perf_counter() - t)

    a, b = alternate(lambda: timed("pil"), lambda: timed("torchvision"), repeats)
    diff = max(float((one("pil", p) - one("torchvision", p)).abs().max()) for p in paths)
    return {
        "pil_images_per_s": statistics.median(a),
        "torchvision_images_per_s": statistics.median(b),
        "pil_images_per_cpu_s": statistics.median(cpu["pil"][-repeats:]),
        "torchvision_images_per_cpu_s": statistics.median(cpu["torchvision"][-repeats:]),
        "max_abs_diff_pil_vs_torchvision": diff,
    }


class PerItem(torch.utils.data.Dataset):
    """A dataset's per-image path only (no __getitems__): what the DataLoader did before the batch path."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


def loader_part(root: Path, images: int, repeats: int) -> dict[str, float]:
    """64-px images, 2 views, in this process: decode + transform + collate per CPU second, the per-image
    path (one transform per image, collate copies) vs the batch path cache-features uses
    (CocoDataset.__getitems__), with each decoder."""
    from adaslot.data.coco import CocoDataset, collate

    ds = CocoDataset.from_root(root, "train", size=64, views=2)
    n = min(images, len(ds))
    batches = [list(range(i, min(i + 64, n))) for i in range(0, n, 64)]
    plain = PerItem(ds)

    def run(decoder: str, batched: bool) -> float:
        ds.decoder = decoder
        c = time.process_time()
        for b in batches:
            collate(ds.__getitems__(b) if batched else [plain[i] for i in b])
        return n / (time.process_time() - c)

    a, b = alternate(lambda: run("pil", False), lambda: run("pil", True), repeats)
    _, c = alternate(lambda: 0.0, lambda: run("torchvision", True), repeats, warmup=False)
    return {"per_image_path_pil_images_per_cpu_s": statistics.median(a),
            "batch_path_pil_images_per_cpu_s": statistics.median(b),
            "batch_path_torchvision_images_per_cpu_s": statistics.median(c), "images": n}


def writer_part(tmp: Path, shards: int, repeats: int) -> dict[str, float]:
    """ViT-B-sized shards written by the direct writer vs through zarr-python (both with crc32c)."""
    import zarr

    from adaslot.store import layout
    from adaslot.store.shardfile import direct_features, write_shard

    s, v = 512, 2
    data = np.random.default_rng(0).standard_normal((s, v, 196, 768), np.float32).astype(np.float16)
    cpu: dict[str, list[float]] = {"direct": [], "zarr": []}

    def run(kind: str) -> float:
        out = tmp / f"w-{kind}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        root = zarr.open_group(out, mode="w")
        layout.create_arrays(root, np.arange(s * shards), v, 196, 768, s)
        direct = direct_features(root, str(out))
        c0, t = cpu_seconds(), time.perf_counter()
        for k in range(shards):
            if kind == "direct":
                write_shard(direct, k, data)
            else:
                layout.for_writing(root, "features")[k * s : (k + 1) * s] = data
        dt = time.perf_counter() - t
        cpu[kind].append(cpu_seconds() - c0)
        shutil.rmtree(out, ignore_errors=True)
        return shards * s * v / dt

    run("direct"), run("zarr")  # warm-up
    cpu["direct"].clear(), cpu["zarr"].clear()
    a, b = alternate(lambda: run("direct"), lambda: run("zarr"), repeats, warmup=False)
    views = shards * s * v
    return {
        "direct_views_per_s": statistics.median(a),
        "zarr_views_per_s": statistics.median(b),
        "direct_views_per_cpu_s": views / statistics.median(cpu["direct"]),
        "zarr_views_per_cpu_s": views / statistics.median(cpu["zarr"]),
        "direct_gb_per_s": statistics.median(a) * 196 * 768 * 2 / 1e9,
    }


def make_images(tmp: Path, images: int) -> Path:
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.data.synthetic import SyntheticConfig

    run_make_synthetic(
        SyntheticConfig(
            out=str(tmp / "coco"), num_train=images, num_val=1, image_size=64, seed=0, progress=False
        )
    )
    return tmp / "coco"


def pipeline_part(tmp: Path, root: Path, workers: int, repeats: int) -> dict[str, Any]:
    """The whole cache-features on the 64-px images, instant encoder: the batch path with each decoder and
    the per-image path (the DataLoader fetching items one by one, as before), in turns."""
    from adaslot.config import CacheConfig, DataSpec
    from adaslot.data.coco import CocoDataset
    from adaslot.store.writer import run_cache_features

    name = register_instant()
    cpus: dict[str, list[float]] = {"pil": [], "torchvision": [], "per-image": []}
    images = 0

    def run(kind: str) -> float:
        nonlocal images
        out = tmp / "pipe.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cfg = CacheConfig(out=str(out), data=DataSpec(root=str(root), split="train"), encoder=name,
                          image_size=64, batch_size=64, workers=workers, device="cpu", progress=False,
                          decoder="torchvision" if kind == "torchvision" else "pil")
        batch_path = CocoDataset.__getitems__
        if kind == "per-image":  # the DataLoader skips a false __getitems__: items one by one, then collate
            CocoDataset.__getitems__ = None  # type: ignore[assignment,method-assign]  # the plain way
        try:
            c0, t = cpu_seconds(), time.perf_counter()
            s = run_cache_features(cfg)
            dt = time.perf_counter() - t
        finally:
            CocoDataset.__getitems__ = batch_path  # type: ignore[method-assign]  # restored
        images = s["images_written"]
        cpus[kind].append((cpu_seconds() - c0) / images)
        return images / dt

    rates: dict[str, list[float]] = {"pil": [], "torchvision": [], "per-image": []}
    for _ in range(repeats):
        for kind in rates:
            rates[kind].append(run(kind))
    ms = {k: 1e3 * statistics.median(v) for k, v in cpus.items()}
    return {
        "images_per_s": statistics.median(rates["pil"]),
        "runs": rates["pil"],
        "cpu_ms_per_image": ms["pil"],
        "torchvision_images_per_s": statistics.median(rates["torchvision"]),
        "torchvision_runs": rates["torchvision"],
        "torchvision_cpu_ms_per_image": ms["torchvision"],
        "per_image_path_images_per_s": statistics.median(rates["per-image"]),
        "per_image_path_runs": rates["per-image"],
        "per_image_path_cpu_ms_per_image": ms["per-image"],
        "images": images,
        "workers": workers,
    }


def table_rows(dec: dict[str, float], wr: dict[str, float], load: dict[str, float], pipe: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """The docs table (docs/scale.md): each part per CPU second (load-independent) and wall-clock."""
    two_cores = 2e3 / pipe["cpu_ms_per_image"]  # what two dedicated cores would do at this CPU cost
    return [
        {"part": "decode + transform 640x480 JPEG -> 224, PIL (reference)", "unit": "images",
         "per_cpu_s": dec["pil_images_per_cpu_s"], "wall_per_s": dec["pil_images_per_s"]},
        {"part": "the same, --decoder torchvision (CPU)", "unit": "images",
         "per_cpu_s": dec["torchvision_images_per_cpu_s"], "wall_per_s": dec["torchvision_images_per_s"]},
        {"part": "shard writer, ViT-B views with crc32c (direct)", "unit": "views",
         "per_cpu_s": wr["direct_views_per_cpu_s"], "wall_per_s": wr["direct_views_per_s"]},
        {"part": "the same through zarr-python (before)", "unit": "views",
         "per_cpu_s": wr["zarr_views_per_cpu_s"], "wall_per_s": wr["zarr_views_per_s"]},
        {"part": "loader work at 64 px, per-image path (before)", "unit": "images",
         "per_cpu_s": load["per_image_path_pil_images_per_cpu_s"], "wall_per_s": None},
        {"part": "loader work at 64 px, batch path, PIL", "unit": "images",
         "per_cpu_s": load["batch_path_pil_images_per_cpu_s"], "wall_per_s": None},
        {"part": "loader work at 64 px, batch path, torchvision", "unit": "images",
         "per_cpu_s": load["batch_path_torchvision_images_per_cpu_s"], "wall_per_s": None},
        {"part": f"whole cache-features, 64 px, instant encoder, {pipe['workers']} workers, PIL",
         "unit": "images",
         "per_cpu_s": 1e3 / pipe["cpu_ms_per_image"], "wall_per_s": pipe["images_per_s"],
         "two_dedicated_cores": two_cores},
        {"part": "the same, per-image path (before)", "unit": "images",
         "per_cpu_s": 1e3 / pipe["per_image_path_cpu_ms_per_image"],
         "wall_per_s": pipe["per_image_path_images_per_s"],
         "two_dedicated_cores": 2e3 / pipe["per_image_path_cpu_ms_per_image"]},
        {"part": "the same, --decoder torchvision", "unit": "images",
         "per_cpu_s": 1e3 / pipe["torchvision_cpu_ms_per_image"],
         "wall_per_s": pipe["torchvision_images_per_s"],
         "two_dedicated_cores": 2e3 / pipe["torchvision_cpu_ms_per_image"]},
    ]


def projection_rows(dec: dict[str, float], wr: dict[str, float], cores: int = 16, need: float = 6000.0
                    ) -> list[dict[str, Any]]:
    """Per-core rates x 16 cores against the H100 estimate of docs/benchmarks.md (6 000 COCO train images/s
    = 12 000 ViT-B views/s). The writer's and the main process's cores are taken from the decoders'."""
    writer_cores = 2 * need / wr["direct_views_per_cpu_s"]
    free = cores - writer_cores - 1  # one core: the main process (batches to the GPU, fp16 copies)
    rows = []
    for name, rate in (("JPEG decode + transform, PIL", dec["pil_images_per_cpu_s"]),
                       ("JPEG decode + transform, torchvision on the CPU",
                        dec["torchvision_images_per_cpu_s"])):
        rows.append({"stage": name, "per_core": rate, "cores": round(free, 1), "projected": rate * free,
                     "needed": need, "fraction_of_needed": rate * free / need})
    rows.append({"stage": "shard writer with crc32c (views/s)", "per_core": wr["direct_views_per_cpu_s"],
                 "cores": round(writer_cores, 2), "projected": 2 * need, "needed": 2 * need,
                 "fraction_of_needed": 1.0})
    rows.append({"stage": "JPEG decode on the GPU (nvJPEG, --decoder torchvision --device cuda)",
                 "per_core": None, "cores": None, "projected": None, "needed": need,
                 "fraction_of_needed": None})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jpegs", type=int, default=48)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "docs" / "results" / "cache_host_rates.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("ADASLOT_BENCH_TMP")) as t:
        tmp = Path(t)
        dec = decode_part(make_jpegs(tmp / "jpegs", args.jpegs), args.repeats)
        wr = writer_part(tmp, args.shards, args.repeats)
        root = make_images(tmp, args.images)
        load = loader_part(root, 1024, args.repeats)
        pipe = pipeline_part(tmp, root, args.workers, args.repeats)
    result = {
        "title": "cache-features host side",
        "benchmark": "benchmarks/cache_host.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "date": time.strftime("%Y-%m-%d"),
        "decode_640x480_jpeg_to_224": dec,
        "writer_vitb": wr,
        "loader_64px_one_process": load,
        "pipeline_64px_instant_encoder": pipe,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "rows": table_rows(dec, wr, load, pipe),
        "projection": {"rows": projection_rows(dec, wr)},
    }
    print(
        f"decode+transform 640x480 JPEG -> 224, one core: PIL {dec['pil_images_per_s']:.0f} images/s, "
        f"torchvision.io.decode_jpeg {dec['torchvision_images_per_s']:.0f} images/s; per CPU second "
        f"{dec['pil_images_per_cpu_s']:.0f} / {dec['torchvision_images_per_cpu_s']:.0f} "
        f"(max |diff| {dec['max_abs_diff_pil_vs_torchvision']:.3f})"
    )
    print(f"ratio decode torchvision / PIL = {dec['torchvision_images_per_s'] / dec['pil_images_per_s']:.2f}")
    print(
        f"shard writer, ViT-B views with crc32c: direct {wr['direct_views_per_s']:.0f} views/s "
        f"({wr['direct_views_per_cpu_s']:.0f} per CPU second, {wr['direct_gb_per_s']:.2f} GB/s), zarr-python "
        f"{wr['zarr_views_per_s']:.0f} views/s ({wr['zarr_views_per_cpu_s']:.0f} per CPU second)"
    )
    print(
        f"ratio shard writer direct / zarr-python = {wr['direct_views_per_s'] / wr['zarr_views_per_s']:.1f} "
        f"(per CPU second {wr['direct_views_per_cpu_s'] / wr['zarr_views_per_cpu_s']:.1f}); "
        f"direct / goal 6000 views/s = {wr['direct_views_per_s'] / 6000:.2f}"
    )
    print(
        f"cache-features, 64 px, 2 views, instant encoder, {pipe['workers']} decode worker(s): "
        f"{pipe['images_per_s']:.0f} images/s ({pipe['cpu_ms_per_image']:.2f} CPU ms per image)"
    )
    print(
        f"decode + transform + collate, 64 px, 2 views, one process: per-image path "
        f"{load['per_image_path_pil_images_per_cpu_s']:.0f}, "
        f"batch path {load['batch_path_pil_images_per_cpu_s']:.0f} "
        f"(torchvision {load['batch_path_torchvision_images_per_cpu_s']:.0f}) images per CPU second"
    )
    print(
        f"ratio loader batch path / per-image path (PIL, per CPU second) = "
        f"{load['batch_path_pil_images_per_cpu_s'] / load['per_image_path_pil_images_per_cpu_s']:.2f}"
    )
    print(
        f"  with --decoder torchvision: {pipe['torchvision_images_per_s']:.0f} images/s "
        f"({pipe['torchvision_cpu_ms_per_image']:.2f} CPU ms per image)"
    )
    print(
        f"  per-image path (before): {pipe['per_image_path_images_per_s']:.0f} images/s "
        f"({pipe['per_image_path_cpu_ms_per_image']:.2f} CPU ms per image)"
    )
    print(
        f"ratio pipeline batch path / per-image path = "
        f"{pipe['images_per_s'] / pipe['per_image_path_images_per_s']:.2f} (CPU per image "
        f"{pipe['per_image_path_cpu_ms_per_image'] / pipe['cpu_ms_per_image']:.2f}x less)"
    )
    print(f"ratio pipeline images/s / goal 1000 = {pipe['images_per_s'] / 1000:.2f} "
          f"(--decoder torchvision: {pipe['torchvision_images_per_s'] / 1000:.2f})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
