"""One training run as an object: its model, optimiser, noise, log, checkpoints and validation, stepped with
batches it is given.

`run_train()` (loop.py) feeds one Run from its own input; `adaslot sweep` feeds several Runs the same batches
in lockstep (one read of the store for all of them). The batch a Run is given is all it takes from outside, so
a Run computes the same losses either way.

Resume: a Run built on a run folder with checkpoints continues from the newest one (model, optimiser, step,
RNG and noise generator) and moves the input `source` to the position saved with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

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
from adaslot.config import RunSpec, TrainConfig
from adaslot.device import set_matmul_precision
from adaslot.errors import AdaslotError
from adaslot.files import write_json
from adaslot.schedules import get_schedule, ramp_weight
from adaslot.train.resume import changed_settings, check_warmstart_features
from adaslot.train.runlog import MetricsLog
from adaslot.train.step import NoiseSampler, NonFiniteError, TrainForward, optimisation_step
from adaslot.train.validate import Validator


def checked_settings(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """The validated config with stage defaults filled in; raises (one line) what would stop the run later."""
    cfg = cfg.validate().resolved()
    if cfg.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise AdaslotError("--wandb needs the wandb package: pip install 'adaslot[wandb]'") from None
    if cfg.batch_size % world_size:
        raise AdaslotError(f"--batch-size {cfg.batch_size} does not split over {world_size} ranks")
    return cfg


class Run:
    """The state of the run in `cfg.out`; `run.train_step(features [b, T, D])` takes one optimisation step
    and what follows it (log, validation, checkpoint). `source` is the input the batches come from (a
    train.inputs source, possibly shared with other runs): the Run only asks it for its position when it
    writes a checkpoint, and sets that position when it resumes.

    run.step: optimiser steps taken; run.done: step >= cfg.num_iters; run.last_loss, run.last_checkpoint.
    """

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, source: Any) -> None:
        from adaslot.model import AdaSlot

        cfg = checked_settings(cfg, dist.world_size)
        self.cfg, self.dist, self.source = cfg, dist, source
        self.schedule = get_schedule(cfg.lr_schedule)
        set_matmul_precision(cfg.precision)
        local_batch = cfg.batch_size // dist.world_size
        self.rows = slice(dist.rank * local_batch, (dist.rank + 1) * local_batch)  # this rank's part
        self.run_dir, self.ckpt_dir = Path(cfg.out), Path(cfg.out) / "checkpoints"
        device = dist.device

        # ---- resume point: the newest readable checkpoint of this run folder, if any
        resume_path, resume = resume_point(self.ckpt_dir, dist.is_main)
        ckpt_dir = self.ckpt_dir
        faults.note(kept=lambda: kept_note(ckpt_dir))  # what an I/O fault leaves, for its one-line error
        # ---- the run, resolved once (config/run.py); a resumed run must be the one its checkpoint records
        self.spec = spec = RunSpec.resolve(cfg, source.feature_dim, source.num_tokens,
                                           encoder=source.encoder_name, feature_contract=source.contract,
                                           world_size=dist.world_size)
        if resume is not None:
            diffs = changed_settings(RunSpec.from_payload(resume), spec)
            if diffs:
                raise AdaslotError(f"{cfg.out} holds a run with other settings ({'; '.join(diffs[:3])}); "
                                   "rerun with its settings to resume, or use a new --out")

        # ---- model (same init on every rank), optimiser, noise
        self.model_cfg = model_cfg = spec.model
        if cfg.selection_warmup and not (model_cfg.adaptive and model_cfg.selector == "quality"):
            raise AdaslotError("--selection-warmup is for the quality selector: --stage 2 --selector "
                               "quality")
        torch.manual_seed(cfg.seed)
        self.model = model = AdaSlot(model_cfg).to(device)
        self.step = 0
        if resume is not None:
            model.load_state_dict(resume["model"])
            self.step = int(resume["step"])
        elif cfg.stage == 2 and not cfg.warmstart and dist.is_main:
            print("note: stage 2 without --warmstart trains from scratch (the reference warm-starts from "
                  "stage 1)")
        if resume is None and cfg.warmstart:
            ws = load_checkpoint(cfg.warmstart)
            check_warmstart_features(ws, source.contract, source.encoder_name, cfg.warmstart)
            warm_start(model, ws, model_cfg, cfg.warmstart)
        self.optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                          weight_decay=0.0)
        self.noise = NoiseSampler(cfg.seed, device)
        if resume is not None:
            self.optimiser.load_state_dict(resume["optimizer"])
            restore_rng(resume["rng"])
            try:
                self.noise.load_state_dict(resume["rng"]["noise"])
            except (RuntimeError, ValueError):  # a CPU generator state cannot seed a CUDA generator (or back)
                self.noise.gen.manual_seed(cfg.seed * 1_000_003 + self.step)
                if dist.is_main:
                    print("note: resumed on another device type; the slot/Gumbel noise stream is reseeded")
            source.load_state_dict(resume["loader"])
        forward: nn.Module = TrainForward(model, cfg.sparsity_weight, cfg.precision, cfg.quadratic_weight,
                                          cfg.quadratic_bias)
        if dist.enabled:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            forward = cast(nn.Module, torch.compile(forward))
        self.forward = forward

        # ---- run folder: config.json, metrics.jsonl, checkpoints/
        if dist.is_main:
            write_json(RunSpec.file(self.run_dir), spec.to_dict())
        self.log = MetricsLog(self.run_dir / "metrics.jsonl", self.step, cfg.wandb, cfg.wandb_project,
                              spec.to_dict(), dist.is_main)
        self.validator = Validator(cfg, source, device)
        self.resumed_at = int(resume["step"]) if resume is not None else None
        if dist.is_main and resume is not None and resume_path is not None:
            print(f"resuming {cfg.out} from step {self.step} ({resume_path.name})")
        self.last_checkpoint, self.last_loss = resume_path, float("nan")
        self._t_last, self._steps_since, self._busy = time.perf_counter(), 0, 0.0

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.total_steps()

    def train_step(self, features: torch.Tensor) -> dict[str, float]:
        """One update on features [b, T, D] (this rank's rows), then log / validate / checkpoint when due.
        Returns {"loss", "lr", "kept"} (kept: mean kept slots in stage 2, NaN in stage 1)."""
        cfg, model_cfg = self.cfg, self.model_cfg
        t0 = time.perf_counter()
        lr = self.schedule(self.step, base=cfg.lr, warmup=cfg.warmup_steps, half_life=cfg.lr_half_life)
        for group in self.optimiser.param_groups:
            group["lr"] = lr
        slot_noise, gumbel = self.noise.sample(cfg.batch_size, model_cfg, self.rows)
        b = features.shape[0]  # < local batch only when an online image could not be decoded
        slot_noise, gumbel = slot_noise[:b], None if gumbel is None else gumbel[:b]
        scale = ramp_weight(self.step, 1.0, cfg.sparsity_ramp)  # docs/method.md#count-options
        try:
            loss_v, mse_v, kept_v, grad_norm = optimisation_step(
                self.forward, self.model, self.optimiser, features, slot_noise, gumbel, cfg.grad_clip,
                select=self.step >= cfg.selection_warmup, scale=scale)
        except NonFiniteError as e:
            raise AdaslotError(_nan_message(e.what, e.value, self.step + 1, self.last_checkpoint)) from None
        self.step += 1
        self._steps_since += 1
        self._busy += time.perf_counter() - t0
        self.last_loss = loss_v
        step = self.step

        if step % cfg.log_every == 0 or step == cfg.num_iters:
            now = time.perf_counter()
            # steps_per_s: wall clock (input included); step_s: this run's own compute per step (runs that
            # share an input in a sweep share the wall clock, not the compute)
            record = {"step": step, "loss": loss_v, "mse": mse_v, "lr": lr, "grad_norm": grad_norm,
                      "steps_per_s": self._steps_since / max(now - self._t_last, 1e-9),
                      "step_s": self._busy / self._steps_since}
            self._t_last, self._steps_since, self._busy = now, 0, 0.0
            if model_cfg.adaptive:
                record.update(sparsity=kept_v, kept_slots=kept_v * model_cfg.num_slots,
                              sparsity_weight=scale * cfg.sparsity_weight)
            self.log.log(record)
        if cfg.val_every and step % cfg.val_every == 0:
            if self.dist.is_main:
                val = self.validator(self.model)
                self.log.log({"step": step, **{f"val/{k}": v for k, v in val.items()}})
            distributed.barrier()
        if step % cfg.ckpt_every == 0 or step == cfg.num_iters:
            self.last_checkpoint = self.save()
        return {"loss": loss_v, "lr": lr, "kept": kept_v * model_cfg.num_slots if model_cfg.adaptive
                else float("nan")}

    def save(self) -> Path:
        """Rank 0 writes the checkpoint of this step atomically and prunes old ones; all ranks wait for it."""
        cfg, path = self.cfg, checkpoint_path(self.ckpt_dir, self.step)
        if self.dist.is_main:
            rng = capture_rng()
            rng["noise"] = self.noise.state_dict()
            save_checkpoint(path, make_payload(
                stage=cfg.stage, **self.spec.payload(), model_state=self.model.state_dict(),
                optimizer=self.optimiser.state_dict(), step=self.step, rng=rng,
                loader=self.source.state_dict(),
            ))
            update_last(self.ckpt_dir, path)
            rotate_checkpoints(self.ckpt_dir, cfg.keep_last)
        distributed.barrier()
        return path

    def close(self) -> None:
        self.log.close()
        if self.dist.is_main and self.resumed_at is not None and self.resumed_at >= self.cfg.total_steps():
            print(f"{self.cfg.out} is already complete at step {self.resumed_at} (raise --num-iters to "
                  "continue)")


def _nan_message(what: str, value: float, step: int, last_ckpt: Path | None) -> str:
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    return (f"{what} is {value} at step {step}: training stopped, {where}; rerun the same command to resume "
            "from it (a lower --lr or --precision fp32 may help)")
