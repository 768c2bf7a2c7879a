"""adaslot: AdaSlot / DINOSAUR object-centric learning on cached frozen-ViT features.

    model = adaslot.load(CKPT, encoder_weights=None, device="auto")   # a Segmenter
    result = model.segment(images)                                     # a Segmentation (or a list of them)

The API lives in adaslot.api and is imported on first use, so `import adaslot` (and the CLI) stays free of
torch until a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The checkpoint shipped with the package (`adaslot demo --long`, demo encoder: no weights file needed).
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo-stage2.pt"

if TYPE_CHECKING:
    from adaslot.api import Segmentation, Segmenter, load

__all__ = ["DEMO_CHECKPOINT", "Segmentation", "Segmenter", "__version__", "load"]

_LAZY = {"Segmentation", "Segmenter", "load"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from adaslot import api

        return getattr(api, name)
    raise AttributeError(f"module 'adaslot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
