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
