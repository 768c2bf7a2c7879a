"""The `adaslot` command line: one function per command; flags -> config dataclass -> library call.

Library code raises `AdaslotError` for anything a user can cause; `main()` prints it as one line and exits 2.
Heavy imports (torch, timm, zarr) happen inside the commands so `adaslot --help` is instant.
"""

from __future__ import annotations

import sys

import typer

from adaslot.errors import AdaslotError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AdaSlot / DINOSAUR on cached frozen-ViT features: cache-features, train, eval, demo.",
)


# == section: make-synthetic (data) ==


@app.command("make-synthetic")
def make_synthetic_cmd(
    out: str = typer.Argument(..., help="Output dir (COCO 2017 layout: train2017/, val2017/, annotations/)."),
    num_train: int = typer.Option(1000, help="Number of train images."),
    num_val: int = typer.Option(200, help="Number of val images."),
    image_size: int = typer.Option(224, help="Square image side in pixels."),
    seed: int = typer.Option(0, help="Seed; the dataset is a deterministic function of it and the flags."),
    min_objects: int = typer.Option(1, help="Fewest objects drawn per image."),
    max_objects: int = typer.Option(6, help="Most objects drawn per image (crowded scenes may get fewer)."),
    min_radius: float = typer.Option(0.134, help="Smallest radius / side (0.134 = 30 px at 224)."),
    max_radius: float = typer.Option(0.25, help="Largest radius / side (0.25 = 56 px at 224)."),
    texture: bool = typer.Option(True, "--texture/--no-texture", help="Textured objects or solid colours."),
    background: str = typer.Option("varied", help="plain, gradient, stripes, noise or varied."),
    min_visible: float = typer.Option(0.5, help="Minimum visible fraction of each object after occlusion."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write the built-in synthetic shapes dataset as a real COCO-2017-format dataset (JPEG + RLE json)."""
    from adaslot.data.synthetic import SyntheticConfig, make_synthetic

    cfg = SyntheticConfig(
        out=out, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
        min_objects=min_objects, max_objects=max_objects, min_radius=min_radius, max_radius=max_radius,
        texture=texture, background=background, min_visible=min_visible, overwrite=overwrite,
    )
    s = make_synthetic(cfg)
    print(
        f"wrote {s['train_images']} train / {s['val_images']} val images "
        f"({s['train_objects'] + s['val_objects']} objects, {s['mean_objects']:.2f} per image) to {s['root']}"
    )

# == section: cache-features, cache-info, cache-verify, export (store) ==

# == section: train (train) ==

# == section: eval (evaluate) ==

# == section: convert-official (checkpoint conversion) ==

# == section: demo (demo) ==


def main() -> None:
    """Console-script entry: user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except AdaslotError as e:
        print(f"adaslot: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("adaslot: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
