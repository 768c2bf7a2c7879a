"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from adaslot.config import TrainConfig
from adaslot.config.base import to_flags
from adaslot.device import torch_threads  # noqa: F401 (the tests' import of it)
from adaslot.train import read_metrics

REPO = Path(__file__).resolve().parents[1]
# A tiny slot model on random-vit-tiny features: fast, same code paths as the reference sizes.
TINY_MODEL = {"slot_dim": 32, "input_mlp_hidden": 64, "slot_mlp_hidden": 64, "decoder_hidden": (64, 64),
              "selector_hidden": 32}
TINY_FLAGS = to_flags(TrainConfig(model_overrides=TINY_MODEL), only=("model_overrides",))  # --model K=V ...

Box = tuple[int, int, int, int]


def tiny_train(out: Path, **kw) -> TrainConfig:
    """The TrainConfig of a tiny, fast run into `out` (CPU, constant lr, a checkpoint every 2 steps)."""
    base = dict(out=str(out), model_overrides=dict(TINY_MODEL), num_slots=4, batch_size=4,
                lr_schedule="constant", lr=1e-3, log_every=1, ckpt_every=2, workers=0, device="cpu",
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def rle(mask: np.ndarray) -> dict:
    """A bool mask [H, W] as COCO compressed RLE (json-ready)."""
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode()
    return r


def write_coco(root: Path, images: list[tuple[int, int, list[tuple[Box, int, int]]]]) -> Path:
    """images: (height, width, [((y0, y1, x0, x1), category, iscrowd), ...]) -> root/{img/N.png, ann.json}
    with random pixels and box-shaped RLE annotations."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    js: dict = {"images": [], "annotations": [],
                "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    for i, (h, w, objs) in enumerate(images, start=1):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        js["images"].append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        for (y0, y1, x0, x1), cat, crowd in objs:
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = True
            js["annotations"].append({"id": len(js["annotations"]) + 1, "image_id": i, "category_id": cat,
                                      "iscrowd": crowd, "segmentation": rle(m), "area": float(m.sum()),
                                      "bbox": [x0, y0, x1 - x0, y1 - y0]})
    (root / "ann.json").write_text(json.dumps(js))
    return root


def break_annotation(ann_file: Path, index: int = 0) -> int:
    """Make annotation `index` of a COCO json malformed (an odd-length polygon); returns its id."""
    js = json.loads(ann_file.read_text())
    js["annotations"][index]["segmentation"] = [[1.0, 2.0, 3.0]]
    ann_file.write_text(json.dumps(js))
    return int(js["annotations"][index]["id"])


def shard_files(store: Path) -> dict[str, bytes]:
    """Every file of a zarr store's features array, by relative path: byte-identity of two stores."""
    base = store / "features" / "c"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def losses(run: Path) -> dict[int, float]:
    """{step: loss} of a run folder's metrics.jsonl."""
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def cli_command(*args: str) -> list[str]:
    """The `adaslot ...` command line through this checkout's cli.py shim (for subprocesses)."""
    return [sys.executable, str(REPO / "cli.py"), *args]


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
            ) -> tuple[int, str]:
    """Run `adaslot ARGS` in this process through `cli.main` -> (exit code, stripped stderr)."""
    code, _out, err = run_cli_output(args, monkeypatch, capsys)
    return code, err


def run_cli_output(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
                   ) -> tuple[int, str, str]:
    """Run `adaslot ARGS` in this process through `cli.main` -> (exit code, stdout, stripped stderr)."""
    from adaslot import cli

    monkeypatch.setattr(sys, "argv", ["adaslot", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    captured = capsys.readouterr()
    return e.value.code or 0, captured.out, captured.err.strip()


# ---- real faults for a child process (no mocks of the file system) ----

_LIMITED = """
import resource, runpy, sys
sys.path.insert(0, {repo!r})
limit = int(sys.argv.pop(1))
if limit >= 0:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "adaslot"
runpy.run_path({cli!r}, run_name="__main__")
"""


def faulty_cli(*args: str, fsize: int | None = None, prefix: tuple[str, ...] = (),
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `adaslot ARGS` in a child process (one torch thread) and return it finished (text stdout/stderr).

    fsize: RLIMIT_FSIZE in bytes: a write that would make a file larger fails with EFBIG, as on a full disk
    (root included; Python ignores the SIGXFSZ that would kill other programs). prefix: a command the child
    runs under (`read_only_prefix`)."""
    code = _LIMITED.format(repo=str(REPO), cli=str(REPO / "cli.py"))
    cmd = [*prefix, sys.executable, "-c", code, str(-1 if fsize is None else fsize), *args]
    return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)


def read_only_prefix(folder: Path) -> tuple[tuple[str, ...], str]:
    """How a child process sees `folder` read-only, and the fault it then meets.

    Root is not stopped by permissions, so as root: a read-only bind mount of `folder` in a private mount
    namespace of the child (`unshare -m`; gone with the child, never visible outside) -> "read-only file
    system (EROFS)". Otherwise chmod 0o555 (the caller restores it) -> "permission denied (EACCES)". Skips
    the test as root where unshare / mount are not allowed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return (), "permission denied (EACCES)"
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    prefix = ("unshare", "-m", "sh", "-c", mount, str(folder))
    try:
        probe = subprocess.run([*prefix, "sh", "-c", 'touch "$0/.probe"', str(folder)], capture_output=True,
                               timeout=30)
    except FileNotFoundError:
        probe = None
    if probe is None or probe.returncode == 0 or b"Read-only file system" not in probe.stderr:
        pytest.skip("root ignores chmod, and this machine allows no read-only bind mount (unshare -m)")
    return prefix, "read-only file system (EROFS)"


VOLATILE_ATTRS = ("summary", "source")  # run timings and where the images were: not part of the contents


def same_contents(a: str, b: str) -> bool:
    """True when two stores (zarr or HDF5) hold identical arrays and attributes (minus VOLATILE_ATTRS)."""
    from adaslot.store import open_store

    sa, sb = open_store(a), open_store(b)
    attrs_a = {k: v for k, v in sa.attrs.items() if k not in VOLATILE_ATTRS}
    attrs_b = {k: v for k, v in sb.attrs.items() if k not in VOLATILE_ATTRS}
    if attrs_a != attrs_b or sa.features.shape != sb.features.shape:
        return False
    if not (np.array_equal(sa.raw_image_ids, sb.raw_image_ids) and np.array_equal(sa.status, sb.status)):
        return False
    return all(np.array_equal(sa.read(x, y), sb.read(x, y)) for x, y in sa.chunk_bounds())


def first_step(cfg, feats):
    """One optimisation step of a freshly seeded AdaSlot(cfg) on `feats` [B, T, D] with fixed noise ->
    (stats, grads, params after the step): the same update is expected from the same features."""
    import torch

    from adaslot.model import AdaSlot
    from adaslot.train import NoiseSampler, TrainForward, optimisation_step

    torch.manual_seed(0)
    model = AdaSlot(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    slot_noise, gumbel = NoiseSampler(0, torch.device("cpu")).sample(len(feats), cfg, slice(0, len(feats)))
    stats = optimisation_step(TrainForward(model, 0.1, "fp32"), model, opt, feats, slot_noise, gumbel, 1.0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return stats, grads, {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_update(a, b) -> None:
    """Two first_step results agree: the loss to 1e-4, and Adam's first update (~lr * sign(grad)), where
    only near-zero gradients can flip between the two."""
    import torch

    assert a[0][0] == pytest.approx(b[0][0], rel=1e-4)
    diff = torch.cat([(a[2][k] - b[2][k]).abs().flatten() for k in a[2]])
    assert diff.max() <= 2e-3 and (diff > 1e-5).float().mean() < 1e-2
