"""Reading a COCO-format annotation file: all of it through pycocotools, or its image list alone.

The image list is what `cache-features` needs (file names, ids, sizes); COCO train's file is 448 MB, almost
all annotations. `read_image_list` parses the top-level members in order and stops after "images" (in COCO's
files it comes before "annotations"), reading the file in growing blocks, so the annotations are neither
parsed nor held (numbers: docs/scale.md#the-annotation-file-benchmarkscoco_annotationspy).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from adaslot.errors import AdaslotError

FIRST_BLOCK = 1 << 24  # characters read first (COCO train's image list is about 20 MB)


def _missing(annotation_file: Path) -> AdaslotError:
    return AdaslotError(f"annotation file {annotation_file} not found; pass --annotations or a --root "
                        f"with annotations/instances_<split>2017.json")


def load_coco(annotation_file: Path) -> Any:
    """The whole file as a pycocotools COCO object (images, annotations and their indexes)."""
    from pycocotools.coco import COCO

    if not annotation_file.is_file():
        raise _missing(annotation_file)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            return COCO(str(annotation_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdaslotError(f"annotation file {annotation_file} is not valid JSON: {e}") from e
    except (KeyError, TypeError, AssertionError) as e:
        raise AdaslotError(f"annotation file {annotation_file} is not in COCO format ({e!r})") from e


class _Truncated(Exception):
    """The text read so far ends inside the member being parsed."""


def _images_member(text: str, complete: bool) -> list[Any]:
    """The value of the top-level "images" member of the json object `text` (a prefix of the file unless
    `complete`), parsing the members before it; raises _Truncated if the prefix is too short."""
    dec, n = json.JSONDecoder(), len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n and not complete:
            raise _Truncated
        return i

    def value(i: int) -> tuple[Any, int]:
        try:
            return dec.raw_decode(text, i)
        except json.JSONDecodeError:
            if not complete:
                raise _Truncated from None
            raise

    i = skip(0)
    if text[i : i + 1] != "{":
        raise json.JSONDecodeError("expected an object", text, i)
    i = skip(i + 1)
    while text[i] != "}":
        key, i = value(i)
        i = skip(i)
        if text[i] != ":":
            raise json.JSONDecodeError("expected ':'", text, i)
        member, i = value(skip(i + 1))
        if key == "images":
            if not isinstance(member, list):
                raise TypeError("'images' is not a list")
            return member
        i = skip(i)
        if text[i] == ",":
            i = skip(i + 1)
        elif text[i] != "}":
            raise json.JSONDecodeError("expected ',' or '}'", text, i)
    raise KeyError("images")


def read_image_list(annotation_file: Path) -> dict[int, dict[str, Any]]:
    """{image id: its entry of "images"} of a COCO-format json, without parsing its annotations."""
    if not annotation_file.is_file():
        raise _missing(annotation_file)
    try:
        with annotation_file.open(encoding="utf-8") as f:
            text, block = "", FIRST_BLOCK
            while True:
                more = f.read(block)
                text += more
                try:
                    images = _images_member(text, complete=not more)
                    break
                except _Truncated:
                    block *= 2
        return {int(im["id"]): im for im in images}
    except (json.JSONDecodeError, UnicodeDecodeError, IndexError) as e:
        raise AdaslotError(f"annotation file {annotation_file} is not valid JSON: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise AdaslotError(f"annotation file {annotation_file} is not in COCO format ({e!r})") from e
