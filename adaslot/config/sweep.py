"""Settings of `adaslot sweep`: a base run (every train setting), a grid over config fields, seeds, workers.

Grid keys are config field names: train settings bare (`num_slots`, `lr`, `sparsity_weight`, `root`), model
settings as `model.X` (`model.decoder_hidden`). On the command line `--grid KEY=V1,V2,...` (repeatable): a
comma always separates values, so a tuple value is written with x (`model.decoder_hidden=128x128,256x256` is
two values, `=128,256` two one-layer decoders). A TOML file (`adaslot sweep sweep.toml`) holds the same
settings under the same names, the grid as a table of lists (`[grid]`, `num_slots = [5, 7]`,
`"model.decoder_hidden" = ["128x128", "256x256"]`); a flag given as well replaces the file's setting.

The base run is a nested TrainConfig: its flags are the train flags, except five the sweep sets per variant
(declared `per_variant` in config/train.py): `out` (the sweep's `--out` is the sweep folder; a variant's run
folder is OUT/runs/<variant>), `seed` (`--seeds`), `device` (`--devices`, one per worker), `threads` (the
sweep's `--threads`, per worker; a variant's command carries it, so the plain command sums the same way) and
`progress` (the sweep's).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaslot.config.base import (
    Settings,
    cli_fields,
    from_flags,
    names_where,
    parse_value,
    setting,
    value_text,
)
from adaslot.config.data import DataSpec
from adaslot.config.model import MethodOverrides, ModelConfig
from adaslot.config.run import RunSpec
from adaslot.config.train import TrainConfig
from adaslot.errors import AdaslotError

SET_PER_VARIANT = tuple(sorted(names_where(TrainConfig, "per_variant")))  # declared in config/train.py
PER_VARIANT = "OUT/runs/<variant>"  # the base run's `out` until a variant sets it
GRID_HELP = ("an axis: KEY=V1,V2,... (repeatable; variants = every combination x --seeds). KEY: a train "
             "setting (num_slots, lr, ...) or model.X (model.decoder_hidden, ...); a comma always separates "
             "values, tuples are written with x: model.decoder_hidden=128x128,256x256")
DEVICE_FORM = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def train_fields() -> dict[str, tuple[type, str]]:
    """flat name -> (class that declares it, field name) of every train setting (DataSpec's included)."""
    owners = {(): TrainConfig, ("data",): DataSpec}
    return {f.name: (owners[path], f.name) for f, _t, path in cli_fields(TrainConfig)}


def hidden_axes() -> frozenset[str]:
    """Result keys (train settings bare, model settings as model.X) that the results never show as axes:
    settings declared with `axis` False (bookkeeping, derived) or a reason (not grid keys at all)."""
    def hidden(axis: bool | str) -> bool:
        return axis is not True

    model = names_where(ModelConfig, "axis", hidden)
    return names_where(TrainConfig, "axis", hidden) | {f"model.{n}" for n in model}


def warmstart_free_keys() -> frozenset[str]:
    """Result keys in which a stage-2 run may differ from the stage-1 run it warm-starts from: train and model
    settings declared `warmstart_free`, and the train flags that give a free model setting (--num-slots)."""
    model = names_where(ModelConfig, "warmstart_free")
    train = names_where(TrainConfig, "warmstart_free") | (set(train_fields()) & model)
    return frozenset(train) | {f"model.{n}" for n in model}


def axis_value(key: str, value: Any) -> Any:
    """A grid value (command-line text or a TOML value) -> the type of setting `key`; one line if invalid."""
    owner: type[Any]  # a Settings dataclass
    if key.startswith("model."):
        owner, name = ModelConfig, key[len("model."):]
        if name not in {f.name for f in dataclasses.fields(ModelConfig)}:
            raise AdaslotError(f"--grid {key}: unknown model setting {name!r} (the fields of ModelConfig: "
                               f"{', '.join(f.name for f in dataclasses.fields(ModelConfig))})")
    else:
        fields = train_fields()
        if key not in fields:
            raise AdaslotError(f"--grid {key}: unknown setting (a train setting such as num_slots, lr, "
                               "sparsity_weight, or model.X for a model setting)")
        owner, name = fields[key]
    axis = {f.name: f for f in dataclasses.fields(owner)}[name].metadata.get("axis", True)
    if isinstance(axis, str):
        raise AdaslotError(f"--grid {key}: not a grid key ({axis})")
    text = "x".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    try:
        return parse_value(owner, name, text)
    except AdaslotError as e:
        raise AdaslotError(f"--grid {key}={text}: {e}") from None


def parse_grid(items: list[str]) -> dict[str, tuple[Any, ...]]:
    """["num_slots=5,7", "model.decoder_hidden=128x128,256x256"] -> {"num_slots": (5, 7), ...}."""
    grid: dict[str, tuple[Any, ...]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise AdaslotError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        if key in grid:
            raise AdaslotError(f"--grid {key} is given twice; list all its values in one --grid")
        grid[key] = tuple(axis_value(key, v.strip()) for v in values.split(","))
    return grid


def grid_text(grid: dict[str, tuple[Any, ...]]) -> list[str]:
    """The inverse of parse_grid: {"num_slots": (5, 7)} -> ["num_slots=5,7"]."""
    return [f"{k}={','.join(map(value_text, vs))}" for k, vs in grid.items()]


def parse_seeds(items: list[str]) -> tuple[int, ...]:
    """["1,2", "3"] -> (1, 2, 3)."""
    try:
        seeds = tuple(int(s) for item in items for s in item.split(",") if s.strip())
    except ValueError:
        raise AdaslotError(f"--seeds expects integers like 1,2, got {' '.join(items)!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise AdaslotError(f"--seeds expects distinct integers like 1,2, got {' '.join(items)!r}")
    return seeds


def _name_part(key: str, value: Any, keys: list[str]) -> str:
    short = key[len("model."):] if key.startswith("model.") and key[len("model."):] not in keys else key
    text = Path(value).stem if isinstance(value, str) and "/" in value else value_text(value)
    return f"{short}={re.sub(r'[^A-Za-z0-9._+-]', '-', text)}"


@dataclass
class Variant:
    """One run of a sweep: its grid values, seed, readable name, full train config and the run it plans
    (`spec`: resolved before its input is open, so D and T follow the encoder at its side)."""

    name: str
    values: dict[str, Any]
    seed: int
    cfg: TrainConfig
    spec: RunSpec


@dataclass
class SweepConfig(Settings):
    """`adaslot sweep`: train every combination of the grid values x seeds from one base run, each in an
    ordinary run folder OUT/runs/<variant>/, score each on val data, and compare them (OUT/sweep.csv,
    summary.md, curves.png, effects.png)."""

    toml: str | None = setting(None, "a TOML file with these settings (same names; flags replace its values)",
                               argument=True)
    out: str = setting("", "sweep folder: runs/<variant>/ (ordinary run folders), sweep.csv, summary.md, "
                           "curves.png, effects.png; rerun to resume or to add variants")
    base: TrainConfig = setting(default_factory=lambda: TrainConfig(out=PER_VARIANT), omit=SET_PER_VARIANT,
                                help="the base run: every train flag except the five set per variant")
    grid: dict[str, tuple[Any, ...]] = setting(default_factory=dict, parser=parse_grid, text=grid_text,
                                               help=GRID_HELP)
    seeds: tuple[int, ...] = setting((0,), "seeds, e.g. 1,2: each variant runs once per seed (same seed = "
                                           "same batches and noise, so differences are paired)",
                                     parser=parse_seeds, text=lambda seeds: [",".join(map(str, seeds))])
    stage1_sweep: str | None = setting(None, "with --warmstart auto: the stage-1 sweep folder whose matching "
                                             "variant (same seed, same values of its grid keys) each "
                                             "variant starts from")
    jobs: int = setting(1, "worker processes (variants that share an input step in lockstep in one worker)",
                        min=1)
    devices: str = setting("auto", "the workers' devices, a comma list given out in turn (cuda:0,cuda:1); "
                                   "auto: a GPU if visible, else the CPU")
    threads: int = setting(1, "torch threads per worker", min=1)
    score_images: int | None = setting(None, "score each finished variant on the first N val images "
                                             "(default: all)", min=1)
    score_method: dict[str, Any] = setting(
        default_factory=dict, parser=MethodOverrides.parse,
        help="score with this inference method instead of each checkpoint's: KEY=VALUE, repeatable (e.g. "
             "--score-method merge_slots=0.12; merge_slots=0: no merging); a rerun with another value "
             "re-scores, nothing retrains")
    rank_by: str = setting("fg_ari", "metric the summary is sorted by: any column of sweep.csv (fg_ari, "
                                     "mbo_i, mbo_c, final_loss, ...); losses, rates of errors and times rank "
                                     "lowest first")
    print_commands: bool = setting(False, "print one `adaslot train` command per variant (for a Slurm job "
                                          "array, GNU parallel, torchrun) and run nothing")
    collect: str | None = setting(None, "build sweep.csv, summary.md and the plots from the run folders in "
                                        "COLLECT/runs/ (made anywhere: by this command or by the printed "
                                        "commands), scoring the unscored ones")
    progress: bool = setting(True, "show the progress bar")

    @classmethod
    def cli_base(cls, given: dict[str, Any]) -> SweepConfig:
        return load_toml(given["toml"]) if given.get("toml") else cls()

    def check(self) -> None:
        for d in self.device_list():
            if not DEVICE_FORM.match(d):
                raise AdaslotError(f"--devices must be a comma list of auto, cpu, cuda or cuda:N, got {d!r}")
        if self.collect:
            return
        if not self.out:
            raise AdaslotError("--out is required (the sweep folder, e.g. cache/sweeps/NAME), or --collect "
                               "OUT")
        if not self.base.val_source():
            raise AdaslotError("adaslot sweep scores every variant on val data: give --val-from-cache "
                               "VAL_STORE or --val-root R (a COCO-layout root with val2017/)")
        self.variants()  # each variant's settings, checked before anything runs
        auto = self.base.warmstart == "auto"
        if auto and not self.stage1_sweep:
            raise AdaslotError("--warmstart auto needs --stage1-sweep DIR (the stage-1 sweep folder)")
        if self.stage1_sweep and not auto:
            raise AdaslotError("--stage1-sweep is for --warmstart auto")

    def scoring(self) -> dict[str, Any]:
        """How finished variants are scored (recorded in each score.json; a change re-scores)."""
        return {"score_images": self.score_images, "score_method": dict(self.score_method)}

    def device_list(self) -> list[str]:
        return [d.strip() for d in self.devices.split(",") if d.strip()] or ["auto"]

    def variants(self) -> list[Variant]:
        """Every grid combination x seed, in grid order, each with its checked TrainConfig."""
        keys = list(self.grid)
        out: list[Variant] = []
        for combo in itertools.product(*self.grid.values()):
            values = dict(zip(keys, combo, strict=True))
            for seed in self.seeds:
                name = "_".join([*(_name_part(k, v, keys) for k, v in values.items()), f"seed={seed}"])
                where = " ".join(f"{k}={value_text(v)}" for k, v in values.items())
                try:
                    cfg = self.variant_config(values, seed, str(Path(self.out) / "runs" / name))
                    spec = RunSpec.resolve(cfg.validate())  # resolving checks the model settings
                except AdaslotError as e:
                    raise AdaslotError(f"variant {where}: {e}" if where else str(e)) from None
                out.append(Variant(name, values, seed, cfg, spec))
        seen: dict[str, Variant] = {}
        for v in out:
            if v.name in seen:
                raise AdaslotError(f"two variants would share the run folder {v.name} ({seen[v.name].values} "
                                   f"and {v.values}); give values that differ in their last path part")
            seen[v.name] = v
        return out

    def variant_config(self, values: dict[str, Any], seed: int, out: str) -> TrainConfig:
        """The base run with the grid values `values`, `seed` and run folder `out` filled in."""
        train, data, model = {}, {}, dict(self.base.model_overrides)
        data_fields = {f.name for f in dataclasses.fields(DataSpec)}
        for key, value in values.items():
            if key.startswith("model."):
                model[key[len("model."):]] = value
            elif key in data_fields:
                data[key] = value
            else:
                train[key] = value
        return self.base.replace(**train, data=self.base.data.replace(**data), model_overrides=model,
                                 seed=seed, out=out, threads=self.threads, progress=False)


def load_toml(path: str) -> SweepConfig:
    """A SweepConfig from a TOML file of the same settings (flat names, `[grid]` a table of lists, `model` a
    table of model settings or a list of KEY=VALUE); an unknown key or a bad value is one line."""
    p = Path(path)
    if not p.is_file():
        raise AdaslotError(f"sweep file {path} not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise AdaslotError(f"{path} is not valid TOML: {e}") from None
    fields = {f.name: (f, path_) for f, _t, path_ in cli_fields(SweepConfig)}
    owners = {(): SweepConfig, ("base",): TrainConfig, ("base", "data"): DataSpec}
    given: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "model":
            name = "model_overrides"
        if name not in fields or name == "toml":
            raise AdaslotError(f"{path}: unknown setting {key!r} (the names of `adaslot sweep --help`, "
                               "with _)")
        f, where = fields[name]
        try:
            if name == "grid":
                if not isinstance(value, dict):
                    raise AdaslotError("grid must be a table of lists, e.g. [grid] num_slots = [5, 7]")
                given[name] = {k: tuple(axis_value(k, v) for v in (vs if isinstance(vs, list) else [vs]))
                               for k, vs in value.items()}
            elif name == "model_overrides":
                items = value if isinstance(value, list) else [f"{k}={value_text(v)}" for k, v in
                                                               value.items()]
                given[name] = ModelConfig.parse_overrides([str(i) for i in items], flag="model")
            elif f.metadata.get("parser"):
                given[name] = f.metadata["parser"]([value_text(v) for v in
                                                    (value if isinstance(value, list) else [value])])
            else:
                given[name] = parse_value(owners[where], name, value_text(value))
        except AdaslotError as e:
            raise AdaslotError(f"{path}: {key}: {e}") from None
    return from_flags(SweepConfig, given, SweepConfig())
