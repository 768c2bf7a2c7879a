"""The `adaslot` command line: one function per command; flags -> config dataclass -> library call.

Library code raises `AdaslotError` for anything a user can cause; `main()` prints it as one line and exits 2.
Heavy imports (torch, timm, zarr) happen inside the commands so `adaslot --help` is instant.
"""

from __future__ import annotations

import sys

import typer

from adaslot.errors import AdaslotError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AdaSlot / DINOSAUR on cached frozen-ViT features: cache-features, train, eval, demo.",
)


@app.callback()
def _root() -> None:
    """AdaSlot / DINOSAUR on cached frozen-ViT features: cache-features, train, eval, demo."""
    # An explicit callback keeps `adaslot COMMAND` a group even if only one command were registered.


# == section: make-synthetic (data) ==


@app.command("make-synthetic")
def make_synthetic_cmd(
    out: str = typer.Argument(..., help="Output dir (COCO 2017 layout: train2017/, val2017/, annotations/)."),
    num_train: int = typer.Option(1000, help="Number of train images."),
    num_val: int = typer.Option(200, help="Number of val images."),
    image_size: int = typer.Option(224, help="Square image side in pixels."),
    seed: int = typer.Option(0, help="Seed; the dataset is a deterministic function of it and the flags."),
    min_objects: int = typer.Option(1, help="Fewest objects drawn per image."),
    max_objects: int = typer.Option(6, help="Most objects drawn per image (crowded scenes may get fewer)."),
    min_radius: float = typer.Option(0.134, help="Smallest radius / side (0.134 = 30 px at 224)."),
    max_radius: float = typer.Option(0.25, help="Largest radius / side (0.25 = 56 px at 224)."),
    texture: bool = typer.Option(True, "--texture/--no-texture", help="Textured objects or solid colours."),
    background: str = typer.Option("varied", help="plain, gradient, stripes, noise or varied."),
    min_visible: float = typer.Option(0.5, help="Minimum visible fraction of each object after occlusion."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write the built-in synthetic shapes dataset as a real COCO-2017-format dataset (JPEG + RLE json)."""
    from adaslot.data.synthetic import SyntheticConfig, make_synthetic

    cfg = SyntheticConfig(
        out=out, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
        min_objects=min_objects, max_objects=max_objects, min_radius=min_radius, max_radius=max_radius,
        texture=texture, background=background, min_visible=min_visible, overwrite=overwrite,
    )
    s = make_synthetic(cfg)
    print(
        f"wrote {s['train_images']} train / {s['val_images']} val images "
        f"({s['train_objects'] + s['val_objects']} objects, {s['mean_objects']:.2f} per image) to {s['root']}"
    )

# == section: cache-features, cache-info, cache-verify, export (store) ==


@app.command("cache-features")
def cache_features_cmd(
    out: str = typer.Option(..., help="Store path: DIR.zarr or any fsspec URL zarr understands (s3://...)."),
    dataset: str = typer.Option(None, help="'coco' with --root (ROOT/{split}2017 + annotations/)."),
    root: str = typer.Option(None, help="COCO 2017 root."),
    split: str = typer.Option("train", help="train (2 views: image + hflip) or val (1 view)."),
    images: str = typer.Option(None, help="Image folder of a COCO-format dataset (with --annotations)."),
    annotations: str = typer.Option(None, help="COCO-format annotation json (with --images)."),
    encoder: str = typer.Option("dino-vitb-16", help="Encoder name (adaslot.encoders)."),
    encoder_weights: str = typer.Option(None, help="Weights file (timm or DINO release format)."),
    resize_to: tuple[int, int] = typer.Option((0, 0), help="Input H W (square); default: encoder native."),
    views: int = typer.Option(None, help="Stored views: 2 = image + hflip (train default), 1 (val default)."),
    precision: str = typer.Option("fp32", help="fp32 (reference) or bf16 (autocast); recorded in the store."),
    antialias: bool = typer.Option(False, "--antialias", help="Antialiased resize (official: off)."),
    batch_size: int = typer.Option(64, help="Images per encoder batch."),
    workers: int = typer.Option(4, help="DataLoader workers decoding and resizing images."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under torchrun: the rank's GPU)."),
    chunk_size: int = typer.Option(64, help="Samples per chunk (the unit a training loader reads)."),
    shard_size: int = typer.Option(512, help="Samples per shard file (multiple of --chunk-size)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store made with other settings."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Rich progress bar and summary."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first missing or unreadable image "
                                "(default: skip it and list it in the store)."),
) -> None:
    """Run the frozen encoder once over a dataset into a resumable zarr feature store.

    Rerun the same command after an interruption: only missing shards are computed. Under
    `torchrun --nproc_per_node P adaslot cache-features ...` each rank encodes its own whole shards."""
    from adaslot.config import CacheConfig
    from adaslot.store.writer import cache_features

    if resize_to[0] != resize_to[1]:
        raise AdaslotError(f"--resize-to must be square (center crop), got {resize_to[0]} {resize_to[1]}")
    cfg = CacheConfig(
        out=out, dataset=dataset, root=root, split=split, images=images, annotations=annotations,
        encoder=encoder, encoder_weights=encoder_weights, image_size=resize_to[0] or None, views=views,
        antialias=antialias, precision=precision, batch_size=batch_size, workers=workers, device=device,
        chunk_samples=chunk_size, shard_samples=shard_size, overwrite=overwrite, progress=progress,
        strict=strict,
    )
    cache_features(cfg)


@app.command("cache-info")
def cache_info_cmd(store: str = typer.Argument(..., help="Feature store (zarr path/URL or .h5).")) -> None:
    """Print a store's feature contract, dataset identity, layout and completion state."""
    from adaslot.store import open_store

    print("\n".join(open_store(store).summary_lines()))


@app.command("cache-verify")
def cache_verify_cmd(
    store: str = typer.Argument(..., help="Feature store (zarr path/URL or .h5)."),
    sample: int = typer.Option(64, help="Number of random stored images to recompute."),
    seed: int = typer.Option(0, help="Seed of the sample."),
    encoder_weights: str = typer.Option(None, help="Weights file, if not in the hub cache."),
    root: str = typer.Option(None, help="COCO root, if the images moved since caching."),
    images: str = typer.Option(None, help="Image folder, if it moved since caching."),
    annotations: str = typer.Option(None, help="Annotation json, if it moved since caching."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Recompute a random sample online and report the max error against the stored features."""
    from adaslot.store.writer import verify_store

    r = verify_store(store, sample=sample, seed=seed, encoder_weights=encoder_weights, root=root,
                     images=images, annotations=annotations, device=device)
    verdict = "OK (within fp16 rounding)" if r["ok"] else "MISMATCH"
    print(f"{r['rows']} images recomputed: max abs error {r['max_abs_error']:.3g} "
          f"(fp16 rounding bound {r['bound']:.3g}): {verdict}")
    if not r["ok"]:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    store: str = typer.Argument(..., help="Complete zarr feature store."),
    out: str = typer.Argument(..., help="Output .h5 file."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write the store's arrays and attributes to HDF5 (h5py, chunked); `train --from-cache` reads both."""
    from adaslot.store.export import export_hdf5

    r = export_hdf5(store, out, overwrite=overwrite)
    print(f"wrote {r['out']} ({r['rows']} rows, {r['bytes'] / 2**20:.1f} MiB)")

# == section: train (train) ==


def _parse_model_overrides(items: list[str]) -> dict:
    """`--model slot_dim=64 --model decoder_hidden=512,512` -> {"slot_dim": 64, "decoder_hidden": (512, 512)}.
    """
    import dataclasses

    from adaslot.config import ModelConfig

    types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types:
            raise AdaslotError(f"--model expects KEY=VALUE with KEY one of {', '.join(types)}; got {item!r}")
        t = str(types[key])
        try:
            if "tuple" in t:
                out[key] = tuple(int(v) for v in value.split(",") if v)
            elif "bool" in t:
                out[key] = value.lower() in ("1", "true", "yes")
            elif "float" in t:
                out[key] = float(value)
            else:
                out[key] = int(value)
        except ValueError:
            kind = ("comma-separated integers" if "tuple" in t else "a number" if "float" in t
                    else "an integer")
            raise AdaslotError(f"--model {key} expects {kind}, got {value!r}") from None
    return out


@app.command("train")
def train_cmd(
    stage: int = typer.Option(1, help="1: fixed K (DINOSAUR-style); 2: adaptive K (warm start)."),
    out: str = typer.Option(..., help="Run folder (config, metrics.jsonl, checkpoints/); rerun to resume."),
    from_cache: str = typer.Option(None, help="Feature store (zarr dir or .h5) to train from."),
    dataset: str = typer.Option(None, help="Online mode: 'coco' (with --root)."),
    root: str = typer.Option(None, help="Online mode: COCO root with train2017/ and annotations/."),
    images: str = typer.Option(None, help="Online mode: image folder (with --annotations)."),
    annotations: str = typer.Option(None, help="Online mode: COCO-format annotation json for --images."),
    encoder: str = typer.Option(None, help="Online mode: frozen encoder name (default: the preset's)."),
    encoder_weights: str = typer.Option(None, help="Online mode: encoder weights file."),
    preset: str = typer.Option("coco", help="Model preset: coco (SPEC), movi-c, movi-e, demo."),
    num_slots: int = typer.Option(None, help="K (default: preset's stage-1 K, or its K_max in stage 2)."),
    model: list[str] = typer.Option([], "--model", help="Override a model-config field: KEY=VALUE (repeat)."),
    num_iters: int = typer.Option(None, help="Optimiser steps (default 200k stage 1, 500k stage 2)."),
    batch_size: int = typer.Option(64, help="Global batch size (split over torchrun ranks)."),
    lr: float = typer.Option(4e-4, help="Peak learning rate (Adam)."),
    lr_schedule: str = typer.Option("adaslot", help="adaslot (decay from step 0), "
                                    "dinosaur (decay after warm-up), or constant."),
    warmup_steps: int = typer.Option(10_000, help="Linear warm-up steps."),
    lr_half_life: int = typer.Option(100_000, help="Steps per halving of the learning rate."),
    warmstart: str = typer.Option(None, help="Stage 2: stage-1 checkpoint to start from."),
    sparsity_weight: float = typer.Option(0.1, help="Stage 2: weight of the mean-kept-fraction penalty."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clipping (0: off)."),
    precision: str = typer.Option("fp32", help="fp32 (reference), tf32, or bf16 (autocast)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the slot model and loss."),
    dense_decoding: bool = typer.Option(
        False, "--dense-decoding",
        help="Stage 2: decode dropped slots with autograd too (official dense path; default: sparse, "
             "gradients within 1e-5 relative)."),
    seed: int = typer.Option(0, help="Seed for init, data order and noise."),
    val_every: int = typer.Option(0, help="Validate every N steps (0: never)."),
    val_root: str = typer.Option(None, help="COCO root for validation (default: --root)."),
    val_max_images: int = typer.Option(64, help="Validation subset size."),
    ckpt_every: int = typer.Option(5000, help="Checkpoint every N steps (and at the end)."),
    keep_last: int = typer.Option(3, help="Checkpoints kept (older ones deleted; 0 keeps all)."),
    log_every: int = typer.Option(50, help="Write metrics.jsonl every N steps."),
    cache_in_memory: bool = typer.Option(False, "--cache-in-memory", help="Load the store into memory."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    workers: int = typer.Option(4, help="Data-loading workers."),
    wandb: bool = typer.Option(False, "--wandb", help="Also log to Weights & Biases."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    strict: bool = typer.Option(False, "--strict", help="Online mode: stop at the first missing or "
                                "unreadable image (default: skip it and count it in the run summary)."),
) -> None:
    """Train stage 1 or 2 from a feature store or online from images; rerunning the same command resumes."""
    from adaslot.config import TrainConfig
    from adaslot.train import train

    cfg = TrainConfig(
        stage=stage, out=out, from_cache=from_cache, dataset=dataset, root=root, images=images,
        annotations=annotations, encoder=encoder, encoder_weights=encoder_weights, preset=preset,
        num_slots=num_slots, model_overrides=_parse_model_overrides(model), num_iters=num_iters,
        batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
        lr_half_life=lr_half_life, grad_clip=grad_clip, warmstart=warmstart, sparsity_weight=sparsity_weight,
        precision=precision, compile=compile, dense_decoding=dense_decoding, seed=seed,
        val_every=val_every, val_root=val_root,
        val_max_images=val_max_images,
        ckpt_every=ckpt_every, keep_last=keep_last, log_every=log_every, cache_in_memory=cache_in_memory,
        device=device, workers=workers, wandb=wandb, strict=strict,
    )
    result = train(cfg, progress=progress)
    if result["rank"] == 0:
        # No loss when a finished run was rerun (no step taken): "loss nan" would read as a failure.
        loss = "" if result["loss"] != result["loss"] else f", loss {result['loss']:.6f}"
        print(f"step {result['step']}{loss}, checkpoint {result['checkpoint']}")


# == section: eval (evaluate) ==


@app.command("eval")
def eval_cmd(
    checkpoint: str = typer.Argument(..., help="An adaslot checkpoint (.pt) written by `adaslot train`."),
    dataset: str = typer.Option("coco", help="Layout of --root: coco (root/<split>2017, annotations/)."),
    root: str = typer.Option(None, help="COCO 2017 root folder."),
    images: str = typer.Option(None, help="Image folder of a COCO-format dataset (with --annotations)."),
    annotations: str = typer.Option(None, help="COCO-format annotation json for --images."),
    split: str = typer.Option("val", help="Split under --root."),
    out: str = typer.Option(None, help="Output folder (default: <checkpoint folder>/eval-<split>)."),
    protocol: str = typer.Option("all", help="adaslot (224, crowd kept), dinosaur (320, no crowd), fullres "
                                 "(original pixels), a comma list, or all."),
    save_masks: bool = typer.Option(False, "--save-masks", help="Write a PNG slot-id map per image at its "
                                    "original size (OUT/masks/)."),
    num_vis: int = typer.Option(16, help="Number of picture grids to write (OUT/vis/)."),
    from_cache: str = typer.Option(None, help="Fast proxy: read cached val features from this store instead "
                                   "of re-running the encoder."),
    gumbel_eval: int = typer.Option(None, help="Stage 2: sample the keep decision with Gumbel noise of this "
                                    "seed (the official, stochastic protocol); default: deterministic."),
    encoder_weights: str = typer.Option(None, help="Encoder weights file (default: local caches)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    workers: int = typer.Option(2, help="Data-loading workers."),
    max_images: int = typer.Option(None, help="Evaluate only the first N images."),
    seed: int = typer.Option(0, help="Seed of the slot-initialisation noise."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first missing or unreadable image "
                                "(default: skip it, score the rest and list it in metrics.json)."),
) -> None:
    """Score a checkpoint on COCO-format val data under the published protocols and at full resolution."""
    from adaslot.config import EvalConfig
    from adaslot.evaluate import print_results, run_eval

    cfg = EvalConfig(
        checkpoint=checkpoint, dataset=dataset, root=root, images=images, annotations=annotations,
        split=split, out=out, protocols=protocol, save_masks=save_masks, num_vis=num_vis,
        from_cache=from_cache, gumbel_eval=gumbel_eval, encoder_weights=encoder_weights, device=device,
        batch_size=batch_size, workers=workers, max_images=max_images, seed=seed, strict=strict,
    )
    print_results(run_eval(cfg, progress=progress))


# == section: convert-official (checkpoint conversion) ==


@app.command("convert-official")
def convert_official_cmd(
    ckpt: str = typer.Argument(..., help="Official AdaSlot/DINOSAUR Lightning checkpoint (.ckpt)."),
    out: str = typer.Argument(..., help="adaslot checkpoint to write (for eval and train --warmstart)."),
    stage: int = typer.Option(None, help="1 or 2 (default: 2 if the checkpoint has the Gumbel score network; "
                              "1 on a stage-2 checkpoint drops the selector)."),
    num_slots: int = typer.Option(None, help="K; not in the weights (default: the matching preset's)."),
    preset: str = typer.Option(None, help="Preset the shapes must match (tells movi-c from movi-e)."),
    encoder: str = typer.Option(None, help="Encoder name to record (default: the matching preset's)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Load with full pickle (runs code from the file): trusted files only."),
) -> None:
    """Convert an official AdaSlot checkpoint into an adaslot checkpoint (the frozen encoder is ignored)."""
    from collections import Counter

    from adaslot.convert import convert_official

    conv = convert_official(ckpt, out, stage=stage, num_slots=num_slots, preset=preset, encoder=encoder,
                            allow_pickle=allow_pickle)
    cfg = conv.model_config
    n_params = sum(t.numel() for t in conv.state.values())
    print(f"mapped {len(conv.mapped)} tensors ({n_params:,} parameters): stage {conv.stage}, "
          f"preset {conv.preset or 'custom'}, K={cfg.num_slots}, slot dim {cfg.slot_dim}, "
          f"decoder {list(cfg.decoder_hidden)}, encoder {conv.encoder}"
          + (f", official step {conv.step}" if conv.step is not None else ""))
    groups = Counter(".".join(k.split(".")[:2]) for k in conv.ignored)
    for prefix, n in sorted(groups.items()):
        print(f"ignored {n} tensors under {prefix}.*")
    print(f"wrote {out}")

# == section: demo (demo) ==


@app.command("demo")
def demo_cmd(
    out: str = typer.Option("cache/demo", help="Output folder (data, features, runs, eval, results.json)."),
    long: bool = typer.Option(False, "--long", help="The much longer run whose checkpoint ships (<= 1 h on 2 "
                              "cores)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes, seconds (tests); numbers meaningless."),
    seed: int = typer.Option(0, help="Seed of data, model init and noise (the run is a function of it)."),
    threads: int = typer.Option(1, help="torch threads (1 is fastest for the demo's tiny matrices; 0 = "
                                "torch's default)."),
    shipped: str = typer.Option(None, help="Checkpoint to evaluate as 'shipped' (default: adaslot/assets; "
                                "'' to skip)."),
    sparsity_weight: float = typer.Option(None, help="Stage-2 sparsity weight (default: SPEC's 0.1); higher "
                                          "drops more slots (README 'The demo' lists what it costs)."),
) -> None:
    """make-synthetic -> cache-features -> train stage 1 -> stage 2 -> eval, on a CPU, < 10 min."""
    from adaslot.config import demo_config
    from adaslot.demo import check_results, print_results, run_demo

    if long and quick:
        raise AdaslotError("--long and --quick exclude each other")
    if sparsity_weight is not None and sparsity_weight < 0:
        raise AdaslotError(f"--sparsity-weight must be >= 0, got {sparsity_weight}")
    cfg = demo_config("long" if long else "quick" if quick else "normal", out=out, seed=seed, threads=threads,
                      shipped=shipped, sparsity_weight=sparsity_weight)
    results = run_demo(cfg)
    check_results(results)
    print_results(results)


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except AdaslotError as e:
        print(f"adaslot: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adaslot: interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as e:
        # typer turns Ctrl-C inside a command into a silent exit 130; say why the run stopped
        if e.code == 130:
            print("adaslot: interrupted", file=sys.stderr)
        raise


if __name__ == "__main__":
    main()
