"""`adaslot demo`: the whole pipeline on the built-in synthetic dataset, on a CPU, with honest numbers.

make-synthetic -> cache-features (train split, image + flip) -> train stage 1 (from the cache) -> train
stage 2 (warm-started from stage 1; `selector`; its checkpoint records the inference method, slots merged at
`merge_slots`) -> eval on the val split with the checkpoint's method,
each step through the library function of the real command. Then, on the same val images:
  baseline_fg_ari   the best trivial prediction (one slot everywhere, or a fixed grid of at most K_max blocks)
  patch_ceiling     the best FG-ARI any labelling of the 8 x 8 patch grid can reach (evaluate.patch_ceiling)
  cache_vs_online_step_ratio   seconds per training step online (images -> encoder -> model) / from the cache
  shipped           the same numbers for the checkpoint in adaslot/assets (trained by `adaslot demo --long`,
                    never on these val images: the val split has its own seed stream)
Everything goes to OUT/results.json; pictures to OUT/eval/vis (and OUT/eval-shipped/vis).

`--dataset movi` runs the same steps on MOVi-like videos (`make-synthetic --format movi`, plain backgrounds):
cached and trained from the TFDS records, evaluated from the webdataset shards with the movi protocol (every
val frame an image, scored at 128 x 128; docs/movi.md). No shipped checkpoint is compared and `--long`
installs no assets (the shipped ones are the shape demo's).
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from adaslot import DEMO_CHECKPOINT
from adaslot.config import DataSpec, DemoConfig, RunSpec, get_preset
from adaslot.config.base import to_flags
from adaslot.errors import AdaslotError
from adaslot.files import atomic_path, write_json

ASSETS = DEMO_CHECKPOINT.parent  # the package's assets folder (what `--long` installs)
PRESET = "demo"
PROTOCOL = "adaslot"  # headline protocol (GT at 224, as the patch ceiling); fullres is reported beside it
RESULT_KEYS = ("method", "fg_ari", "baseline_fg_ari", "mean_kept_slots", "mean_objects", "kept_vs_objects_r",
               "split_rate", "merge_rate", "count_confusion", "cache_vs_online_step_ratio")
# object-level diagnostics copied from the eval summary (docs/method.md#object-diagnostics)
DIAGNOSTICS = ("split_rate", "merge_rate", "background_slots", "count_confusion", "per_object_count")


def _say(cfg: DemoConfig, msg: str) -> None:
    if cfg.progress:
        from rich import print as rprint

        rprint(msg)


def headline_protocol(cfg: DemoConfig) -> str:
    return cfg.eval.protocols[0]


def data_spec(cfg: DemoConfig, data: Path, split: str) -> DataSpec:
    """The demo's dataset at `data` (what make-synthetic wrote). MOVi: the TFDS records for training, the
    webdataset shards for eval, so one run reads both layouts."""
    if cfg.dataset == "movi":
        return DataSpec(dataset="movi", root=str(data / ("tfds" if split == "train" else "wds")), split=split)
    return DataSpec(root=str(data), split=split)


def step_time_ratio(cfg: DemoConfig, stage1: RunSpec, data: Path, steps: int) -> dict[str, float]:
    """Seconds per training step online (images decoded, transformed, encoded) / from the feature store.

    Same model (the stage-1 run's, from its spec), same batch, same step code (train.TrainForward + Adam);
    `steps` timed steps after one untimed warm-up step each."""
    from adaslot import distributed
    from adaslot.model import AdaSlot
    from adaslot.train import NoiseSampler, TrainForward, build_source

    dist = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    mcfg, batch = stage1.model, stage1.train.batch_size
    seconds = {}
    for mode in ("cache", "online"):
        tcfg = stage1.train
        if mode == "online":
            tcfg = dataclasses.replace(tcfg, from_cache=None, data=data_spec(cfg, data, "train"))
        else:
            tcfg = dataclasses.replace(tcfg, cache_in_memory=False)  # streaming reads, as a big cache would
        source = build_source(tcfg, dist, batch)
        torch.manual_seed(cfg.seed)
        model = AdaSlot(mcfg)
        forward = TrainForward(model, 0.0, "fp32")
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        noise = NoiseSampler(cfg.seed, torch.device("cpu"))
        t0 = 0.0
        for i in range(steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            feats = source.next_batch()
            slot_noise, gumbel = noise.sample(batch, mcfg, slice(0, batch))
            loss, _, _ = forward(feats, slot_noise, gumbel)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds[mode] = (time.perf_counter() - t0) / max(steps, 1)
        source.close()
    return {"online_s_per_step": seconds["online"], "cache_s_per_step": seconds["cache"],
            "ratio": seconds["online"] / seconds["cache"]}


def method_name(stage2: RunSpec) -> str:
    """What the demo's stage-2 run trained and eval runs, in words (results.json `method`)."""
    model = stage2.model
    name = (f"AdaSlot selector, sparsity weight {stage2.train.sparsity_weight:g}"
            if model.selector == "adaslot" else "quality selector")
    merge = f" + slot merging (cosine distance < {model.merge_slots:g})" if model.merge_slots else ""
    return name + merge


def _eval(checkpoint: Path, data: Path, out: Path, cfg: DemoConfig) -> dict[str, Any]:
    from adaslot.evaluate import run_eval

    return run_eval(cfg.eval.replace(checkpoint=str(checkpoint), data=data_spec(cfg, data, "val"),
                                     out=str(out), seed=cfg.seed, progress=cfg.progress))


def _summary(result: dict[str, Any], baseline: float, mean_objects: float, ratio: float | None,
             protocol: str = PROTOCOL) -> dict[str, Any]:
    p = result["protocols"][protocol]
    return {
        "keep_mode": result["keep_mode"], "inference_method": result["method"], "fg_ari": p["fg_ari"],
        "baseline_fg_ari": baseline,
        "mean_kept_slots": p.get("mean_kept_slots"),
        "mean_objects": mean_objects, "kept_vs_objects_r": p.get("kept_vs_objects_r"),
        "cache_vs_online_step_ratio": ratio,
        "protocol": protocol, "fg_ari_fullres": result["protocols"].get("fullres", {}).get("fg_ari"),
        "mbo_i": p["mbo_i"],
        "kept_histogram": p.get("kept_histogram"), "pictures": str(Path(result["out"]) / "vis"),
        "checkpoint": result["checkpoint"]["path"], "checkpoint_step": result["checkpoint"]["step"],
        **{k: p.get(k) for k in DIAGNOSTICS},
    }


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo pipeline into cfg.out; returns (and writes to OUT/results.json) the results dict."""
    from adaslot.data.datasets import open_dataset
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.evaluate import EvalDataset, EvalItem, patch_ceiling, trivial_baseline
    from adaslot.store.writer import run_cache_features
    from adaslot.train import run_train

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    data, store = out / "data", out / "features" / "train.zarr"
    times: dict[str, float] = {}
    t_all = time.perf_counter()
    # normal / quick: a fresh run every time. long: a rerun resumes the stage runs from their checkpoints
    # (train refuses if the settings differ), so an interrupted hour is not lost.
    fresh = ("stage1", "stage2") if cfg.profile != "long" else ()
    for old in (*fresh, "eval", "eval-shipped"):
        shutil.rmtree(out / old, ignore_errors=True)

    t = time.perf_counter()
    _say(cfg, f"[bold]1/6 make-synthetic[/] -> {data}")
    side = cfg.data.image_size
    movi = cfg.dataset == "movi"
    syn = run_make_synthetic(cfg.data.replace(out=str(data), seed=cfg.seed, overwrite=True,
                                              progress=cfg.progress))
    times["make_synthetic"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(cfg, f"[bold]2/6 cache-features[/] ({get_preset(PRESET).encoder}) -> {store}")
    run_cache_features(cfg.cache.replace(out=str(store), data=data_spec(cfg, data, "train"),
                                         encoder=get_preset(PRESET).encoder, image_size=side,
                                         progress=cfg.progress))
    times["cache_features"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(cfg, f"[bold]3/6 train stage 1[/] ({cfg.stage1_steps} steps) -> {out / 'stage1'}")
    s1 = run_train(cfg.stage_config(1, out / "stage1", store, None))
    times["train_stage1"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(cfg, f"[bold]4/6 train stage 2[/] ({cfg.stage2_steps} steps, warm start) -> {out / 'stage2'}")
    s2 = run_train(cfg.stage_config(2, out / "stage2", store, s1["checkpoint"]))
    specs = {stage: RunSpec.load(out / f"stage{stage}") for stage in (1, 2)}  # the runs as they trained
    times["train_stage2"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(cfg, "[bold]5/6 eval[/] on the val split")
    res = _eval(Path(s2["checkpoint"]), data, out / "eval", cfg)
    protocol = headline_protocol(cfg)
    val = open_dataset(data_spec(cfg, data, "val"), side)
    k_max = get_preset(PRESET).num_slots_stage2
    score_side = 128 if movi else 224  # the headline protocol's GT side
    gt = EvalDataset(val, with_images=False) if movi else val  # MOVi: a reader with CocoDataset's interface
    base = trivial_baseline(gt, k_max, side=score_side)
    ceiling = patch_ceiling(gt, grid=side // 8, side=score_side)
    if movi:  # objects visible in each val frame
        counts = [len(f.masks) for f in (gt[i] for i in range(len(gt))) if isinstance(f, EvalItem)]
        mean_objects = sum(counts) / max(1, len(counts))
    else:
        mean_objects = syn["val_objects"] / max(1, syn["val_images"])
    times["eval"] = time.perf_counter() - t

    t = time.perf_counter()
    _say(cfg, "[bold]6/6 step time[/]: online (images -> encoder) vs from the cache")
    ratio = step_time_ratio(cfg, specs[1], data, cfg.ratio_steps)
    times["step_time_ratio"] = time.perf_counter() - t

    results: dict[str, Any] = _summary(res, base["best"], mean_objects, ratio["ratio"], protocol)
    results.update({
        "dataset": cfg.dataset,
        "method": method_name(specs[2]),
        "baseline": base, "patch_ceiling_fg_ari": ceiling, "step_times": ratio,
        "profile": cfg.profile, "config": cfg.to_dict(), "threads": torch.get_num_threads(),
        "stage1_final_loss": _final_loss(s1["loss"], out / "stage1"),
        "stage2_final_loss": _final_loss(s2["loss"], out / "stage2"),
    })
    shipped_path = DEMO_CHECKPOINT if cfg.shipped is None else (Path(cfg.shipped) if cfg.shipped else None)
    if movi:  # the shipped checkpoint is the shape demo's
        shipped_path = None
    if shipped_path is not None and shipped_path.is_file():
        t = time.perf_counter()
        _say(cfg, f"shipped checkpoint {shipped_path} on the same val split")
        try:
            sres = _eval(shipped_path, data, out / "eval-shipped", cfg)
            results["shipped"] = _summary(sres, base["best"], mean_objects, ratio["ratio"], protocol)
        except AdaslotError as e:
            # e.g. a checkpoint made before a change of the demo encoder: this run's results still stand
            results["shipped"] = None
            _say(cfg, f"[yellow]shipped checkpoint skipped: {e}[/]")
        times["eval_shipped"] = time.perf_counter() - t
    else:
        results["shipped"] = None
        if shipped_path is not None:
            _say(cfg, f"[yellow]no shipped checkpoint at {shipped_path}; skipped[/]")
    if cfg.profile == "long" and cfg.export_assets and not movi:
        written = export_assets(Path(s2["checkpoint"]), res, results, out / "assets")
        results["assets"] = install_assets(Path(written["dir"]), ASSETS)
    times["total"] = time.perf_counter() - t_all
    results["seconds"] = {k: round(v, 1) for k, v in times.items()}
    write_json(out / "results.json", results)
    results["results_path"] = str(out / "results.json")
    return results


def _final_loss(loss: float, run: Path) -> float | None:
    """The run's last training loss: train's return value, or (a rerun that found the stage complete
    returns NaN, having taken no step) the last loss logged in run/metrics.jsonl."""
    from adaslot.train import read_metrics

    if loss == loss:
        return loss
    rows = [r for r in read_metrics(run) if "loss" in r]
    return rows[-1]["loss"] if rows else None


def export_assets(checkpoint: Path, eval_result: dict[str, Any], results: dict[str, Any], dest: Path
                  ) -> dict[str, str]:
    """Write the shipped files: demo-stage2.pt (model weights + configs, no optimiser state), demo-config.json
    (model, train and demo configs, feature contract, method), demo-metrics.json (this run's results),
    demo-result.png (the first four eval pictures, stacked), demo-count-confusion.png (kept slots vs
    objects)."""
    from adaslot.checkpoint import load_checkpoint, save_checkpoint

    dest.mkdir(parents=True, exist_ok=True)
    payload = load_checkpoint(checkpoint)
    slim = {k: v for k, v in payload.items() if k not in ("optimizer", "rng", "loader")}
    save_checkpoint(dest / DEMO_CHECKPOINT.name, slim)
    config = {k: payload.get(k) for k in ("stage", "step", "encoder", "model_config", "feature_contract",
                                          "train_config")}
    config["demo_config"] = results["config"]
    demo = DemoConfig.from_dict(results["config"]).replace(profile="long")  # the run whose files ship
    config["command"] = shlex.join(["adaslot", "demo", *to_flags(demo)])
    config["method"] = results["method"]
    write_json(dest / "demo-config.json", config)
    metrics = {k: v for k, v in results.items() if k not in ("config", "shipped")}
    write_json(dest / "demo-metrics.json", metrics)
    pictures = sorted((Path(eval_result["out"]) / "vis").glob("*.png"))[:4]
    if pictures:  # the first four val images, stacked: no picking of good examples
        from PIL import Image

        from adaslot import viz

        tiles = [Image.open(p).convert("RGB") for p in pictures]
        sheet = Image.new("RGB", (max(t.width for t in tiles), sum(t.height for t in tiles)), "white")
        y = 0
        for tile in tiles:
            sheet.paste(tile, (0, y))
            y += tile.height
        viz.save_png(sheet, dest / "demo-result.png", optimize=True)
    if eval_result.get("count_confusion_png"):
        shutil.copyfile(eval_result["count_confusion_png"], dest / "demo-count-confusion.png")
    return {"checkpoint": str(dest / DEMO_CHECKPOINT.name), "dir": str(dest)}


def install_assets(src: Path, dest: Path) -> dict[str, str]:
    """Copy the files `export_assets` wrote to `src` into `dest` (the package's assets folder, for `--long`),
    each replaced atomically."""
    for path in sorted(src.iterdir()):
        with atomic_path(dest / path.name) as tmp:
            shutil.copyfile(path, tmp)
    return {"checkpoint": str(dest / DEMO_CHECKPOINT.name), "dir": str(dest)}


def print_results(results: dict[str, Any]) -> None:
    """The results table (this run and the shipped checkpoint) and where the pictures are."""
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    shipped = results.get("shipped")
    table = Table(title=f"adaslot demo ({results.get('dataset', 'synthetic')}, {results['profile']}) - val "
                  f"split, {results.get('protocol', PROTOCOL)} protocol")
    table.add_column("metric")
    table.add_column("this run")
    if shipped:
        table.add_column("shipped checkpoint")
    rows = [("FG-ARI", "fg_ari"), ("FG-ARI (fullres)", "fg_ari_fullres"), ("mBO", "mbo_i"),
            ("baseline FG-ARI (trivial)", "baseline_fg_ari"), ("mean kept slots", "mean_kept_slots"),
            ("mean objects", "mean_objects"), ("kept vs objects r", "kept_vs_objects_r"),
            ("objects split over slots", "split_rate"), ("slots merging objects", "merge_rate")]
    for name, key in rows:
        table.add_row(name, fmt(results.get(key)), *([fmt(shipped.get(key))] if shipped else []))
    table.add_row("patch-grid ceiling FG-ARI", fmt(results["patch_ceiling_fg_ari"]),
                  *([fmt(results["patch_ceiling_fg_ari"])] if shipped else []))
    st = results["step_times"]
    table.add_row("step time online / cache", f"{st['ratio']:.2f}x ({st['online_s_per_step'] * 1e3:.0f} / "
                  f"{st['cache_s_per_step'] * 1e3:.0f} ms)", *(["-"] if shipped else []))
    console = Console()
    console.print(f"method: {results['method']}")
    console.print(table)
    console.print(f"pictures: {results['pictures']}"
                  + (f"  (shipped checkpoint: {shipped['pictures']})" if shipped else ""))
    console.print(f"results: {results.get('results_path')}   total {results['seconds']['total']:.0f} s")


def check_results(results: dict[str, Any]) -> None:
    """Raise AdaslotError if results.json lacks a key (used by tests and by the CLI before printing)."""
    missing = [k for k in (*RESULT_KEYS, "shipped") if k not in results]
    if missing:
        raise AdaslotError(f"demo results lack {missing}")
