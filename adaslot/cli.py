"""The `adaslot` command line: one function per command, each taking its config dataclass.

Names: command `foo-bar` is `foo_bar_cmd` here and calls the library's `run_foo_bar(cfg: FooBarConfig)`
(run_make_synthetic, run_cache_features, run_cache_verify, run_train, run_eval, run_segment, run_sweep,
run_demo). Commands that only wrap a plain library function (cache-info, export, convert-official) call it
directly.

Flags are not written here: `config_command` builds every command's options from the fields of its config
(adaslot.config: name, default, help, range), so each setting is declared once. Library code raises
`AdaslotError` for anything a user can cause; `main()` prints it as one line and exits 2, and does the same
for an OSError (full disk, read-only folder, ...: adaslot/faults.py says which path, what happened and what is
kept). Heavy imports (torch, timm, zarr) happen inside the commands so `adaslot --help` is instant.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer

from adaslot import faults
from adaslot.config import (
    CacheConfig,
    ConvertConfig,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    InfoConfig,
    SegmentConfig,
    Settings,
    SweepConfig,
    SyntheticConfig,
    TrainConfig,
    VerifyConfig,
    from_flags,
)
from adaslot.config.base import base_type, cli_fields, flag_of, value_at
from adaslot.errors import AdaslotError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="AdaSlot / DINOSAUR on cached frozen-ViT features: cache-features, train, eval, demo.")


@app.callback()
def _root() -> None:
    """AdaSlot / DINOSAUR on cached frozen-ViT features: cache-features, train, eval, demo."""


# ---- flags from config dataclasses ----

def _parameters(cls: type[Settings]) -> list[inspect.Parameter]:
    """One typer parameter per CLI field of `cls` (nested settings flattened), plus shortcut flags."""
    defaults, params, seen = cls(), [], set()
    kw, pos = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    for f, t, path in cli_fields(cls):
        if f.name in seen:
            raise RuntimeError(f"{cls.__name__}: two settings are called {f.name}")
        seen.add(f.name)
        m, flag = f.metadata, flag_of(f)
        default = value_at(defaults, path, f.name)
        text = m.get("help", "")
        if m.get("parser"):
            params.append(inspect.Parameter(f.name, kw, annotation=Optional[list[str]],  # noqa: UP045
                                            default=typer.Option(None, flag, help=text, show_default=False)))
            continue
        if m.get("argument"):
            info = typer.Argument(... if m.get("required") else None, help=text, show_default=False,
                                  metavar=f.name.upper())
            params.append(inspect.Parameter(f.name, pos, annotation=base_type(t)[0], default=info))
            continue
        if default not in (None, "") and not m.get("required"):
            text += f" (default: {default})"
        typ = base_type(t)[0]
        names = (f"{flag}/--no-{flag[2:]}",) if typ is bool else (flag,)
        info = typer.Option(... if m.get("required") else None, *names, help=text, show_default=False)
        params.append(inspect.Parameter(f.name, kw, annotation=Optional[typ], default=info))  # noqa: UP045
        for short, value in m.get("shortcuts", {}).items():
            params.append(inspect.Parameter(f"_short_{short}", kw, annotation=bool, default=typer.Option(
                False, f"--{short}", help=f"same as {flag} {value}", show_default=False)))
    return sorted(params, key=lambda p: p.kind)


def _build(cls: type[Settings], values: dict[str, Any]) -> Settings:
    """CLI values -> a validated config (shortcuts resolved, repeatable flags parsed)."""
    given: dict[str, Any] = {}
    for f, _t, _path in cli_fields(cls):
        value = values.get(f.name)
        shorts = [s for s in f.metadata.get("shortcuts", {}) if values.get(f"_short_{s}")]
        if len(shorts) > 1 or (shorts and value is not None):
            both = [f"--{s}" for s in shorts] + ([flag_of(f)] if value is not None else [])
            raise AdaslotError(f"{' and '.join(both)} exclude each other")
        if shorts:
            value = f.metadata["shortcuts"][shorts[0]]
        if f.metadata.get("parser") and value is not None:
            value = f.metadata["parser"](value)
        given[f.name] = value
    return from_flags(cls, given).validate()


def config_command(name: str, cls: type[Settings]) -> Callable:
    """Register `fn(cfg)` as the command `name` with one flag per field of `cls` (see module doc)."""

    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        def command(**values: Any) -> None:
            fn(_build(cls, values))

        command.__signature__ = inspect.Signature(_parameters(cls))  # type: ignore[attr-defined]  # typer reads __signature__, which a function type does not declare
        command.__doc__ = fn.__doc__
        command.__name__ = fn.__name__
        app.command(name)(command)
        return fn

    return register


# ---- commands ----

@config_command("make-synthetic", SyntheticConfig)
def make_synthetic_cmd(cfg: SyntheticConfig) -> None:
    """Write the built-in synthetic shapes dataset as a real COCO-2017-format dataset (JPEG + RLE json)."""
    from adaslot.data.make_synthetic import run_make_synthetic

    s = run_make_synthetic(cfg)
    if cfg.format == "movi":
        print(f"wrote {s['train_videos']} train / {s['val_videos']} val videos of {cfg.frames} frames as "
              f"TFDS records ({s['tfds']}) and webdataset shards ({s['wds']})")
        return
    print(f"wrote {s['train_images']} train / {s['val_images']} val images "
          f"({s['train_objects'] + s['val_objects']} objects, {s['mean_objects']:.2f} per image) "
          f"to {s['root']}")


@config_command("cache-features", CacheConfig)
def cache_features_cmd(cfg: CacheConfig) -> None:
    """Run the frozen encoder once over a dataset into a resumable zarr feature store.

    Rerun the same command after an interruption: only missing shards are computed. Under
    `torchrun --nproc_per_node P --no-python adaslot cache-features ...` each rank encodes its own shards."""
    from adaslot.store.writer import run_cache_features

    faults.note(kept=lambda: _store_kept(cfg.out), rerun="(it computes only the missing shards)")
    run_cache_features(cfg)


def _store_kept(out: str) -> str:
    from adaslot.store import open_store

    try:
        done, total = open_store(out).shards_done()
    except AdaslotError:
        return "nothing was written yet"
    return f"{done} of {total} shards of {out} are written and kept"


@config_command("cache-info", InfoConfig)
def cache_info_cmd(cfg: InfoConfig) -> None:
    """Print a store's feature contract, dataset identity, layout and completion state."""
    from adaslot.store import open_store

    print("\n".join(open_store(cfg.store).summary_lines()))


@config_command("cache-verify", VerifyConfig)
def cache_verify_cmd(cfg: VerifyConfig) -> None:
    """Recompute a random sample online and report the max error against the stored features; with --full,
    check every stored checksum instead and list the damaged files."""
    from adaslot.store.verify import run_cache_verify

    if cfg.full:
        from adaslot.store.checksums import check_store, report_checks

        report_checks(check_store(cfg.store, progress=True))
        return
    r = run_cache_verify(cfg)
    verdict = "OK (within fp16 rounding)" if r["ok"] else "MISMATCH"
    print(f"{r['rows']} images recomputed: max abs error {r['max_abs_error']:.3g} "
          f"(fp16 rounding bound {r['bound']:.3g}): {verdict}")
    if not r["ok"]:
        raise typer.Exit(1)


@config_command("export", ExportConfig)
def export_cmd(cfg: ExportConfig) -> None:
    """Write the store's arrays and attributes to HDF5 (h5py, chunked); `train --from-cache` reads both."""
    from adaslot.store.export import export_hdf5

    r = export_hdf5(cfg.store, cfg.out, overwrite=cfg.overwrite)
    print(f"wrote {r['out']} ({r['rows']} rows, {r['bytes'] / 2**20:.1f} MiB)")


@config_command("train", TrainConfig)
def train_cmd(cfg: TrainConfig) -> None:
    """Train stage 1 or 2 from a feature store or online from images; rerunning the same command resumes."""
    from adaslot.train import run_train

    faults.note(rerun="to continue")
    result = run_train(cfg)
    if result["rank"] == 0:
        # No loss when a finished run was rerun (no step taken): "loss nan" would read as a failure.
        loss = "" if result["loss"] != result["loss"] else f", loss {result['loss']:.6f}"
        print(f"step {result['step']}{loss}, checkpoint {result['checkpoint']}")


@config_command("eval", EvalConfig)
def eval_cmd(cfg: EvalConfig) -> None:
    """Score a checkpoint on COCO-format data under the published protocols and at full resolution."""
    from adaslot.evaluate import print_results, run_eval

    print_results(run_eval(cfg))


@config_command("segment", SegmentConfig)
def segment_cmd(cfg: SegmentConfig) -> None:
    """Segment any images (files, folders, globs) with a trained checkpoint: label PNGs at the original size.

    Rerunning the same command skips the images already done."""
    from adaslot.segment import run_segment

    faults.note(rerun="(it skips the images already done)")
    r = run_segment(cfg)
    n = r["num_images"]
    print(f"{n} image{'s' if n != 1 else ''} segmented ({r['new']} in this run) into {r['out']}/masks"
          + (f", slots in {r['out']}/slots.npz" if cfg.save_slots and r["num_images"] else ""))
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} unreadable or missing inputs (in {r['out']}/manifest.json):")
        for s in r["skipped"][:10]:
            print(f"  {s['file']}: {s['reason']}" + (f" ({s['detail']})" if s["detail"] else ""))
        if len(r["skipped"]) > 10:
            print(f"  ... and {len(r['skipped']) - 10} more")


@config_command("sweep", SweepConfig)
def sweep_cmd(cfg: SweepConfig) -> None:
    """Train every combination of --grid values x --seeds from one base run (any train flag), score each on
    val data and compare them: OUT/runs/<variant>/ (ordinary run folders: `adaslot train --out` resumes one,
    `adaslot eval` scores one), OUT/sweep.csv, summary.md, curves.png, effects.png. Rerun to resume or to add
    variants; --print-commands for a cluster, --collect OUT to tabulate folders made anywhere.

    Set per variant: the sweep's --out is the sweep folder (a variant's run folder is OUT/runs/<variant>),
    and --seeds, --devices replace the train flags --seed, --device."""
    from adaslot.sweep import run_sweep

    faults.note(rerun="(finished variants are skipped, unfinished ones resume from their checkpoints)")
    run_sweep(cfg)


@config_command("convert-official", ConvertConfig)
def convert_official_cmd(cfg: ConvertConfig) -> None:
    """Convert an official AdaSlot checkpoint into an adaslot checkpoint (the frozen encoder is ignored)."""
    from collections import Counter

    from adaslot.convert import convert_official

    conv = convert_official(cfg.ckpt, cfg.out, stage=cfg.stage, num_slots=cfg.num_slots, preset=cfg.preset,
                            encoder=cfg.encoder, allow_pickle=cfg.allow_pickle)
    mcfg = conv.model_config
    n_params = sum(t.numel() for t in conv.state.values())
    print(f"mapped {len(conv.mapped)} tensors ({n_params:,} parameters): stage {conv.stage}, "
          f"preset {conv.preset or 'custom'}, K={mcfg.num_slots}, slot dim {mcfg.slot_dim}, "
          f"decoder {list(mcfg.decoder_hidden)}, encoder {conv.encoder}"
          + (f", official step {conv.step}" if conv.step is not None else ""))
    for prefix, n in sorted(Counter(".".join(k.split(".")[:2]) for k in conv.ignored).items()):
        print(f"ignored {n} tensors under {prefix}.*")
    print(f"wrote {cfg.out}")


@config_command("demo", DemoConfig)
def demo_cmd(cfg: DemoConfig) -> None:
    """make-synthetic -> cache-features -> train stage 1 -> stage 2 -> eval, on a CPU, < 10 min."""
    from adaslot.demo import check_results, print_results, run_demo

    faults.note(rerun="(it resumes the training stages)" if cfg.profile == "long" else "(it starts over)")
    results = run_demo(cfg)
    check_results(results)
    print_results(results)


def main() -> None:
    """Console-script entry: user errors and I/O faults become one line on stderr and exit code 2, never a
    traceback."""
    faults.reset()
    try:
        app()
    except AdaslotError as e:
        print(f"adaslot: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a full disk, a read-only folder...: which path, what happened, what is kept
        print(f"adaslot: error: {faults.describe(e)}", file=sys.stderr)
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
