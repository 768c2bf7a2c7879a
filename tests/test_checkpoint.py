"""Checkpoint format: atomic save, checked load, rotation, RNG round trip, warm-start rules."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from adaslot.checkpoint import (
    capture_rng,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    make_payload,
    restore_rng,
    rotate_checkpoints,
    save_checkpoint,
    update_last,
)
from adaslot.config import ModelConfig
from adaslot.errors import AdaslotError


def _payload(**extra):
    return make_payload(stage=1, model_config=ModelConfig(), encoder="random-vit-tiny",
                        model_state={"w": torch.arange(6.0).reshape(2, 3)}, **extra)


def test_round_trip_and_no_temp_left(tmp_path):
    p = save_checkpoint(tmp_path / "a" / "step-00000003.pt", _payload(step=3, rng=capture_rng()))
    assert [f.name for f in p.parent.iterdir()] == ["step-00000003.pt"]
    back = load_checkpoint(p)
    assert back["format"] == "adaslot-checkpoint" and back["version"] == 1 and back["step"] == 3
    assert torch.equal(back["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert ModelConfig.from_dict(back["model_config"]) == ModelConfig()


def test_overwrite_replaces_the_checkpoint(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, _payload(step=1))
    save_checkpoint(p, _payload(step=2))
    assert load_checkpoint(p)["step"] == 2


# A process that overwrites tmp/c.pt and stalls inside torch.save (an object whose pickling blocks), with
# the file open and part of it written: there it is killed.
_STALLED_WRITER = """
import sys, time
import torch
from adaslot.checkpoint import make_payload, save_checkpoint
from adaslot.config import ModelConfig

class Stall:
    def __reduce__(self):
        open(sys.argv[2], "w").close()  # the write has begun
        time.sleep(600)
        return (int, (0,))

payload = make_payload(stage=1, model_config=ModelConfig(), encoder="random-vit-tiny",
                       model_state={"w": torch.zeros(1 << 20)}, step=2, stall=Stall())
save_checkpoint(sys.argv[1], payload)
"""


@pytest.mark.e2e
def test_a_write_killed_midway_leaves_the_old_checkpoint(tmp_path):
    """SIGKILL while a checkpoint is being overwritten: the old one is still there, whole (a writer that
    opened the real name would have truncated it), and the new one is nowhere."""
    p = save_checkpoint(tmp_path / "c.pt", _payload(step=1))
    before = p.read_bytes()
    began = tmp_path / "began"
    proc = subprocess.Popen([sys.executable, "-c", _STALLED_WRITER, str(p), str(began)],
                            cwd=Path(__file__).resolve().parents[1],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while not began.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert began.exists(), "the writer never started writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert p.read_bytes() == before and load_checkpoint(p)["step"] == 1
    assert latest_checkpoint(tmp_path) is None  # a leftover temp file is never taken for a checkpoint


def test_save_refuses_unmarked_payload(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x.pt", {"model": {}})


class _Hparams:  # stands for the Python objects a Lightning checkpoint pickles (omegaconf configs, ...)
    pass


@pytest.mark.parametrize("kind", ["text", "plain_state_dict", "wrong_version", "missing", "damaged",
                                  "lightning_pickle", "ckpt_suffix"])
def test_load_refuses_foreign_files_in_one_line(tmp_path, kind):
    """One line naming the file; the convert-official hint only for what looks like a Lightning checkpoint
    (a .ckpt file, or a 'state_dict' with 'models.*' keys)."""
    p = tmp_path / ("x.ckpt" if kind == "ckpt_suffix" else "x.pt")
    if kind in ("text", "ckpt_suffix"):
        p.write_text("hello")
    elif kind == "plain_state_dict":
        torch.save({"state_dict": {"models.x": torch.zeros(1)}}, p)
    elif kind == "lightning_pickle":  # weights_only refuses it, the hint still comes from the pickle's keys
        torch.save({"state_dict": {"models.x": torch.zeros(1)}, "hyper_parameters": _Hparams()}, p)
    elif kind == "wrong_version":
        d = _payload()
        d["version"] = 7
        torch.save(d, p)
    elif kind == "damaged":
        save_checkpoint(p, _payload())
        p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(AdaslotError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg
    assert ("convert-official" in msg) == (kind in ("plain_state_dict", "lightning_pickle", "ckpt_suffix"))
    if kind == "wrong_version":
        assert "version 7" in msg
    elif kind == "damaged":
        assert msg == (f"{p} is not an adaslot checkpoint or is damaged: it is cut short (no zip directory "
                       "at its end)")
    elif kind != "missing":
        assert "not an adaslot checkpoint" in msg


def test_changed_bytes_are_caught(tmp_path):
    """torch.load does not check the CRC-32 its zip format stores; load_checkpoint does."""
    p = save_checkpoint(tmp_path / "x.pt", _payload())
    data = bytearray(p.read_bytes())
    pos = data.index(torch.arange(6.0).numpy().tobytes())  # the tensor's bytes, stored uncompressed
    data[pos + 5] ^= 0x01
    p.write_bytes(bytes(data))
    assert not torch.equal(torch.load(p, weights_only=True)["model"]["w"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(AdaslotError, match=r"has changed bytes \(checksum mismatch in archive/data/0\)"):
        load_checkpoint(p)


def test_rotation_keeps_newest(tmp_path):
    for s in (5, 10, 15, 20):
        save_checkpoint(checkpoint_path(tmp_path, s), _payload(step=s))
    (tmp_path / ".step-00000025.pt.tmp-1").write_bytes(b"partial")  # a killed write is ignored
    assert latest_checkpoint(tmp_path).name == "step-00000020.pt"
    update_last(tmp_path, checkpoint_path(tmp_path, 20))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 20
    removed = rotate_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step-00000005.pt", "step-00000010.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000015.pt", "step-00000020.pt"]
    assert latest_checkpoint(tmp_path / "none") is None


def test_rng_round_trip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "r.pt", _payload(rng=capture_rng()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# ---- with the real model (tiny sizes) ----

TINY = dict(feature_dim=16, num_tokens=9, slot_dim=8, num_slots=3, input_mlp_hidden=16, slot_mlp_hidden=16,
            decoder_hidden=(16,), selector_hidden=16)


def _model_payload(stage, **cfg_over):
    import dataclasses

    from adaslot.model import AdaSlot

    cfg = dataclasses.replace(ModelConfig(**TINY), adaptive=stage == 2, **cfg_over)
    torch.manual_seed(stage)
    model = AdaSlot(cfg)
    return model, cfg, make_payload(stage=stage, model_config=cfg, encoder="random-vit-tiny",
                                    model_state=model.state_dict())


def test_load_model_round_trip(tmp_path):
    from adaslot.checkpoint import load_model

    model, cfg, payload = _model_payload(2)
    save_checkpoint(tmp_path / "m.pt", payload)
    loaded, back = load_model(tmp_path / "m.pt", "cpu")
    assert not loaded.training and back["stage"] == 2 and loaded.cfg == cfg
    x = torch.randn(2, 9, 16)
    init = torch.randn(2, 3, 8)
    model.eval()
    assert torch.equal(loaded(x, slots_init=init).recon, model(x, slots_init=init).recon)


def test_warm_start_loads_all_but_selector():
    import dataclasses

    from adaslot.checkpoint import warm_start
    from adaslot.model import AdaSlot

    stage1, cfg1, payload = _model_payload(1)
    cfg2 = dataclasses.replace(cfg1, num_slots=7, adaptive=True)
    torch.manual_seed(5)
    stage2 = AdaSlot(cfg2)
    fresh_before = {k: v.clone() for k, v in stage2.state_dict().items()}
    fresh = warm_start(stage2, payload, cfg2, "s1.pt")
    assert fresh and all(k.startswith("selector.") for k in fresh)
    s1, s2 = stage1.state_dict(), stage2.state_dict()
    for k, v in s2.items():
        assert torch.equal(v, s1[k] if k in s1 else fresh_before[k]), k


def test_warm_start_refusals():
    import dataclasses

    from adaslot.checkpoint import warm_start
    from adaslot.model import AdaSlot

    _, cfg2, payload2 = _model_payload(2)
    with pytest.raises(AdaslotError, match="stage-2 checkpoint"):
        warm_start(AdaSlot(cfg2), payload2, cfg2, "s2.pt")
    _, cfg1, payload1 = _model_payload(1, slot_dim=12)
    target = dataclasses.replace(cfg1, slot_dim=8, adaptive=True)
    with pytest.raises(AdaslotError, match="slot_dim=12") as e:
        warm_start(AdaSlot(target), payload1, target, "s1.pt")
    assert "\n" not in str(e.value)
