"""What `adaslot eval` shows and writes besides metrics.json: per-image pictures and label PNGs, the count
confusion heat map, and the terminal tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from adaslot.evaluate.masks import gt_at_side, labels_at_side, labels_full_image
from adaslot.evaluate.scoring import PROTOCOL_SIDE, ImageResult
from adaslot.files import atomic_path, write_json
from adaslot.metrics import overlap_free_labels


class ImageSaver:
    """Per-image side outputs: `--save-masks` label PNGs (+ masks/crop_boxes.json), `--num-vis` grids."""

    def __init__(self, out_dir: Path, save_masks: bool, num_vis: int) -> None:
        self.out_dir, self.save_masks, self.num_vis = out_dir, save_masks, num_vis
        self.boxes: dict[str, Any] = {}
        self.vis_done = 0

    def __call__(self, r: ImageResult) -> None:
        from adaslot import viz

        item = r.item
        if self.save_masks:
            labels = labels_full_image(r.alpha_grid, item.geometry)
            viz.save_label_png(self.out_dir / "masks" / f"{item.image_id:012d}.png", labels)
            top, left, bottom, right = item.geometry.crop_region_original()
            self.boxes[str(item.image_id)] = {
                "file": Path(item.file).name, "height": item.geometry.orig_h, "width": item.geometry.orig_w,
                "crop_top_left_bottom_right": [top, left, bottom, right],
            }
        if self.vis_done < self.num_vis and item.image is not None:
            side = item.geometry.out_h
            gt_labels, _ = overlap_free_labels(gt_at_side(item.masks, side))
            pred = labels_at_side(r.alpha_grid, side)
            a = r.scores.get("adaslot") or next(iter(r.scores.values()))
            title = f"image {item.image_id}  FG-ARI {100 * a['fg_ari']:.1f}  mBO {100 * a['mbo_i']:.1f}"
            if r.keep is not None:
                title += f"  kept {int(r.keep.sum())}/{len(r.keep)}"
            into = r.merged_into
            merged = 0 if into is None else int((into != np.arange(len(into))).sum())
            if merged:
                title += f" ({merged} merged)"
            masks = r.slot_masks if r.slot_masks is not None else r.alpha_grid
            img = viz.slot_grid(item.image.float().cpu().numpy(), gt_labels, pred,
                                masks.float().cpu().numpy(), r.keep, title, r.merged_into)
            viz.save_png(img, self.out_dir / "vis" / f"{item.image_id:012d}.png")
            self.vis_done += 1

    def finish(self) -> None:
        if self.save_masks:
            write_json(self.out_dir / "masks" / "crop_boxes.json", self.boxes)


ROWS = (("fg_ari", "FG-ARI"), ("mbo_i", "mBO^i"), ("mbo_c", "mBO^c"), ("miou", "mIoU"),
        ("mask_corloc", "mask CorLoc"),
        ("mean_objects", "objects"), ("mean_kept_slots", "kept slots"),
        ("kept_vs_objects_r", "r(kept, #objects)"), ("mean_active_slots", "active slots"),
        ("active_vs_objects_r", "r(active, #objects)"), ("split_rate", "split objects"),
        ("merge_rate", "merge slots"), ("background_slots", "background slots"), ("num_images", "images"),
        ("num_skipped", "images without GT"))
PERCENT = {"fg_ari", "mbo_i", "mbo_c", "miou", "mask_corloc", "split_rate", "merge_rate"}
CONFUSION_PNG = "count_confusion.png"


def save_count_confusion(protocols: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Heat map of every protocol's `count_confusion` side by side (rows: GT objects, columns: slots; colour:
    share of the row's images, number: images), the line slots = objects + 1 (one background slot) drawn
    in. Written atomically; None (nothing written) if no protocol has the matrix."""
    from matplotlib.figure import Figure  # the Agg canvas: no display needed

    panels = {p: s["count_confusion"] for p, s in protocols.items()
              if s.get("count_confusion", {}).get("counts")}
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 4.0), layout="constrained")
    for ax, (name, conf) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items(), strict=True):
        counts = np.asarray(conf["counts"], dtype=np.float64)
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, origin="lower", aspect="auto")
        for (o, k), n in np.ndenumerate(counts):
            if n:
                ax.text(k, o, f"{int(n)}", ha="center", va="center", fontsize=8,
                        color="white" if share[o, k] > 0.6 else "black")
        rows = np.arange(counts.shape[0])
        ax.plot(rows + 1, rows, color="tab:orange", lw=1, ls="--", label="objects + 1")
        ax.set_xlim(-0.5, counts.shape[1] - 0.5)
        ax.set_ylim(-0.5, counts.shape[0] - 0.5)
        ax.set_xlabel(f"{conf['slots']} slots")
        ax.set_ylabel("GT objects")
        s = {k: format_value("x", protocols[name].get(k)) for k in (
            f"{conf['slots']}_vs_objects_r", f"mean_{conf['slots']}_slots", "mean_objects")}
        r, slots, objects = s.values()
        ax.set_title(f"{name}: r {r}, {slots} slots vs {objects} objects", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def format_value(key: str, v: Any) -> str:
    """A metric as the tables show it: percent for the scores, 2 decimals for other floats, '-' if none."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if key in PERCENT:
        return f"{100 * v:.1f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def print_results(result: dict[str, Any]) -> None:
    """A rich table: one column per protocol, metrics in percent (as the papers report them)."""
    from rich.console import Console
    from rich.table import Table

    protos = result["protocols"]
    title = f"adaslot eval: {result.get('num_images', '?')} images, keep: {result.get('keep_mode', '')}"
    table = Table(title=title)
    table.add_column("metric")
    for p in protos:
        table.add_column(p + (f" ({PROTOCOL_SIDE[p]} px)" if p in PROTOCOL_SIDE else " (original px)"),
                         justify="right")
    for key, label in ROWS:
        if any(key in s for s in protos.values()):
            table.add_row(label, *(format_value(key, s.get(key)) for s in protos.values()))
    console = Console()
    console.print(table)
    name = "adaslot" if "adaslot" in protos else next(iter(protos))
    per = protos[name].get("per_object_count")
    if per:
        slots = protos[name]["count_confusion"]["slots"]
        by_count = Table(title=f"per GT object count ({name} protocol)")
        for col in ("objects", "images", "FG-ARI", "mBO^i", "split objects", f"{slots} slots"):
            by_count.add_column(col, justify="right")
        for n, s in per.items():
            by_count.add_row(n, str(s["num_images"]), format_value("fg_ari", s["fg_ari"]),
                             format_value("mbo_i", s["mbo_i"]), format_value("split_rate", s["split_rate"]),
                             format_value("mean", s["mean_slots"]))
        console.print(by_count)
    if "PROXY" in result.get("source", ""):
        console.print(f"[yellow]{result['source']}[/yellow]")
    if result.get("skipped_images"):
        console.print(f"skipped {len(result['skipped_images'])} unusable images (listed in metrics.json)")
    missing = result.get("dataset", {}).get("skipped_by_reason", {}).get("missing", 0)
    if missing:  # listed in the annotations but not on disk: never reach the eval loop
        console.print(f"{missing} annotated images missing on disk (metrics.json: dataset)")
    if "out" in result:
        console.print(f"wrote {result['out']}/metrics.json")
