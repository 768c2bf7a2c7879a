"""`adaslot train`: the training loop, top to bottom (setup, data, step, log, validate, checkpoint).

Two inputs, one model and one loss:
  --from-cache STORE   features [B, T, D] streamed from a feature store (adaslot.store.loader)
  online images        COCO images -> train transform (random flip) -> frozen encoder -> features [B, T, D]
Resume: rerunning the same command continues from the newest checkpoint in OUT/checkpoints (model,
optimiser, step, RNG and noise generator, loader position), so the loss sequence matches an uninterrupted run.
DDP: under torchrun each rank takes its slice of every global batch and of its noise; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaslot import distributed
from adaslot.checkpoint import (
    capture_rng,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    make_payload,
    restore_rng,
    rotate_checkpoints,
    save_checkpoint,
    update_last,
    warm_start,
)
from adaslot.config import ModelConfig, TrainConfig, get_preset, model_config_for
from adaslot.errors import AdaslotError
from adaslot.losses import reconstruction_loss, sparsity_loss
from adaslot.schedules import get_schedule

# TrainConfig fields that may change between a run and its resumption (they do not change the math).
RESUMABLE_CHANGES = {"num_iters", "val_every", "val_root", "val_max_images", "ckpt_every", "keep_last",
                     "log_every", "device", "workers", "wandb", "wandb_project", "compile", "cache_in_memory",
                     "strict"}
PRECISIONS = ("fp32", "tf32", "bf16")


# ---- the step: shared by cache and online mode, single process and DDP ----

class NoiseSampler:
    """All randomness of a forward pass (slot init noise, Gumbel noise) from one seeded generator.

    Every rank draws the noise of the whole global batch and keeps its slice, so a DDP run computes exactly
    what one process computes on the same global batch; the generator state is saved for exact resume.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.device = device

    def sample(self, global_batch: int, cfg: ModelConfig,
               rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> slot noise [b, K, S] ~ N(0, I), Gumbel noise [b, K, 2] (stage 2) or None; b = rows in `rows`."""
        k, s = cfg.num_slots, cfg.slot_dim
        slot_noise = torch.randn(global_batch, k, s, generator=self.gen, device=self.device)[rows]
        gumbel = None
        if cfg.adaptive:
            expo = torch.empty(global_batch, k, 2, device=self.device).exponential_(generator=self.gen)
            gumbel = -expo[rows].log()
        return slot_noise, gumbel

    def state_dict(self) -> torch.Tensor:
        return self.gen.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.gen.set_state(state.cpu())


class TrainForward(nn.Module):
    """model + loss as one module (what DDP / torch.compile wrap).

    features [B, T, D], slot_noise [B, K, S], gumbel [B, K, 2] | None -> (loss, mse, kept fraction [scalar]).
    S0 comes from `SlotAttention.init_from_noise` with the noise passed in (so ranks can slice one draw).
    """

    def __init__(self, model: nn.Module, sparsity_weight: float, precision: str) -> None:
        super().__init__()
        self.model = model
        self.sparsity_weight = sparsity_weight
        self.precision = precision

    def forward(self, features: torch.Tensor, slot_noise: torch.Tensor,
                gumbel: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slots_init = self.model.slot_attention.init_from_noise(slot_noise)
        with autocast(self.precision, features.device):
            out = self.model(features, slots_init=slots_init, gumbel_noise=gumbel, keep_mode="gumbel")
        mse = reconstruction_loss(out.recon.float(), features)
        if out.keep is None:
            return mse, mse.detach(), torch.ones((), device=features.device)
        kept = sparsity_loss(out.keep.float())
        return mse + self.sparsity_weight * kept, mse.detach(), kept.detach()


class NonFiniteError(Exception):
    """A NaN/inf loss or gradient norm; raised before the optimiser touches the parameters."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


def optimisation_step(forward: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
                      features: torch.Tensor, slot_noise: torch.Tensor, gumbel: torch.Tensor | None,
                      grad_clip: float) -> tuple[float, float, float, float]:
    """One update: loss, backward, clip, Adam -> (loss, mse, kept fraction, grad norm) as floats.

    features [b, T, D]; the loss values are averaged over DDP ranks, so every rank takes the same NaN
    decision. Raises NonFiniteError (parameters untouched) on a NaN/inf loss or gradient norm.
    """
    loss, mse, kept = forward(features, slot_noise, gumbel)
    stats = distributed.all_reduce_mean(torch.stack([loss.detach(), mse, kept]).float())
    loss_v, mse_v, kept_v = stats.tolist()
    if not math.isfinite(loss_v):
        raise NonFiniteError("loss", loss_v)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # grad_clip <= 0: no clipping (the norm is still measured for the log and the NaN check).
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                               grad_clip if grad_clip > 0 else float("inf")).item()
    if not math.isfinite(grad_norm):
        raise NonFiniteError("gradient norm", grad_norm)
    optimizer.step()
    return loss_v, mse_v, kept_v, grad_norm


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for --precision bf16; nothing otherwise (tf32 is a global matmul setting)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_matmul_precision(precision: str) -> None:
    """fp32: exact float32 matmuls (the reference); tf32 and bf16 allow TF32 on Ampere+ GPUs."""
    if precision not in PRECISIONS:
        raise AdaslotError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    fast = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.set_float32_matmul_precision("high" if fast else "highest")


# ---- inputs: features [b, T, D] float32 on the device, this rank's rows of each global batch ----

class SampleStream:
    """The online sample order: an endless stream of (dataset index, flip) over epochs.

    Epoch e is a permutation of the N images plus one flip bit each (p = 0.5), both from a generator seeded
    with (seed, e); global batch j is stream positions [j B, (j + 1) B) and rank r takes its slice. The
    position `consumed` is the whole state, so resume (and any rank count) reproduces the same stream.
    """

    def __init__(self, n: int, seed: int, global_batch: int, rows: slice, consumed: int = 0) -> None:
        self.n, self.seed, self.global_batch, self.rows, self.consumed = n, seed, global_batch, rows, consumed
        self._epoch, self._perm, self._flip = -1, torch.empty(0), torch.empty(0)

    def _at(self, pos: int) -> tuple[int, bool]:
        epoch, i = divmod(pos, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm, self._flip = epoch, torch.randperm(self.n, generator=g), \
                torch.rand(self.n, generator=g) < 0.5
        return int(self._perm[i]), bool(self._flip[i])

    def __iter__(self):
        start = self.consumed
        while True:
            batch = [self._at(p) for p in range(start, start + self.global_batch)][self.rows]
            start += self.global_batch
            yield batch


class _FlippedViews(torch.utils.data.Dataset):
    """dataset[(i, flip)] = dataset[i], image horizontally flipped when flip (SPEC train transform)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> dict[str, Any]:
        from adaslot.data.transforms import hflip

        index, flip = key
        item = self.dataset[index]
        if item["ok"] and flip:
            item["image"] = hflip(item["image"])
        return item


class OnlineSource:
    """Images -> SPEC train transform (resize, clamp, center crop, random flip) -> frozen encoder."""

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, local_batch: int) -> None:
        from adaslot.data.coco import CocoDataset, collate
        from adaslot.encoders import build_encoder

        if cfg.images or cfg.annotations:
            if not (cfg.images and cfg.annotations):
                raise AdaslotError("--images and --annotations go together")
        elif not (cfg.dataset == "coco" and cfg.root):
            raise AdaslotError("give one input: --from-cache STORE, --dataset coco --root R, "
                               "or --images DIR --annotations FILE")
        self.device = dist.device
        self.encoder = build_encoder(cfg.encoder or get_preset(cfg.preset).encoder, cfg.encoder_weights,
                                     device=self.device)
        side = cfg.image_size or self.encoder.image_size
        if cfg.images:
            self.dataset = CocoDataset(cfg.images, cfg.annotations, size=side, strict=cfg.strict)
        else:
            self.dataset = CocoDataset.from_root(cfg.root, "train", size=side, strict=cfg.strict)
        self.dataset.strict = False  # as in cache-features: workers skip, next_batch stops on the first skip
        if len(self.dataset) == 0:
            raise AdaslotError("the training set has no usable images")
        self.feature_dim, self.num_tokens = self.encoder.embed_dim, self.encoder.num_tokens(side)
        self.encoder_name, self.contract = self.encoder.name, self.encoder.contract(side)
        self.cfg, self.dist, self.collate = cfg, dist, collate
        rows = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)
        self.stream = SampleStream(len(self.dataset), cfg.seed, cfg.batch_size, rows)
        self._iter = None

    def _start(self) -> None:
        loader = torch.utils.data.DataLoader(
            _FlippedViews(self.dataset), batch_sampler=self.stream, num_workers=self.cfg.workers,
            collate_fn=self.collate, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if self.cfg.workers else None,
        )
        self._iter = iter(loader)

    def next_batch(self) -> torch.Tensor:
        """-> features [b, T, D] float32 (b < local batch only if an image could not be decoded)."""
        if self._iter is None:
            self._start()
        empty = 0  # samples drawn since the last usable one
        while True:
            batch = next(self._iter)
            self.stream.consumed += self.cfg.batch_size
            new_skips = self.dataset.record(batch)
            if self.cfg.strict and new_skips:
                raise new_skips[0].strict_error()
            if len(batch["index"]):
                return self.encoder(batch["image"].to(self.device, non_blocking=True)).float()
            empty += self.cfg.batch_size
            if empty > 2 * len(self.dataset):  # two epochs without one readable image: it would loop forever
                raise AdaslotError("no training image could be read (skip reasons: "
                                   f"{self.dataset.skips.summary()})")

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.stream.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.consumed = int(state["consumed"])
        self._iter = None

    def close(self) -> None:
        self._iter = None


class CacheSource:
    """Features streamed from a feature store (adaslot.store.loader); one random stored view per sample."""

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, local_batch: int) -> None:
        from adaslot.store import open_store
        from adaslot.store.loader import FeatureLoader

        store = open_store(cfg.from_cache)
        # Refuses (one line) a foreign, incomplete, val-split or other-encoder store.
        store.check_compatible(encoder=cfg.encoder, split="train", require_complete=True)
        if store.num_views == 1 and dist.is_main:
            print(f"note: {cfg.from_cache} stores one view per image, so training sees no flips "
                  "(cache the train split with 2 views to match SPEC's augmentation)")
        self.device = dist.device
        self.loader = FeatureLoader(store, local_batch, seed=cfg.seed, in_memory=cfg.cache_in_memory,
                                    rank=dist.rank, world_size=dist.world_size,
                                    pin_memory=self.device.type == "cuda")
        self.feature_dim, self.num_tokens = store.feature_dim, store.num_tokens
        self.contract = dict(store.contract)
        self.encoder_name = self.contract.get("encoder", "unknown")

    def next_batch(self) -> torch.Tensor:
        """-> features [b, T, D] float32 (stored as float16)."""
        feats, _rows = next(self.loader)
        return feats.to(self.device, non_blocking=True).float()

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()


def build_source(cfg: TrainConfig, dist: distributed.DistInfo, local_batch: int) -> Any:
    """The input of this run: a feature store (`--from-cache`) or images through the frozen encoder."""
    online = cfg.dataset or cfg.root or cfg.images or cfg.annotations
    if cfg.from_cache and online:
        raise AdaslotError("give one input: --from-cache STORE, or an online dataset (--dataset/--root or "
                           "--images/--annotations), not both")
    if cfg.from_cache:
        return CacheSource(cfg, dist, local_batch)
    return OnlineSource(cfg, dist, local_batch)


# ---- config resolution ----

def resolve_model_config(cfg: TrainConfig, feature_dim: int, num_tokens: int) -> ModelConfig:
    """Preset + stage defaults, then --num-slots / --model overrides; D and T always come from the input."""
    overrides = dict(cfg.model_overrides)
    overrides.update(feature_dim=feature_dim, num_tokens=num_tokens)
    if cfg.num_slots is not None:
        overrides["num_slots"] = cfg.num_slots
    try:
        mcfg = model_config_for(cfg.preset, cfg.stage, **overrides)
    except TypeError as e:
        raise AdaslotError(f"bad --model override: {e}") from None
    # Sizes and scales must be positive: a 0 would only surface later as a division by zero deep inside.
    for f in dataclasses.fields(mcfg):
        v = getattr(mcfg, f.name)
        vals = v if isinstance(v, tuple) else (v,)
        if any(isinstance(x, (int, float)) and not isinstance(x, bool) and not x > 0 for x in vals):
            flag = "--num-slots" if f.name == "num_slots" else f"--model {f.name}"
            raise AdaslotError(f"{flag} must be positive, got {v}")
    return mcfg


def check_flags(cfg: TrainConfig) -> None:
    """Refuse out-of-range numeric flags before anything is built or written (one line each)."""
    at_least = {"ckpt_every": 1, "log_every": 1, "lr_half_life": 1, "val_max_images": 1, "warmup_steps": 0,
                "keep_last": 0, "workers": 0, "val_every": 0}
    for name, low in at_least.items():
        if getattr(cfg, name) < low:
            raise AdaslotError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.batch_size < 1:
        raise AdaslotError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not cfg.lr > 0:
        raise AdaslotError(f"--lr must be positive, got {cfg.lr}")
    if not (cfg.grad_clip >= 0 and cfg.sparsity_weight >= 0):
        raise AdaslotError(f"--grad-clip and --sparsity-weight must be >= 0, got {cfg.grad_clip} and "
                           f"{cfg.sparsity_weight}")


def check_resume(saved: dict[str, Any], cfg: TrainConfig, out: str) -> None:
    """Refuse to resume a run folder written by a different command (other than RESUMABLE_CHANGES).

    A setting missing from `saved` (a run from an older adaslot) counts as its default."""
    defaults = TrainConfig().to_dict()
    diffs = [
        f"--{k.replace('_', '-')} {saved.get(k, defaults[k])!r} -> {v!r}"
        for k, v in cfg.to_dict().items()
        if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != v
    ]
    if diffs:
        raise AdaslotError(
            f"{out} holds a run with other settings ({'; '.join(diffs[:3])}); rerun with its settings to "
            "resume, or use a new --out"
        )


def check_same_features(payload: dict[str, Any], source: Any, what: str) -> None:
    """Refuse a checkpoint trained on other features (encoder, weights, tap point, resolution...)."""
    from adaslot.store import IDENTITY_KEYS

    theirs = dict(payload.get("feature_contract") or {"encoder": payload.get("encoder")})
    mine = dict(source.contract or {"encoder": source.encoder_name})
    for key in IDENTITY_KEYS:
        if key in theirs and key in mine and json.dumps(theirs[key]) != json.dumps(mine[key]):
            raise AdaslotError(f"--warmstart {what} was trained on other features: {key} is "
                               f"{str(theirs[key])[:40]!r} there, {str(mine[key])[:40]!r} here")


# ---- logging ----

class MetricsLog:
    """metrics.jsonl (one JSON object per logged step) + optional wandb; rank 0 only."""

    def __init__(self, path: Path, resume_step: int, use_wandb: bool, wandb_project: str,
                 config: dict[str, Any], enabled: bool) -> None:
        self.path, self.enabled, self.wandb = path, enabled, None
        if not enabled:
            return
        # Lines after the resumed step came from the killed run's lost future: drop them.
        if path.exists():
            lines = path.read_text().splitlines()
            keep = [ln for ln in lines if ln and json.loads(ln)["step"] <= resume_step]
            path.write_text("".join(ln + "\n" for ln in keep))
        self.file = path.open("a")
        if use_wandb:
            import wandb

            self.wandb = wandb
            # One wandb run per run folder, so a resumed run continues its curves.
            run_id = hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:16]
            wandb.init(project=wandb_project, name=path.parent.name, id=run_id, config=config, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.wandb is not None:
                self.wandb.finish()


def _progress(enabled: bool, total: int, start: int):
    """A rich progress bar with step, loss, lr, kept slots, steps/s and ETA (or a no-op)."""
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]} lr {task.fields[lr]} kept {task.fields[kept]} "
                   "{task.fields[speed]} it/s"),
        TimeRemainingColumn(),
    )
    task = bar.add_task("train", total=total, completed=start, loss="-", lr="-", kept="-", speed="-")
    return bar, task


# ---- the loop ----

def train(cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in cfg.out; returns {"step", "loss", "checkpoint", "run_dir"}."""
    from adaslot.model import AdaSlot

    cfg = cfg.resolved()
    if not cfg.out:
        raise AdaslotError("--out is required (the run folder, e.g. cache/runs/NAME)")
    if cfg.stage not in (1, 2):
        raise AdaslotError(f"--stage must be 1 or 2, got {cfg.stage}")
    if cfg.num_iters is None or cfg.num_iters < 1:
        raise AdaslotError(f"--num-iters must be >= 1, got {cfg.num_iters}")
    check_flags(cfg)
    get_preset(cfg.preset)
    schedule = get_schedule(cfg.lr_schedule)
    set_matmul_precision(cfg.precision)
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise AdaslotError("--wandb needs the wandb package: pip install 'adaslot[wandb]'") from None
    if cfg.warmstart and cfg.stage != 2:
        raise AdaslotError("--warmstart is for stage 2 (it loads a stage-1 checkpoint)")

    dist = distributed.init(cfg.device)
    device = dist.device
    if cfg.batch_size % dist.world_size:
        raise AdaslotError(f"--batch-size {cfg.batch_size} does not split over {dist.world_size} ranks")
    local_batch = cfg.batch_size // dist.world_size
    rows = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)  # this rank's part of a global batch
    run_dir = Path(cfg.out)
    ckpt_dir = run_dir / "checkpoints"

    # Resume point: the newest complete checkpoint of this run folder, if any.
    resume_path = latest_checkpoint(ckpt_dir)
    resume = load_checkpoint(resume_path) if resume_path else None
    if resume is not None:
        check_resume(resume.get("train_config", {}), cfg, cfg.out)

    # Input: features [b, T, D] float32 on `device`, this rank's rows of each global batch.
    source = build_source(cfg, dist, local_batch)
    model_cfg = resolve_model_config(cfg, source.feature_dim, source.num_tokens)

    # Model (same init on every rank), optimiser, noise.
    torch.manual_seed(cfg.seed)
    model = AdaSlot(model_cfg).to(device)
    model.sparse_decoding = not cfg.dense_decoding
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        step = int(resume["step"])
    elif cfg.stage == 2 and not cfg.warmstart and dist.is_main:
        print("note: stage 2 without --warmstart trains from scratch (SPEC warm-starts from stage 1)")
    if resume is None and cfg.warmstart:
        ws = load_checkpoint(cfg.warmstart)
        check_same_features(ws, source, cfg.warmstart)
        warm_start(model, ws, model_cfg, cfg.warmstart)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    noise = NoiseSampler(cfg.seed, device)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        restore_rng(resume["rng"])
        try:
            noise.load_state_dict(resume["rng"]["noise"])
        except (RuntimeError, ValueError):  # a CPU generator state cannot seed a CUDA generator (or back)
            noise.gen.manual_seed(cfg.seed * 1_000_003 + step)
            if dist.is_main:
                print("note: resumed on another device type; the slot/Gumbel noise stream is reseeded")
        source.load_state_dict(resume["loader"])
    forward: nn.Module = TrainForward(model, cfg.sparsity_weight, cfg.precision)
    if dist.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward)

    resolved = {"train": cfg.to_dict(), "model": model_cfg.to_dict(), "encoder": source.encoder_name,
                "feature_contract": source.contract, "world_size": dist.world_size}
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    log = MetricsLog(run_dir / "metrics.jsonl", step, cfg.wandb, cfg.wandb_project, resolved, dist.is_main)

    def save(at_step: int) -> Path:
        """Rank 0 writes checkpoint `at_step` atomically and prunes old ones; all ranks wait for it."""
        path = checkpoint_path(ckpt_dir, at_step)
        if dist.is_main:
            rng = capture_rng()
            rng["noise"] = noise.state_dict()
            save_checkpoint(path, make_payload(
                stage=cfg.stage, model_config=model_cfg, encoder=source.encoder_name,
                feature_contract=source.contract, model_state=model.state_dict(),
                optimizer=optimizer.state_dict(), step=at_step, train_config=cfg.to_dict(), rng=rng,
                loader=source.state_dict(), world_size=dist.world_size,
            ))
            update_last(ckpt_dir, path)
            rotate_checkpoints(ckpt_dir, cfg.keep_last)
        distributed.barrier()
        return path

    validator = Validator(cfg, source, device)
    if dist.is_main and resume is not None:
        print(f"resuming {cfg.out} from step {step} ({resume_path.name})")
    last_ckpt = resume_path
    last_loss = float("nan")
    bar, task = _progress(progress and dist.is_main, cfg.num_iters, step)
    t_last, steps_since = time.perf_counter(), 0
    with bar or contextlib.nullcontext():
        while step < cfg.num_iters:
            lr = schedule(step, base=cfg.lr, warmup=cfg.warmup_steps, half_life=cfg.lr_half_life)
            for group in optimizer.param_groups:
                group["lr"] = lr
            features = source.next_batch()  # [b, T, D]
            slot_noise, gumbel = noise.sample(cfg.batch_size, model_cfg, rows)
            b = features.shape[0]  # < local batch only when an online image could not be decoded
            slot_noise, gumbel = slot_noise[:b], None if gumbel is None else gumbel[:b]
            try:
                loss_v, mse_v, kept_v, grad_norm = optimisation_step(
                    forward, model, optimizer, features, slot_noise, gumbel, cfg.grad_clip)
            except NonFiniteError as e:
                raise AdaslotError(_nan_message(e.what, e.value, step + 1, last_ckpt)) from None
            step += 1
            steps_since += 1
            last_loss = loss_v

            if step % cfg.log_every == 0 or step == cfg.num_iters:
                now = time.perf_counter()
                speed = steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                record = {"step": step, "loss": loss_v, "mse": mse_v, "lr": lr, "grad_norm": grad_norm,
                          "steps_per_s": speed}
                if model_cfg.adaptive:
                    record.update(sparsity=kept_v, kept_slots=kept_v * model_cfg.num_slots)
                log.log(record)
                if bar is not None:
                    kept_txt = f"{kept_v * model_cfg.num_slots:.1f}" if model_cfg.adaptive else "-"
                    bar.update(task, completed=step, loss=f"{loss_v:.4f}", lr=f"{lr:.2e}",
                               speed=f"{speed:.2f}", kept=kept_txt)
            if cfg.val_every and step % cfg.val_every == 0:
                if dist.is_main:
                    val = validator(model)
                    log.log({"step": step, **{f"val/{k}": v for k, v in val.items()}})
                distributed.barrier()
            if step % cfg.ckpt_every == 0 or step == cfg.num_iters:
                last_ckpt = save(step)
    log.close()
    if dist.is_main and resume is not None and resume["step"] >= cfg.num_iters:
        print(f"{cfg.out} is already complete at step {resume['step']} (raise --num-iters to continue)")
    source.close()
    if dist.enabled:
        distributed.cleanup()
    return {"step": step, "loss": last_loss, "checkpoint": str(last_ckpt) if last_ckpt else None,
            "run_dir": str(run_dir), "rank": dist.rank}


def _nan_message(what: str, value: float, step: int, last_ckpt: Path | None) -> str:
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    return (f"{what} is {value} at step {step}: training stopped, {where}; rerun the same command to resume "
            "from it (a lower --lr or --precision fp32 may help)")


class Validator:
    """Periodic validation on the first `val_max_images` val images via `adaslot.evaluate.evaluate_model`
    (protocol `adaslot`, deterministic keep, seeded slot noise; the global RNG is left untouched)."""

    def __init__(self, cfg: TrainConfig, source: Any, device: torch.device) -> None:
        self.cfg, self.source, self.device = cfg, source, device
        self.root = cfg.val_root or (cfg.root if cfg.dataset == "coco" else None)
        if cfg.val_every and not self.root:
            raise AdaslotError("--val-every needs val images: pass --val-root R (a COCO root with val2017/)")
        self.dataset = self.encoder = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        from adaslot.config import EvalConfig
        from adaslot.data.coco import CocoDataset
        from adaslot.encoders import build_encoder
        from adaslot.evaluate import evaluate_model

        if self.encoder is None:
            self.encoder = getattr(self.source, "encoder", None) or build_encoder(
                self.source.encoder_name, self.cfg.encoder_weights, device=self.device)
            side = (self.source.contract or {}).get("input_size", [self.encoder.image_size])[0]
            self.dataset = CocoDataset.from_root(self.root, "val", size=side)
        ecfg = EvalConfig(protocols="adaslot", batch_size=16, workers=0, max_images=self.cfg.val_max_images,
                          seed=self.cfg.seed)
        result = evaluate_model(model, self.encoder, self.dataset, ecfg)
        summary = result["protocols"]["adaslot"]
        return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}
