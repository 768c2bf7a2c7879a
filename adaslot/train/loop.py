"""`adaslot train`: set-up, then the loop (schedule, batch, step, log, validate, checkpoint), top to bottom.

Resume: rerunning the same command continues from the newest checkpoint in OUT/checkpoints (model,
optimiser, step, RNG and noise generator, loader position), so the loss sequence matches an uninterrupted run.
DDP: under torchrun each rank takes its slice of every global batch and of its noise; rank 0 writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaslot import distributed, faults
from adaslot.checkpoint import (
    capture_rng,
    checkpoint_path,
    kept_note,
    load_checkpoint,
    make_payload,
    restore_rng,
    resume_point,
    rotate_checkpoints,
    save_checkpoint,
    update_last,
    warm_start,
)
from adaslot.config import TrainConfig
from adaslot.device import set_matmul_precision
from adaslot.errors import AdaslotError
from adaslot.files import write_json
from adaslot.progress import progress_bar
from adaslot.schedules import get_schedule
from adaslot.train.inputs import build_source
from adaslot.train.resume import changed_settings, check_warmstart_features, resolve_model_config
from adaslot.train.runlog import MetricsLog
from adaslot.train.step import NoiseSampler, NonFiniteError, TrainForward, optimisation_step
from adaslot.train.validate import Validator


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in cfg.out; returns {"step", "loss", "checkpoint", "run_dir", "rank"}."""
    from adaslot.model import AdaSlot

    # ---- settings, checked before anything is built or written
    cfg = cfg.validate().resolved()
    schedule = get_schedule(cfg.lr_schedule)
    set_matmul_precision(cfg.precision)
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise AdaslotError("--wandb needs the wandb package: pip install 'adaslot[wandb]'") from None
    dist = distributed.init(cfg.device)
    device = dist.device
    if cfg.batch_size % dist.world_size:
        raise AdaslotError(f"--batch-size {cfg.batch_size} does not split over {dist.world_size} ranks")
    local_batch = cfg.batch_size // dist.world_size
    rows = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)  # this rank's part of a global batch
    run_dir, ckpt_dir = Path(cfg.out), Path(cfg.out) / "checkpoints"

    # ---- resume point: the newest readable checkpoint of this run folder, if any
    resume_path, resume = resume_point(ckpt_dir, dist.is_main)
    faults.note(kept=lambda: kept_note(ckpt_dir))  # what an I/O fault leaves, for its one-line error
    if resume is not None:
        diffs = changed_settings(resume.get("train_config", {}), cfg)
        if diffs:
            raise AdaslotError(f"{cfg.out} holds a run with other settings ({'; '.join(diffs[:3])}); rerun "
                               "with its settings to resume, or use a new --out")

    # ---- input (features [b, T, D] float32 on `device`), model (same init on every rank), optimiser, noise
    source = build_source(cfg, dist, local_batch)
    model_cfg = resolve_model_config(cfg, source.feature_dim, source.num_tokens)
    if cfg.selection_warmup and not (model_cfg.adaptive and model_cfg.selector == "quality"):
        raise AdaslotError("--selection-warmup is for the quality selector: --stage 2 --model "
                           "selector=quality")
    torch.manual_seed(cfg.seed)
    model = AdaSlot(model_cfg).to(device)
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        step = int(resume["step"])
    elif cfg.stage == 2 and not cfg.warmstart and dist.is_main:
        print("note: stage 2 without --warmstart trains from scratch (the reference warm-starts from "
              "stage 1)")
    if resume is None and cfg.warmstart:
        ws = load_checkpoint(cfg.warmstart)
        check_warmstart_features(ws, source.contract, source.encoder_name, cfg.warmstart)
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

    # ---- run folder: config.json, metrics.jsonl, checkpoints/
    resolved = {"train": cfg.to_dict(), "model": model_cfg.to_dict(), "encoder": source.encoder_name,
                "feature_contract": source.contract, "world_size": dist.world_size}
    if dist.is_main:
        write_json(run_dir / "config.json", resolved)
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
    last_ckpt, last_loss = resume_path, float("nan")
    bar = progress_bar("train", cfg.progress and dist.is_main, unit="step",
                       fields="loss {task.fields[loss]} lr {task.fields[lr]} kept {task.fields[kept]}")
    task = bar.add_task("train", total=cfg.num_iters, completed=step, resumed=step, loss="-", lr="-",
                        kept="-")
    t_last, steps_since = time.perf_counter(), 0

    # ---- the loop
    with bar:
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
                    forward, model, optimizer, features, slot_noise, gumbel, cfg.grad_clip,
                    select=step >= cfg.selection_warmup)
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
                kept_txt = f"{kept_v * model_cfg.num_slots:.1f}" if model_cfg.adaptive else "-"
                bar.update(task, completed=step, loss=f"{loss_v:.4f}", lr=f"{lr:.2e}", kept=kept_txt)
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
