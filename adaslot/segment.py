"""`adaslot segment CKPT INPUT... --out DIR`: a trained model on any images, no annotations needed.

inputs (files, folders, globs) -> image list -> batches (decoded in loader workers) -> frozen encoder + slot
model (`api.Segmenter`) -> per image, under OUT:
  masks/NAME.png    slot id per pixel at the original size (8-bit; the same file `eval --save-masks` writes)
  vis/NAME.png      with --vis: network input | slots | overlay | one alpha tile per slot
  slots/NAME.npz    with --save-slots: slots [K, D], kept [K]; gathered at the end into slots.npz
  done.jsonl        one line per finished image (written after its files): size, crop region, kept slots,
                    segments and groups (the slot each slot merged into)
  manifest.json     the run (checkpoint, encoder, seed, inference method), then at the end every image in
                    input order and the skipped files with their reason
The masks are the label maps of the inference method the checkpoint recorded (keep rule and slot merging;
docs/adaptive.md), or of the one the --selector / --merge-slots ... flags make of it.
NAME is the image's path relative to the deepest folder holding every input, with the suffix .png (images of
one folder that differ only in their suffix keep it: `a.jpg.png`, `a.png.png`). Every file is written under a
temporary name and renamed, and an image counts as done only when its line is in done.jsonl and its files
exist, so rerunning the same command after a kill continues where it stopped.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adaslot.api import Segmenter, load, prepare_image
from adaslot.config.segment import IMAGE_SUFFIXES, SegmentConfig
from adaslot.data.coco import keep_list, strict_error
from adaslot.data.transforms import ImageLoadError
from adaslot.device import resolve_workers
from adaslot.errors import AdaslotError
from adaslot.evaluate.masks import alpha_grids, labels_at_side
from adaslot.files import atomic_path, file_sha256, write_json
from adaslot.model.merge import sum_groups
from adaslot.progress import progress_bar

DONE_LOG, MANIFEST, SLOTS_FILE = "done.jsonl", "manifest.json", "slots.npz"
OUTPUT_DIRS = ("masks", "vis", "slots")


def find_images(inputs: list[str], recursive: bool = True, exclude: str | None = None
                ) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """INPUT arguments -> ([(image path, NAME)], [{"file", "reason": "missing", "detail"}] for inputs that
    name nothing).

    A folder gives its files with an image suffix (IMAGE_SUFFIXES), sorted, recursively unless told not to;
    a file is always tried, whatever its suffix; a glob (`*`, `?`, `[`, `**`) gives what it matches (folders
    among the matches are searched like folders). A file reached twice is taken once; files under the
    folder `exclude` (the output folder, when it sits among the inputs) are left out."""
    found: list[tuple[str, str]] = []  # (absolute path, the root NAME is relative to)
    missing: list[dict[str, str]] = []
    for arg in inputs:
        path = os.path.abspath(os.path.expanduser(arg))
        if os.path.isdir(path):
            found += [(f, path) for f in _folder_images(path, recursive)]
        elif os.path.isfile(path):
            found.append((path, os.path.dirname(path)))
        elif glob.has_magic(arg):
            root = _glob_root(path)
            matches = sorted(glob.glob(path, recursive=True))
            for m in matches:
                found += [(f, root) for f in (_folder_images(m, recursive) if os.path.isdir(m) else [m])]
            if not matches:
                missing.append(_skip(arg, "missing", "the pattern matches no file"))
        else:
            missing.append(_skip(arg, "missing", "no such file or folder"))
    unique = list(dict.fromkeys(os.path.normpath(f) for f, _ in found))
    if exclude is not None:
        skip_dir = os.path.join(os.path.abspath(exclude), "")
        unique = [f for f in unique if not f.startswith(skip_dir)]
    roots = {os.path.normpath(f): r for f, r in found}
    if not unique:
        return [], missing
    base = os.path.commonpath([roots[f] for f in unique])
    rel = [os.path.relpath(f, base) for f in unique]
    stems = Counter(os.path.splitext(r)[0] for r in rel)
    names = [(os.path.splitext(r)[0] if stems[os.path.splitext(r)[0]] == 1 else r) + ".png" for r in rel]
    return list(zip(unique, names, strict=True)), missing


def _skip(file: str, reason: str, detail: str = "") -> dict[str, str]:
    return {"file": file, "reason": reason, "detail": detail}


def _folder_images(folder: str, recursive: bool) -> list[str]:
    pattern = os.path.join(glob.escape(folder), *(("**", "*") if recursive else ("*",)))
    return sorted(f for f in glob.glob(pattern, recursive=recursive)
                  if os.path.isfile(f) and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES)


def _glob_root(pattern: str) -> str:
    """The folder before the first path part with a wildcard: `a/b/*/c*.jpg` -> `a/b`."""
    parts = Path(pattern).parts
    fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    return str(Path(*parts[:fixed])) if fixed else os.sep


class ImageFiles(Dataset):
    """Paths -> {"ok": True, "index", "image" [3, S, S], "geometry", "stamp"} or {"ok": False, "index",
    "reason", "detail"}: decoding and the transform run in the loader workers; a bad file never raises here.
    The stamp (size, mtime) is taken before reading, so a file changed meanwhile is not taken as done."""

    def __init__(self, paths: list[str], side: int) -> None:
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            stamp = _stamp(self.paths[i])
            x, geom, _ = prepare_image(self.paths[i], self.side)
        except ImageLoadError as e:
            return {"ok": False, "index": i, "reason": e.reason, "detail": e.detail}
        except (AdaslotError, OSError) as e:  # e.g. an image of size 0, a file deleted since it was listed
            return {"ok": False, "index": i, "reason": "unreadable", "detail": str(e)}
        return {"ok": True, "index": i, "image": x, "geometry": geom, "stamp": stamp}


def read_done(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """done.jsonl -> {(image path, NAME): its latest record}; a line cut short by a kill is ignored."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    log = out / DONE_LOG
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "file" in rec and "name" in rec:
                records[rec["file"], rec["name"]] = rec
    return records


def _outputs(cfg: SegmentConfig, name: str) -> list[str]:
    """The files (relative to OUT) image NAME needs before it counts as done."""
    files = [f"masks/{name}"]
    if cfg.vis:
        files.append(f"vis/{name}")
    if cfg.save_slots:
        files.append(f"slots/{os.path.splitext(name)[0]}.npz")
    return files


def _stamp(path: str) -> list[int]:
    """[size, mtime in ns] of an image file: a file replaced under the same name is segmented again."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _is_done(cfg: SegmentConfig, out: Path, record: dict[str, Any] | None) -> bool:
    return (record is not None and record.get("stamp") == _stamp(record["file"])
            and all((out / p).is_file() for p in _outputs(cfg, record["name"])))


def _start(cfg: SegmentConfig, out: Path, run: dict[str, Any]) -> None:
    """Refuse an OUT written by another run unless --overwrite (then clear it); record this run."""
    old = out / MANIFEST
    if old.is_file():
        previous = json.loads(old.read_text()).get("run")
        if previous != run and not cfg.overwrite:
            what = next((k for k in run if previous is None or previous.get(k) != run[k]), "run")
            raise AdaslotError(f"{out} holds the output of another segment run ({what} differs); use another "
                               "--out, or --overwrite to replace it")
    if cfg.overwrite and (old.is_file() or (out / DONE_LOG).is_file()):
        import shutil

        for d in OUTPUT_DIRS:
            shutil.rmtree(out / d, ignore_errors=True)
        for f in (DONE_LOG, SLOTS_FILE):
            (out / f).unlink(missing_ok=True)
    write_json(old, {"run": run, "complete": False, "config": cfg.to_dict()})


def run_segment(cfg: SegmentConfig) -> dict[str, Any]:
    """Run `adaslot segment`; returns the manifest plus "out", "new" (images segmented by this call)."""
    cfg.validate()
    out = Path(cfg.out)
    images, skipped = find_images(cfg.inputs, cfg.recursive, exclude=cfg.out)
    if skipped and cfg.strict:
        raise strict_error(skipped[0]["file"], skipped[0]["reason"], skipped[0]["detail"])
    if not images:
        raise AdaslotError(f"no images found in {' '.join(cfg.inputs)} (folders are searched for "
                           f"{', '.join(IMAGE_SUFFIXES)})")
    segmenter = load(cfg.checkpoint, cfg.encoder_weights, cfg.device, seed=cfg.seed, **cfg.method.given())
    contract = segmenter.features.contract
    run = {"checkpoint_sha256": file_sha256(cfg.checkpoint), "encoder": contract["encoder"],
           "encoder_weights_sha256": contract["weights_sha256"], "input_size": contract["input_size"],
           "seed": cfg.seed, "method": segmenter.method}
    _start(cfg, out, run)
    done = read_done(out)
    # rewrite the log with its whole lines only (a line cut short by a kill would swallow the next one)
    with atomic_path(out / DONE_LOG) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    todo = [(f, n) for f, n in images if not _is_done(cfg, out, done.get((f, n)))]
    new = _segment_images(cfg, segmenter, out, todo, len(images), skipped)
    done = read_done(out)
    records = [done[f, n] for f, n in images if (f, n) in done]
    if cfg.save_slots and records:
        _gather_slots(out, records)
    manifest = {"run": run, "complete": True, "config": cfg.to_dict(),
                "checkpoint": {"path": str(Path(cfg.checkpoint).resolve()), **segmenter.info},
                "num_images": len(records), "num_skipped": len(skipped),
                "images": records, "skipped": skipped}
    write_json(out / MANIFEST, manifest)
    return {**manifest, "out": str(out), "new": new}


def _segment_images(cfg: SegmentConfig, segmenter: Segmenter, out: Path, todo: list[tuple[str, str]],
                    total: int, skipped: list[dict[str, str]]) -> int:
    """Segment `todo` in batches, writing each image's files then its done.jsonl line; bad files go to
    `skipped` (or stop the run with --strict). Returns the number of images segmented."""
    dev = segmenter.device
    loader = DataLoader(ImageFiles([f for f, _ in todo], segmenter.image_size), batch_size=cfg.batch_size,
                        num_workers=resolve_workers(cfg.workers), collate_fn=keep_list,
                        pin_memory=dev.type == "cuda")
    new = 0
    with progress_bar("segment", cfg.progress, unit="img") as bar, open(out / DONE_LOG, "a") as log:
        task = bar.add_task("segment", total=total, completed=total - len(todo), resumed=total - len(todo))
        for batch in loader:
            good = [b for b in batch if b["ok"]]
            for b in batch:
                if not b["ok"]:
                    skip = _skip(todo[b["index"]][0], b["reason"], b["detail"])
                    if cfg.strict:
                        raise strict_error(skip["file"], skip["reason"], skip["detail"])
                    skipped.append(skip)
            if good:
                x = torch.stack([b["image"] for b in good])
                output = segmenter.forward(x)
                files = [todo[b["index"]][0] for b in good]
                results = segmenter.postprocess(output, [b["geometry"] for b in good], files)
                grids = alpha_grids(output.alpha) if cfg.vis else None
                for j, (b, r) in enumerate(zip(good, results, strict=True)):
                    name = todo[b["index"]][1]
                    _write_image(cfg, out, name, r, x[j], grids[j] if grids is not None else None)
                    top, left, bottom, right = r.region
                    log.write(json.dumps({
                        "file": r.source, "name": name, "mask": f"masks/{name}", "height": r.labels.shape[0],
                        "width": r.labels.shape[1], "crop_top_left_bottom_right": [top, left, bottom, right],
                        "kept_slots": r.num_kept, "segments": r.num_segments, "groups": r.groups.tolist(),
                        "num_slots": len(r.kept), "stamp": b["stamp"]}) + "\n")
                    log.flush()
                new += len(good)
            bar.advance(task, len(batch))
    return new


def _write_image(cfg: SegmentConfig, out: Path, name: str, r: Any, image: torch.Tensor,
                 grid: torch.Tensor | None) -> None:
    """One image's files (each atomically): slot piece, picture, label PNG."""
    from adaslot import viz

    if cfg.save_slots:
        with atomic_path(out / "slots" / f"{os.path.splitext(name)[0]}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, slots=r.slots, kept=r.kept)
    if grid is not None:
        side = image.shape[-1]
        title = f"{Path(name).name}  kept {r.num_kept}/{len(r.kept)}, {r.num_segments} segments"
        segments = grid if r.groups is None else sum_groups(grid[None], torch.from_numpy(r.groups)[None])[0]
        img = viz.slot_grid(image.float().numpy(), None, labels_at_side(segments, side),
                            grid.float().cpu().numpy(), r.kept, title, r.groups)
        viz.save_png(img, out / "vis" / name)
    viz.save_label_png(out / "masks" / name, r.labels)


def _gather_slots(out: Path, records: list[dict[str, Any]]) -> Path:
    """slots/*.npz of the finished images, in input order -> OUT/slots.npz (rewritten whole, atomically):
    slots [N, K, D] float32, kept [N, K] bool, paths [N] and masks [N] (str; np.load needs no pickle).
    Streamed one image at a time (adaslot/npzfile.py): memory does not grow with N."""
    from adaslot.npzfile import NpzWriter

    def piece(r: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        with np.load(out / "slots" / f"{os.path.splitext(r['name'])[0]}.npz") as p:
            return p["slots"], p["kept"]

    slots0, kept0 = piece(records[0])
    kept = np.zeros((len(records), *kept0.shape), kept0.dtype)

    def rows() -> Any:
        for i, r in enumerate(records):
            s, kept[i] = piece(r)
            yield s

    with atomic_path(out / SLOTS_FILE) as tmp, NpzWriter(tmp) as z:
        z.stream("slots", (len(records), *slots0.shape), slots0.dtype, rows())
        z.array("kept", kept)
        z.array("paths", np.array([r["file"] for r in records]))
        z.array("masks", np.array([r["mask"] for r in records]))
    return out / SLOTS_FILE
