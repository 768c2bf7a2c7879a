"""adaslot: AdaSlot / DINOSAUR object-centric learning on cached frozen-ViT features."""

__version__ = "0.1.0"
