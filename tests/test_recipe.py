"""The README's COCO recipe and scripts/slurm/coco.sbatch: every command parses with the real command-line
parser (a renamed or removed flag fails here), the recipe is complete, and it runs end to end at demo
scale."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
from helpers import REPO, TINY_FLAGS, run_cli

from adaslot.cli import app

SBATCH = REPO / "scripts" / "slurm" / "coco.sbatch"


def _section(title: str) -> str:
    return (REPO / "README.md").read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _commands(text: str) -> list[list[str]]:
    """Every `adaslot ...` command in the code blocks of `text` (continuation lines joined, comments and
    any launcher prefix such as `torchrun ... --no-python` or `srun` dropped) as argument lists."""
    out, blocks, current = [], [], None
    for line in text.splitlines():  # plain ``` blocks only (not python, bibtex)
        if line.startswith("```"):
            if current is None:
                current = [] if line == "```" else ["#"]
            else:
                blocks.append("\n".join(current)) if current[:1] != ["#"] else None
                current = None
        elif current is not None:
            current.append(line)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if "adaslot " not in line or " ... " in line:  # not a command, or one with a placeholder
                continue
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words[:-1])  # `--rdzv_id adaslot` is no command
                      if w == "adaslot" and not words[i + 1].startswith("-")]
            if starts:
                out.append(words[starts[-1]:])
    return out


def _sbatch_commands() -> list[list[str]]:
    text = SBATCH.read_text().replace("\\\n", " ")
    lines = [ln for ln in text.splitlines() if ln.startswith(("$RUN ", "srun "))]
    return [w[w.index("adaslot"):] for w in (shlex.split(ln) for ln in lines)]


def _parse(cmd: list[str]) -> dict:
    """Parse with the real CLI (click, generated from the config dataclasses); runs nothing."""
    group = typer.main.get_command(app)
    sub = group.get_command(None, cmd[1])
    assert sub is not None, f"no command {cmd[1]!r}"
    return sub.make_context(cmd[1], cmd[2:]).params


def _by_step(commands: list[list[str]]) -> dict[str, dict]:
    steps = {}
    for cmd in commands:
        p = _parse(cmd)
        key = cmd[1] + (f"-{p['split']}" if cmd[1] == "cache-features" else "") + \
            (f"-{p['stage']}" if cmd[1] == "train" else "")
        steps[key] = p
    return steps


@pytest.mark.parametrize("source", ["readme", "sbatch"])
def test_every_recipe_command_parses_and_the_recipe_is_complete(source):
    if source == "readme":
        cmds = _commands(_section("Reproduce COCO"))
        multi = _commands(_section("Several GPUs and Slurm"))
        multi_steps = _by_step(multi)
        assert list(multi_steps) == ["cache-features-train", "cache-features-val", "train-1", "train-2"]
        lines = [ln for ln in _section("Several GPUs and Slurm").replace("\\\n", " ").splitlines()
                 if "adaslot " in ln]
        launcher = "torchrun --standalone --nproc_per_node 8 --no-python adaslot"
        assert all(ln.startswith(launcher) for ln in lines)
    else:
        cmds = _sbatch_commands()
        assert all(ln.count("$RUN") <= 1 for ln in SBATCH.read_text().splitlines())
    steps = _by_step(cmds)
    assert list(steps) == ["cache-features-train", "cache-features-val", "train-1", "train-2", "eval"]
    train_store, val_store = steps["cache-features-train"]["out"], steps["cache-features-val"]["out"]
    assert steps["cache-features-train"]["encoder_weights"] and steps["cache-features-val"]["encoder_weights"]
    for stage in ("train-1", "train-2"):  # trained from the train store, validated from the val store
        p = steps[stage]
        assert p["from_cache"] == train_store and p["val_from_cache"] == val_store and p["val_every"] > 0
    assert steps["train-2"]["warmstart"] == f"{steps['train-1']['out']}/checkpoints/last.pt"
    assert steps["eval"]["checkpoint"] == f"{steps['train-2']['out']}/checkpoints/last.pt"
    assert steps["eval"]["encoder_weights"] and steps["eval"]["split"] == "val"


def test_every_readme_command_parses():
    """Beyond the recipe: every `adaslot` line in any README code block (sweep, checkpoints, segment)."""
    cmds = _commands((REPO / "README.md").read_text())
    assert len(cmds) >= 15
    for cmd in cmds:
        _parse(cmd)


def test_every_docs_command_parses():
    """The detail pages' commands too (docs/*.md), so a renamed flag is caught wherever it is quoted."""
    pages = sorted((REPO / "docs").glob("*.md"))
    cmds = [cmd for page in pages for cmd in _commands(page.read_text())]
    assert len(cmds) >= 15
    for cmd in cmds:
        _parse(cmd)


def test_the_online_line_names_the_encoder_weights():
    text = _section("Reproduce COCO").replace("\n", " ")
    assert re.search(r"Online training.*--dataset coco --root \S+ --encoder-weights \S+", text)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    assert "#SBATCH --gpus-per-node=8" in SBATCH.read_text()


@pytest.mark.e2e  # every command of the recipe, in order
def test_the_recipe_runs_at_demo_scale(tmp_path, monkeypatch, capsys):
    """The README's five commands at demo scale, run twice (a resubmitted Slurm job finds every step done):
    a tiny synthetic COCO root (4 train, 2 val images) for /data/coco, a random tiny ViT for the weights, a
    tiny model and two steps; the chain of files (stores, checkpoints, metrics.json) is the recipe's own."""
    from adaslot.data.make_synthetic import run_make_synthetic
    from adaslot.data.synthetic import SyntheticConfig

    coco = tmp_path / "coco"
    run_make_synthetic(SyntheticConfig(out=str(coco), num_train=4, num_val=2, image_size=224, seed=0,
                                   progress=False))
    monkeypatch.chdir(tmp_path)
    small = {"cache-features": ["--batch-size", "4", "--workers", "0"],
             "train": [*TINY_FLAGS, "--num-iters", "2", "--batch-size", "2", "--val-every", "2",
                       "--val-max-images", "2", "--workers", "0"],
             "eval": ["--num-vis", "0", "--workers", "0", "--protocol", "adaslot"]}
    drop = {"--encoder-weights": 1, "--batch-size": 1, "--workers": 1, "--val-every": 1, "--num-vis": 1}
    for cmd in _commands(_section("Reproduce COCO")) * 2:  # twice: a resubmitted job finds every step done
        args, i = [], 2
        while i < len(cmd):
            if cmd[i] in drop:
                i += 1 + drop[cmd[i]]
                continue
            args.append({"/data/coco": str(coco), "dino-vitb-16": "random-vit-tiny"}.get(cmd[i], cmd[i]))
            i += 1
        if cmd[1] == "train":
            args += ["--num-slots", "3" if "--warmstart" not in args else "4"]
        code, err = run_cli([cmd[1], *args, *small[cmd[1]], "--device", "cpu", "--no-progress"], monkeypatch,
                            capsys)
        assert code == 0, (cmd[1], err)
    metrics = json.loads(Path("cache/runs/stage2/eval/metrics.json").read_text())
    assert metrics["num_images"] == 2 and "mask_corloc" in metrics["protocols"]["adaslot"]
    log = Path("cache/runs/stage1/metrics.jsonl").read_text().splitlines()
    assert [ln for ln in log if "val/" in ln], "stage 1 validated from the val store"


def test_store_size_estimate_matches_a_written_store(train_store):
    """scripts/coco_estimates.py sizes the COCO stores with the layout's formula: it gives the bytes of a real
    store's feature shards (12 samples x 2 views of 196 x 192 tokens, shards of 8)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("coco_estimates", REPO / "scripts" / "coco_estimates.py")
    estimates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(estimates)
    shards = sum(f.stat().st_size for f in (train_store / "features" / "c").rglob("*") if f.is_file())
    assert estimates.store_bytes(12, 2, 196, 192, 8) - 12 * 9 == shards
