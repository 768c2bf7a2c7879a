"""`adaslot train`: settings, input, the run (train.run.Run), then the loop: batch, step, progress.

Resume: rerunning the same command continues from the newest checkpoint in OUT/checkpoints (model,
optimiser, step, RNG and noise generator, loader position), so the loss sequence matches an uninterrupted run.
DDP: under torchrun each rank takes its slice of every global batch and of its noise; rank 0 writes.
"""

from __future__ import annotations

from typing import Any

from adaslot import distributed
from adaslot.config import TrainConfig
from adaslot.device import torch_threads
from adaslot.progress import progress_bar
from adaslot.train.inputs import build_source
from adaslot.train.run import Run, checked_settings


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in cfg.out; returns {"step", "loss", "checkpoint", "run_dir", "rank"}.
    With cfg.threads, torch uses that many CPU threads for the run (the caller's number is restored)."""
    with torch_threads(cfg.threads):
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    dist = distributed.init(cfg.device)
    cfg = checked_settings(cfg, dist.world_size)  # before anything is built or written
    source = build_source(cfg, dist, cfg.batch_size // dist.world_size)  # features [b, T, D] on the device
    run = Run(cfg, dist, source)  # model, optimiser, noise, log, checkpoints; resumed if OUT has checkpoints

    bar = progress_bar("train", cfg.progress and dist.is_main, unit="step",
                       fields="loss {task.fields[loss]} lr {task.fields[lr]} kept {task.fields[kept]}")
    task = bar.add_task("train", total=cfg.num_iters, completed=run.step, resumed=run.step, loss="-",
                        lr="-", kept="-")
    with bar:
        while not run.done:
            out = run.train_step(source.next_batch())
            if run.step % cfg.log_every == 0 or run.done:
                kept = "-" if out["kept"] != out["kept"] else f"{out['kept']:.1f}"
                bar.update(task, completed=run.step, loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}",
                           kept=kept)
    run.close()
    source.close()
    if dist.enabled:
        distributed.cleanup()
    return {"step": run.step, "loss": run.last_loss,
            "checkpoint": str(run.last_checkpoint) if run.last_checkpoint else None,
            "run_dir": str(run.run_dir), "rank": dist.rank}
