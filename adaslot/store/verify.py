"""`adaslot cache-verify`: recompute stored rows with the frozen encoder and compare them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from adaslot.config import DataSpec, VerifyConfig
from adaslot.device import autocast, resolve_device
from adaslot.errors import AdaslotError
from adaslot.files import file_sha256
from adaslot.store import open_store


def run_cache_verify(cfg: VerifyConfig) -> dict[str, Any]:
    """Recompute `cfg.sample` random stored rows (all views) online and compare -> {rows, max_abs_error,
    bound, ok}.

    `bound` is the fp16 rounding allowance (half an fp16 ulp of the largest value, plus fp32 noise); the
    check passes when max_abs_error <= bound. The dataset defaults to the location recorded at caching.
    """
    from adaslot.data.datasets import open_dataset
    from adaslot.encoders import build_encoder

    cfg.validate()
    store = open_store(cfg.store)
    a, c = store.attrs, store.contract
    split = a.get("dataset", {}).get("split", "train")
    data = cfg.data.replace(split=split)
    if not data.given:
        src = a.get("source", {})
        if not (src.get("images") and src.get("annotations")):
            raise AdaslotError("the store does not record its dataset location; pass --root or "
                               "--images/--annotations")
        kind = src.get("dataset")
        if kind in ("movi", "coco-wds"):  # read from a root (docs/movi.md): the recorded folder and split
            data = DataSpec(dataset=kind, root=src["images"], split=split)
        else:
            data = DataSpec(images=src["images"], annotations=src["annotations"])
    dev = resolve_device(cfg.device)
    encoder = build_encoder(c["encoder"], weights=cfg.encoder_weights, device=dev)
    if encoder.weights_sha256 != c.get("weights_sha256"):
        raise AdaslotError(f"the encoder weights found differ from the store's (sha256 "
                           f"{encoder.weights_sha256[:12]} vs {str(c.get('weights_sha256'))[:12]}); pass the "
                           f"right --encoder-weights")
    side = int(c["input_size"][0])
    antialias = "antialias=True" in str(a.get("transform", {}).get("resize", ""))
    ds = open_dataset(data, side, views=store.num_views, antialias=antialias)
    decoder = a.get("transform", {}).get("decoder", "pil")  # recorded when not the reference (pil)
    if decoder != "pil":
        ds.decoder = decoder  # the batch path decodes with it (on the CPU: docs/method.md#decoders)
    want_sha = a.get("dataset", {}).get("annotation_sha256")
    if want_sha and file_sha256(ds.annotation_file) != want_sha:
        # Another dataset: comparing its images would report a feature MISMATCH that is not one.
        raise AdaslotError(f"{ds.annotation_file} is not the annotation file the store was made from (sha256 "
                           f"differs); pass the original dataset with --root or --images/--annotations")
    if len(ds) != store.num_samples or [int(i) for i in ds.image_ids[:1]] != [int(store.raw_image_ids[0])]:
        raise AdaslotError("the dataset found does not match the store's rows; pass the dataset it was made "
                           "from")
    rows = np.flatnonzero(store.valid)
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.choice(rows, size=min(cfg.sample, rows.size), replace=False))
    max_err, bound = 0.0, 0.0
    for r in rows:
        item = ds[int(r)] if decoder == "pil" else ds.__getitems__([int(r)])[0]
        if not item["ok"]:
            raise AdaslotError(f"image {item['image_id']} cannot be read now ({item['reason']}), but it was "
                               f"cached")
        x = item["image"].reshape(-1, 3, side, side).to(dev)
        with autocast(c.get("precision", "fp32"), dev):
            online = encoder(x).float().cpu()
        stored = torch.from_numpy(store.read(int(r), int(r) + 1)[0]).float()  # checksums checked
        max_err = max(max_err, float((online - stored).abs().max()))
        # fp16 has 11 significant bits: rounding error <= |x| * 2^-11; plus slack for fp32 reduction order.
        bound = max(bound, float(online.abs().max()) * 2.0**-11 * 1.01 + 1e-5)
    if c.get("precision") == "bf16":
        bound *= 16  # bf16 compute: 8 significant bits instead of fp32's 24
    return {"rows": int(rows.size), "max_abs_error": max_err, "bound": bound, "ok": max_err <= bound}
