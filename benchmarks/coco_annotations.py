"""Opening a COCO-train-sized annotation file: load time and peak RSS of `CocoDataset` on it.

Writes an instances json with COCO train 2017's structure and size (118 287 images, 860 001 annotations with
polygon segmentations of 8-40 vertices, 80 categories; synthetic content, about the real file's 448 MB) and
opens it in fresh processes (one per measurement, so each peak RSS is its own):
  - `CocoDataset(images, annotations)`: json + pycocotools index (what eval, segment and training need);
  - the image list alone (`CocoDataset(..., annotations=False)`): what `cache-features` of a split needs
    (file names, ids, sizes), read without parsing the annotations (adaslot/data/coco_index.py).
Prints both and their ratio; results go to docs/results/coco_annotations.json (or --json).

    .venv/bin/python benchmarks/coco_annotations.py [--images 118287] [--annotations 860001] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import resource, sys, time
t = time.perf_counter()
from adaslot.data.coco import CocoDataset
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
ds = CocoDataset(sys.argv[1], sys.argv[2], annotations=sys.argv[3] == "1")
dt = time.perf_counter() - t0
print(len(ds), ds.num_listed, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, before)
"""


def write_annotations(path: Path, images: int, annotations: int, seed: int = 0) -> int:
    """Write a COCO-format instances json of that size (COCO train 2017's key order) -> bytes written."""
    rng = np.random.default_rng(seed)
    # 2 000 distinct polygons, reused: parsing cost depends on the text's size and structure, not on values
    polys = []
    for _ in range(2000):
        k = int(rng.integers(8, 41))
        xy = rng.uniform(0, 480, 2 * k)
        polys.append("[[" + ",".join(f"{v:.2f}" for v in xy) + "]]")
    owner = np.sort(rng.integers(0, images, annotations))  # annotations grouped by image, as in COCO
    cats = rng.integers(1, 81, annotations)
    wh = rng.choice([(640, 480), (480, 640), (640, 427), (500, 375)], images)
    with path.open("w") as f:
        f.write('{"info": {"description": "synthetic COCO-train-sized annotations"}, "licenses": [], ')
        f.write('"images": [')
        f.write(", ".join(
            f'{{"license": 1, "file_name": "{i + 1:012d}.jpg", "coco_url": "", "height": {int(h)}, '
            f'"width": {int(w)}, "date_captured": "2013-11-14 11:18:45", "flickr_url": "", "id": {i + 1}}}'
            for i, (w, h) in enumerate(wh)))
        f.write('], "annotations": [')
        for start in range(0, annotations, 100_000):
            stop = min(start + 100_000, annotations)
            f.write((", " if start else "") + ", ".join(
                f'{{"segmentation": {polys[j % 2000]}, "area": 1234.5, "iscrowd": 0, '
                f'"image_id": {int(owner[j]) + 1}, "bbox": [10.0, 20.0, 100.5, 80.25], '
                f'"category_id": {int(cats[j])}, "id": {j + 1}}}' for j in range(start, stop)))
        f.write('], "categories": [')
        f.write(", ".join(f'{{"supercategory": "thing", "id": {c}, "name": "class{c}"}}'
                          for c in range(1, 81)))
        f.write("]}")
    return path.stat().st_size


def measure(images_dir: Path, ann: Path, annotations: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", CHILD, str(images_dir), str(ann), "1" if annotations else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()
    return {"usable": int(out[0]), "listed": int(out[1]), "seconds": float(out[2]),
            "peak_rss_mb": float(out[3]), "rss_before_mb": float(out[4])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=118_287)
    p.add_argument("--annotations", type=int, default=860_001)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "docs" / "results" / "coco_annotations.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("ADASLOT_BENCH_TMP")) as t:
        tmp = Path(t)
        ann = tmp / "instances_train2017.json"
        t0 = time.perf_counter()
        size = write_annotations(ann, args.images, args.annotations)
        print(f"wrote {ann.name}: {size / 1e6:.0f} MB in {time.perf_counter() - t0:.0f} s")
        images_dir = tmp / "train2017"
        images_dir.mkdir()
        for i in range(args.images):  # empty files: only the names are looked at when opening
            (images_dir / f"{i + 1:012d}.jpg").touch()
        full, light = [], []
        for _ in range(args.repeats):  # alternating: both see the same machine load
            full.append(measure(images_dir, ann, True))
            light.append(measure(images_dir, ann, False))
    med = {k: {m: statistics.median(r[m] for r in runs) for m in ("seconds", "peak_rss_mb", "rss_before_mb")}
           for k, runs in (("full", full), ("images_only", light))}
    assert full[0]["usable"] == light[0]["usable"] == args.images, (full[0], light[0])
    result = {
        "title": "COCO-train-sized annotation file",
        "benchmark": "benchmarks/coco_annotations.py",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f} at the end",
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images, "annotations": args.annotations, "json_mb": round(size / 1e6, 1),
        "rows": [
            {"open": "CocoDataset (json + pycocotools index)", "seconds": med["full"]["seconds"],
             "peak_rss_mb": med["full"]["peak_rss_mb"],
             "added_rss_mb": med["full"]["peak_rss_mb"] - med["full"]["rss_before_mb"],
             "runs_s": [r["seconds"] for r in full]},
            {"open": "image list only (cache-features)", "seconds": med["images_only"]["seconds"],
             "peak_rss_mb": med["images_only"]["peak_rss_mb"],
             "added_rss_mb": med["images_only"]["peak_rss_mb"] - med["images_only"]["rss_before_mb"],
             "runs_s": [r["seconds"] for r in light]},
        ],
    }
    for row in result["rows"]:
        print(f"{row['open']}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB "
              f"({row['added_rss_mb']:.0f} MB above the imports) "
              f"(runs {row['runs_s']})")
    light, full_ = med["images_only"], med["full"]
    print(f"ratio open time, image list only / CocoDataset = {light['seconds'] / full_['seconds']:.3f}; "
          f"peak RSS {light['peak_rss_mb'] / full_['peak_rss_mb']:.3f}")
    added = [r["added_rss_mb"] for r in result["rows"]]
    print(f"ratio RSS added by opening, image list only / CocoDataset = {added[1] / max(added[0], 1e-9):.3f}")
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
