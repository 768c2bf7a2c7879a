"""`adaslot cache-features`: one pass of the frozen encoder over a dataset into a zarr feature store.

Pipeline: DataLoader workers decode + resize (+ flip view) -> pinned batches -> encoder on the device ->
fp16 rows collected per shard -> a writer thread writes each finished shard's features file (directly, one
writev per run of chunks: adaslot/store/shardfile.py) and then its status chunk (the shard's completion
marker), so disk writes overlap with compute.

Exactness: batches never straddle a shard and always start at the shard's first row, so a shard's bytes are a
function of the shard alone; a killed run leaves some shards flagged done and the rerun computes only the
others (same batches -> same bytes). Under torchrun, rank r encodes entries r, r + P, ... of the list of
missing shards (disjoint whole shards, one writer per file); rank 0 marks the store complete once every
shard is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from adaslot import distributed
from adaslot.config import CacheConfig
from adaslot.data.decode import finish_on_device
from adaslot.device import autocast, resolve_workers
from adaslot.errors import AdaslotError
from adaslot.files import file_sha256
from adaslot.progress import progress_bar
from adaslot.store import (
    STATUS_CODES,
    STATUS_OK,
    metadata_damage,
    normalise_path,
    shard_done_mask,
    size_on_disk,
    status_code,
)
from adaslot.store.create import check_resumable, create_store, first_difference, jsonable
from adaslot.store.shardfile import ShardWriter

VIEW_NAMES = ("image", "hflip")


def store_layout(cfg: CacheConfig) -> dict[str, int]:
    """The layout settings a store records (attrs["settings"]["layout"]): block and shard sizes in samples."""
    return {"chunk_samples": cfg.chunk_samples, "shard_samples": cfg.shard_samples}


def store_settings(cfg: CacheConfig, encoder: Any, dataset: Any, side: int, views: int) -> dict[str, Any]:
    """Everything that determines the store's bytes; a rerun must match it exactly to resume."""
    from adaslot.data.transforms import describe_transform

    ids = np.asarray(dataset.image_ids, dtype=np.int64)
    transform = describe_transform(side, antialias=cfg.antialias, crop=True)
    if cfg.decoder != "pil":  # the reference decoder is not recorded: stores made before the option resume
        transform["decoder"] = cfg.decoder
    contract = {**encoder.contract(side), "stored_dtype": "float16", "precision": cfg.precision}
    if hasattr(dataset, "store_identity"):  # MOVi (data.movi): frames of videos, no annotation file
        return {
            "feature_contract": contract,
            "dataset": {**dataset.store_identity(), "split": cfg.data.split},
            "transform": {**describe_transform(side, antialias=cfg.antialias, crop=False),
                          "resize": f"{dataset.shape[1]}x{dataset.shape[2]} -> {side}x{side}, bicubic, "
                                    f"align_corners=False, antialias={cfg.antialias}"},
            "views": list(VIEW_NAMES[:views]),
            "layout": store_layout(cfg),
        }
    return {
        "feature_contract": contract,
        "dataset": {
            "name": "coco-format",  # the annotation checksum is the identity; the flag spelling is not
            "split": cfg.data.split,
            "annotation_file": Path(dataset.annotation_file).name,
            "annotation_sha256": file_sha256(dataset.annotation_file),
            "num_listed": int(dataset.num_listed),
            "num_samples": len(dataset),
            "image_ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
            "missing": [int(s.image_id) for s in dataset.skips.items if s.reason == "missing"],
        },
        "transform": transform,
        "views": list(VIEW_NAMES[:views]),
        "layout": store_layout(cfg),
    }


def _prepare_store(cfg: CacheConfig, settings: dict[str, Any], image_ids: np.ndarray, views: int,
                   tokens: int, dim: int, source: dict[str, Any]) -> bool:
    """Create the store, or check an existing one can be resumed. Returns True if it is already complete."""
    import zarr

    out = cfg.out
    attrs = _existing_attrs(out, cfg.overwrite)
    if attrs is not None:
        check_resumable(cfg, attrs, settings)
        if first_difference(attrs.get("settings", {}), jsonable(settings)) is None:
            return bool(attrs.get("complete", False))
    # New (or replaced) store. mode="w" deletes what was there.
    create_store(zarr.open_group(out, mode="w"), settings, image_ids, views, tokens, dim, source)
    return False


def _existing_attrs(out: str, overwrite: bool = False) -> dict[str, Any] | None:
    """The root attributes of the store at `out`; None if there is none (or its metadata is damaged and it is
    to be overwritten); a one-line error if something else is there or the store's metadata is damaged."""
    import zarr

    try:
        return dict(zarr.open_group(out, mode="r").attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeNotFoundError):
        if Path(out).exists() and "://" not in out and any(Path(out).iterdir()):
            raise AdaslotError(f"{out} exists and is not a zarr store; choose another --out") from None
        return None
    except json.JSONDecodeError:
        if overwrite:
            return None
        raise metadata_damage(out) from None




def run_cache_features(cfg: CacheConfig) -> dict[str, Any]:
    """Run the frozen encoder over the dataset into `cfg.out` (resumable, see module doc) -> summary dict."""
    from adaslot.data.coco import collate
    from adaslot.data.datasets import open_dataset
    from adaslot.encoders import build_encoder

    cfg = dataclasses.replace(cfg.validate(), out=normalise_path(cfg.out))
    if "://" not in cfg.out and Path(cfg.out).is_file():
        raise AdaslotError(f"--out {cfg.out} is a file; the store is a folder (e.g. {cfg.out}.zarr)")
    views = cfg.num_views
    t_start = time.time()
    dist = distributed.init(cfg.device)
    device = dist.device
    encoder = build_encoder(cfg.encoder, weights=cfg.encoder_weights, device=device)
    side = cfg.image_size or encoder.image_size
    if side % encoder.patch_size:
        raise AdaslotError(f"--image-size {side} is not a multiple of the patch size {encoder.patch_size}")
    # --strict: a missing image or malformed annotation is refused here; an unreadable image is found by a
    # loader worker, which skips it, and the encoding loop stops at the first skip (a raise inside a worker
    # would come back as a multi-line wrapped traceback).
    # the image list alone: the annotations (most of COCO train's 448 MB json) are not needed here
    dataset = open_dataset(cfg.data, side, views=views, antialias=cfg.antialias, annotations=False)
    if cfg.decoder != "pil":
        if not hasattr(dataset, "decoder"):
            raise AdaslotError(f"--decoder {cfg.decoder} reads COCO-format image folders; --dataset "
                               f"{cfg.data.dataset} is decoded by its own reader (use --decoder pil)")
        dataset.decoder = cfg.decoder
        # on a GPU, nvJPEG decodes in this process from the bytes the workers read (data/decode.py)
        dataset.decode_on_device = cfg.decoder == "torchvision" and device.type == "cuda"
    n = len(dataset)
    tokens, dim = encoder.num_tokens(side), encoder.embed_dim

    # Rank 0 creates or validates the store and lists the missing shards; the others wait, then get its
    # verdict (or its error). One list for all ranks: read by each rank, it could already include flags
    # written by a faster rank.
    import zarr

    verdict: Any = None
    if dist.is_main:
        try:
            settings = store_settings(cfg, encoder, dataset, side, views)
            source = {"images": str(Path(dataset.images_dir).resolve()),
                      "annotations": str(Path(dataset.annotation_file).resolve()),
                      "dataset": cfg.data.dataset,
                      "encoder_weights": (str(Path(cfg.encoder_weights).resolve()) if cfg.encoder_weights
                                          else None),
                      "batch_size": cfg.batch_size}  # kernels may depend on it: a repair uses the same
            ids = np.asarray(dataset.image_ids, np.int64)
            if cfg.repair:
                from adaslot.store.repair import repair_prepare

                repair_prepare(cfg, settings, ids, views, tokens, dim, source)
            if _prepare_store(cfg, settings, ids, views, tokens, dim, source):
                verdict = ("complete", [])
            else:
                _remove_partial_files(cfg.out)  # rank 0 only, before any rank writes
                group: Any = zarr.open_group(cfg.out, mode="r")  # zarr types a member as Array | Group
                status = np.asarray(group["status"][:])
                done = shard_done_mask(status, cfg.shard_samples)
                verdict = ("ready", [k for k in range(done.size) if not done[k]])
        except AdaslotError as e:
            verdict = ("error", str(e))
    kind, payload = cast(tuple[str, Any], distributed.broadcast_object(verdict))
    if kind == "error":
        raise AdaslotError(payload)
    if kind == "complete":
        if dist.is_main:
            print(f"{cfg.out} is already complete; nothing to do (use --overwrite to recompute)")
        return {"already_complete": True, "out": cfg.out}

    root = zarr.open_group(cfg.out, mode="r+")
    s = cfg.shard_samples
    missing: list[int] = payload
    # Round-robin over the *missing* shards: after a partial run the ranks still get equal work (a rank idle
    # at the final barrier for long would hit the process-group timeout).
    mine = missing[dist.rank::dist.world_size]
    written, _ = _encode_shards(cfg, root, encoder, dataset, mine, views, side, tokens, dim, device, dist,
                                collate)
    distributed.barrier()

    summary: dict[str, Any] = {}
    error: str | None = None
    if dist.is_main:
        try:
            summary = _finalize(cfg, root, dataset, n, s, time.time() - t_start, written * dist.world_size)
            summary["shards_this_run"] = len(missing)
        except AdaslotError as e:
            error = str(e)
    error = cast(str | None, distributed.broadcast_object(error))
    if dist.enabled:
        distributed.cleanup()
    if error:
        raise AdaslotError(error)
    return summary


def _encode_shards(cfg: CacheConfig, root: Any, encoder: Any, dataset: Any, shards: list[int], views: int,
                   side: int, tokens: int, dim: int, device: torch.device, dist: Any, collate: Any
                   ) -> tuple[int, int]:
    """Encode the given shards (in order) and hand each finished one to the writer thread."""
    n, s, bs = len(dataset), cfg.shard_samples, cfg.batch_size
    bounds = {k: (k * s, min((k + 1) * s, n)) for k in shards}
    # Batches start at each shard's first row and never cross a shard: the bytes of a shard do not depend
    # on which other shards this run encodes (resume, ranks) even if the kernels depend on the batch size.
    spans = [bounds[k] for k in shards]
    batches = [list(range(i, min(i + bs, b))) for a, b in spans for i in range(a, b, bs)]
    total = sum(b - a for a, b in bounds.values())
    if not batches:
        return 0, 0
    on_cuda = device.type == "cuda"
    workers = resolve_workers(cfg.workers)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate, pin_memory=on_cuda,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
    writer = ShardWriter(root, cfg.out)
    open_shards: dict[int, dict[str, Any]] = {}
    counts = {"written": 0, "skipped": 0}

    def finish(pending: tuple[int, np.ndarray, list[dict[str, Any]], Any, Any]) -> None:
        """Copy one encoded batch into its shard buffer; hand the shard to the writer when it is full."""
        k, idx, skips, host, event = pending
        if event is not None:
            event.synchronize()  # the async device->host copy of this batch has landed
        cur = open_shards[k]
        a = cur["a"]
        if len(idx):
            cur["feats"][idx - a] = host.numpy()
            cur["status"][idx - a] = STATUS_OK
        for sk in skips:
            cur["status"][int(sk["index"]) - a] = status_code(sk["reason"])
        cur["left"] -= len(idx) + len(skips)
        counts["written"] += len(idx)
        counts["skipped"] += len(skips)
        if cur["left"] == 0:
            del open_shards[k]
            writer.submit(k, cur["a"], cur["b"], cur["feats"], cur["status"])

    label = "caching" if dist.world_size == 1 else f"caching (rank 0 of {dist.world_size})"
    progress = progress_bar(label, cfg.progress and dist.is_main, unit="img")
    pending = None
    try:
        with progress:
            task = progress.add_task("cache", total=total)
            for batch in loader:
                if "decoded" in batch:  # --decoder torchvision on a GPU: decode and transform here
                    batch = finish_on_device(batch, side, cfg.antialias, True, views, dataset.exif, device)
                new_skips = dataset.record(batch)
                if cfg.data.strict and new_skips:  # the shard is not written: the store stays incomplete
                    raise new_skips[0].strict_error()
                idx = batch["index"].numpy()
                rows = idx.tolist() + [int(sk["index"]) for sk in batch["skipped"]]
                k = rows[0] // s
                if k not in open_shards:
                    a, b = bounds[k]
                    open_shards[k] = {"a": a, "b": b, "left": b - a,
                                      "feats": np.zeros((b - a, views, tokens, dim), np.float16),
                                      "status": np.zeros(b - a, np.uint8)}
                host = event = None
                if len(idx):
                    x = batch["image"].to(device, non_blocking=True).reshape(-1, 3, side, side)
                    with autocast(cfg.precision, device):
                        f = encoder(x)
                    f = f.reshape(len(idx), views, tokens, dim).to(torch.float16)
                    if on_cuda:  # async copy into pinned memory; the next batch is queued before we wait
                        host = torch.empty(f.shape, dtype=f.dtype, pin_memory=True)
                        host.copy_(f, non_blocking=True)
                        event = torch.cuda.Event()  # type: ignore[no-untyped-call]  # unannotated in torch
                        event.record()
                    else:
                        host = f
                if pending is not None:
                    finish(pending)
                pending = (k, idx, batch["skipped"], host, event)
                progress.update(task, advance=len(rows))
            if pending is not None:
                finish(pending)
    finally:
        writer.close()
    return counts["written"], counts["skipped"]


def _remove_partial_files(out: str) -> None:
    """zarr's local store writes `*.partial` then renames; a SIGKILL can leave one behind: remove it."""
    if "://" in out or not Path(out).is_dir():
        return
    for f in Path(out).rglob("*.partial"):
        f.unlink(missing_ok=True)


def _finalize(cfg: CacheConfig, root: Any, dataset: Any, n: int, s: int, seconds: float, approx_written: int
              ) -> dict[str, Any]:
    """Rank 0, after all ranks: check every shard is written, mark the store complete, print the summary."""
    from collections import Counter

    status = np.asarray(root["status"][:])
    done = shard_done_mask(status, s)
    if not done.all():
        raise AdaslotError(f"{cfg.out}: {int((done == 0).sum())} shards are still missing after this run "
                           f"(did a rank fail?); rerun the same command to finish them")
    ids = np.asarray(root["image_ids"][:])
    reasons = Counter(STATUS_CODES.get(int(c), "other") for c in status[status >= 2])
    missing = root.attrs["dataset"].get("missing", [])
    if missing:
        reasons["missing"] += len(missing)
    skipped_list = [{"image_id": int(ids[i]), "reason": STATUS_CODES.get(int(status[i]), "other")}
                    for i in np.flatnonzero(status >= 2)]
    summary = {
        "out": cfg.out,
        "images_written": int((status == STATUS_OK).sum()),
        "skipped": int(sum(reasons.values())),
        "skipped_by_reason": dict(reasons),
        "seconds_this_run": round(seconds, 2),
    }
    size = size_on_disk(cfg.out)
    if size is not None:
        summary["size_bytes"] = size
    root.attrs.update({"complete": True, "summary": summary, "skipped_images": skipped_list})
    if cfg.progress:
        _print_summary(summary, approx_written, seconds)
    return summary


def _print_summary(summary: dict[str, Any], encoded_now: int, seconds: float) -> None:
    from rich.console import Console

    reasons = ", ".join(f"{v} {k}" for k, v in sorted(summary["skipped_by_reason"].items())) or "none"
    size = f"{summary['size_bytes'] / 2**30:.2f} GiB" if "size_bytes" in summary else "n/a (remote store)"
    rate = encoded_now / seconds if seconds > 0 else 0.0
    Console().print(
        f"[bold]cache complete[/]: {summary['out']}\n"
        f"  images written  {summary['images_written']}\n"
        f"  skipped         {summary['skipped']} ({reasons})\n"
        f"  size on disk    {size}\n"
        f"  time            {seconds:.1f} s this run (~{rate:.1f} images/s incl. start-up)"
    )
