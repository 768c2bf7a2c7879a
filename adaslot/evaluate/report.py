"""What `adaslot eval` shows and writes besides metrics.json: per-image pictures and label PNGs, and the
terminal table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from adaslot.evaluate.masks import gt_at_side, labels_at_side, labels_full_image
from adaslot.evaluate.scoring import PROTOCOL_SIDE, ImageResult
from adaslot.files import write_json
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
            img = viz.slot_grid(item.image.float().cpu().numpy(), gt_labels, pred,
                                r.alpha_grid.float().cpu().numpy(), r.keep, title)
            (self.out_dir / "vis").mkdir(parents=True, exist_ok=True)
            img.save(self.out_dir / "vis" / f"{item.image_id:012d}.png")
            self.vis_done += 1

    def finish(self) -> None:
        if self.save_masks:
            write_json(self.out_dir / "masks" / "crop_boxes.json", self.boxes)


ROWS = (("fg_ari", "FG-ARI"), ("mbo_i", "mBO^i"), ("mbo_c", "mBO^c"), ("miou", "mIoU"), ("corloc", "CorLoc"),
        ("mean_kept_slots", "kept slots"), ("kept_vs_objects_r", "r(kept, #objects)"),
        ("num_images", "images"), ("num_skipped", "images without GT"))
PERCENT = {"fg_ari", "mbo_i", "mbo_c", "miou", "corloc"}


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
    if "PROXY" in result.get("source", ""):
        console.print(f"[yellow]{result['source']}[/yellow]")
    if result.get("skipped_images"):
        console.print(f"skipped {len(result['skipped_images'])} unusable images (listed in metrics.json)")
    missing = result.get("dataset", {}).get("skipped_by_reason", {}).get("missing", 0)
    if missing:  # listed in the annotations but not on disk: never reach the eval loop
        console.print(f"{missing} annotated images missing on disk (metrics.json: dataset)")
    if "out" in result:
        console.print(f"wrote {result['out']}/metrics.json")
