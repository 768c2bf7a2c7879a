"""Planning a sweep: what each variant still needs, which variants share an input, which worker runs what,
the stage-1 checkpoint of `--warmstart auto`, and the `adaslot train` command of a variant.

Sharing an input: variants whose input settings are equal (the train settings declared `input`: store or
images, encoder, preset, batch size, seed, cache mode, precision) see the same batches in the same order, so
one loader can feed them in lockstep; they must also resume from the same step (the loader has one
position).
"""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import Any

from adaslot.config import RunSpec, TrainConfig
from adaslot.config.base import names_where, to_flags, value_text
from adaslot.config.sweep import Variant, warmstart_free_keys
from adaslot.errors import AdaslotError
from adaslot.sweep.results import checkpoint_step, find_axes, read_runs, read_score


def train_command(cfg: TrainConfig) -> str:
    """The `adaslot train` command line of `cfg` (torchrun: `torchrun ... --no-python` + this line)."""
    return shlex.join(["adaslot", "train", *to_flags(cfg)])


def is_scored(run_dir: str | Path, step: int, scoring: dict[str, Any]) -> bool:
    """Whether run_dir/score.json scores its checkpoint of `step` with `scoring` (SweepConfig.scoring(): the
    number of images, the merge threshold)."""
    score = read_score(run_dir)
    return (score is not None and score.get("step") == step
            and all(score.get(k) == v for k, v in scoring.items()))


def needs(cfg: TrainConfig, scoring: dict[str, Any]) -> str:
    """What the run in cfg.out still needs: "nothing", "score" (trained, not scored with these settings),
    or "train" (then score)."""
    steps = cfg.total_steps()
    if checkpoint_step(cfg.out) < steps:
        return "train"
    return "nothing" if is_scored(cfg.out, steps, scoring) else "score"


def source_key(cfg: TrainConfig) -> str:
    """What decides the batches of a run: its input settings and resume step."""
    d = cfg.to_dict()
    return json.dumps([d[k] for k in sorted(names_where(TrainConfig, "input"))] + [checkpoint_step(cfg.out)])


def share_groups(cfgs: list[TrainConfig]) -> list[list[TrainConfig]]:
    """Variants that can step in lockstep on one loader (same input settings and resume step), in order."""
    groups: dict[str, list[TrainConfig]] = {}
    for cfg in cfgs:
        groups.setdefault(source_key(cfg), []).append(cfg)
    return list(groups.values())


@functools.lru_cache(maxsize=64)
def _store_shape(path: str) -> tuple[int, int] | None:
    """(D, T) of a feature store's contract; None when it cannot be opened (the run itself says why)."""
    from adaslot.store import open_store

    try:
        store = open_store(path)
    except AdaslotError:
        return None
    shape = (store.feature_dim, store.num_tokens)
    store.close()
    return shape


def step_cost(cfg: TrainConfig) -> float:
    """Multiply-adds of one step's decoder and input MLP (most of a step's work, docs/benchmarks.md): the
    proxy by which variants are shared out between workers. D and T are the input's: a store's contract,
    or the encoder at its side (a sweep over stores of several encoders: docs/encoders.md)."""
    shape = (_store_shape(cfg.from_cache) if cfg.from_cache else None) or (None, None)
    m = RunSpec.resolve(cfg, *shape).model
    widths = [m.slot_dim, *m.decoder_hidden, m.feature_dim + 1]
    decoder = m.num_slots * sum(a * b for a, b in zip(widths, widths[1:], strict=False))
    input_mlp = m.feature_dim * m.input_mlp_hidden + m.input_mlp_hidden * m.slot_dim
    return float(cfg.batch_size * m.num_tokens * (decoder + input_mlp))


def work(cfgs: list[TrainConfig]) -> float:
    """The remaining work of runs: steps left x step_cost."""
    return sum((c.total_steps() - checkpoint_step(c.out)) * step_cost(c) for c in cfgs)


def assign(groups: list[list[TrainConfig]], jobs: int) -> list[list[list[TrainConfig]]]:
    """Groups -> at most `jobs` workers' lists of groups, balanced by `work`. While there are fewer groups
    than workers, the largest group is split in two of about equal work (each half reads the input itself);
    then groups are given out largest first to the worker with the least work so far."""
    units = [list(g) for g in groups]
    while len(units) < jobs and any(len(u) > 1 for u in units):
        big = max((u for u in units if len(u) > 1), key=work)
        units.remove(big)
        halves: tuple[list[TrainConfig], list[TrainConfig]] = ([], [])
        for cfg in sorted(big, key=lambda c: work([c]), reverse=True):
            min(halves, key=work).append(cfg)
        units += [[c for c in big if c in half] for half in halves]  # each half in the sweep's order
    workers: list[list[list[TrainConfig]]] = [[] for _ in range(min(jobs, len(units)))]
    load = [0.0] * len(workers)
    for unit in sorted(units, key=work, reverse=True):
        i = load.index(min(load))
        workers[i].append(unit)
        load[i] += work(unit)
    return workers


def resolve_warmstart(variants: list[Variant], stage1_sweep: str) -> list[Variant]:
    """`--warmstart auto`: each stage-2 variant gets the last checkpoint of its matching stage-1 variant.

    The stage-1 variant U of the folder `stage1_sweep` matches the stage-2 variant V when U has finished
    training, has V's seed, and agrees with V on every grid key of the stage-1 sweep (the settings its runs
    differ in) except those a warm start may change (`warmstart_free_keys`); if several do, the one that also
    agrees on those (a stage-1 sweep over K: the run with the variant's K). Exactly one must match.
    """
    runs = [r for r in read_runs(stage1_sweep) if r.trained]
    if not runs:
        raise AdaslotError(f"--stage1-sweep {stage1_sweep}: no finished stage-1 run in {stage1_sweep}/runs/")
    if any(r.settings.get("stage") != 1 for r in runs):
        raise AdaslotError(f"--stage1-sweep {stage1_sweep} holds stage-2 runs; give a stage-1 sweep folder")
    axes = find_axes(runs)
    free_keys = warmstart_free_keys()
    keys = [a for a in axes if a not in free_keys]
    free = [a for a in axes if a in free_keys]
    out = []
    for v in variants:
        if v.cfg.warmstart != "auto":
            out.append(v)
            continue
        mine = v.spec.flat()
        found = [r for r in runs if r.seed == v.seed and all(r.settings.get(k) == mine.get(k) for k in keys)]
        if len(found) > 1:  # stage 1 also varied a free key (e.g. K): the run with the variant's own value
            found = [r for r in found if all(r.settings.get(k) == mine.get(k) for k in free)] or found
        want = ", ".join([f"seed={v.seed}", *(f"{k}={value_text(mine.get(k))}" for k in keys)])
        if len(found) != 1:
            what = "no stage-1 run" if not found else f"{len(found)} stage-1 runs ({found[0].name}, ...)"
            raise AdaslotError(f"--warmstart auto: {what} in {stage1_sweep} matches variant {v.name} "
                               f"({want}); give the stage-1 grid keys the values of a stage-1 variant")
        ckpt = Path(found[0].dir) / "checkpoints" / "last.pt"
        cfg = v.cfg.replace(warmstart=str(ckpt))
        out.append(Variant(v.name, v.values, v.seed, cfg, v.spec.replace(train=v.spec.train.replace(
            warmstart=str(ckpt)))))
    return out

