"""`adaslot make-synthetic`: the shape images in COCO's layout, or shape videos in MOVi's (--format movi)."""

from __future__ import annotations

from typing import Any

from adaslot.config.data import SyntheticConfig


def run_make_synthetic(cfg: SyntheticConfig) -> dict[str, Any]:
    """Write cfg.format's dataset to cfg.out; returns the writer's summary (adaslot.data.synthetic for coco,
    adaslot.data.movi_synthetic for movi, docs/movi.md)."""
    if cfg.format == "movi":
        from adaslot.data.movi_synthetic import write_movi_synthetic

        return write_movi_synthetic(cfg)
    from adaslot.data.synthetic import write_coco_synthetic

    return write_coco_synthetic(cfg)
