"""TFRecord files and `tf.train.Example` protobufs, read and written without TensorFlow (docs/movi.md).

Framing of one record (docs/method.md#movi): uint64 little-endian payload length, uint32 masked crc32c of
those 8 bytes, the payload, uint32 masked crc32c of the payload. Masked crc = rotate right by 15 of the
crc32c, plus 0xa282ead8 (mod 2^32).

An Example is a map from feature name to one of three lists: bytes, float (float32) or int64. Every value
of a list is kept (a BytesList of 24 PNG frames stays 24 frames). Both packed and unpacked encodings of the
numeric lists are read; the writer packs them, as protobuf does for proto3 repeated scalars.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8


class RecordError(ValueError):
    """A record that cannot be used. `reason`: truncated, crc-mismatch or malformed."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason} ({detail})")


def masked_crc(data: bytes) -> int:
    """The TFRecord checksum of `data`: crc32c rotated right by 15 bits plus a constant (mod 2^32)."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """One record as it lies in the file: header, payload, footer."""
    head = struct.pack("<Q", len(payload))
    return head + struct.pack("<I", masked_crc(head)) + payload + struct.pack("<I", masked_crc(payload))


def write_records(path: str | Path, payloads: list[bytes]) -> None:
    """Write a TFRecord file holding `payloads` in order."""
    with open(path, "wb") as f:
        for p in payloads:
            f.write(frame_record(p))


@dataclass(frozen=True)
class RecordSpan:
    """Where record `number` of a file lies: payload bytes [offset, offset + length)."""

    number: int
    offset: int
    length: int


def scan_records(path: str | Path) -> tuple[list[RecordSpan], RecordError | None]:
    """Walk the headers of a TFRecord file (the length crc of each is checked; payloads are skipped, their
    crc is checked when read). Returns the spans found and the error that ended the walk early (a truncated
    file or a damaged header: nothing after it can be located), or None."""
    spans: list[RecordSpan] = []
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            head = f.read(12)
            where = f"record {len(spans)} at byte {pos}"
            if len(head) < 12:
                return spans, RecordError("truncated", f"{where}: header cut short")
            (length,) = struct.unpack("<Q", head[:8])
            (crc,) = struct.unpack("<I", head[8:])
            if crc != masked_crc(head[:8]):
                return spans, RecordError("crc-mismatch", f"{where}: length checksum")
            end = pos + 12 + length + 4
            if end > size:
                return spans, RecordError("truncated", f"{where}: {length} payload bytes announced, file "
                                                       f"ends {size - pos - 12} bytes later")
            spans.append(RecordSpan(len(spans), pos + 12, length))
            f.seek(end)
            pos = end
    return spans, None


def read_record(f: BinaryIO, span: RecordSpan) -> bytes:
    """The payload of `span` from an open file, its crc checked (RecordError otherwise)."""
    f.seek(span.offset)
    data = f.read(span.length + 4)
    if len(data) < span.length + 4:
        raise RecordError("truncated", f"record {span.number}: payload cut short")
    payload = data[:span.length]
    if struct.unpack("<I", data[span.length:])[0] != masked_crc(payload):
        raise RecordError("crc-mismatch", f"record {span.number}: payload checksum")
    return payload


# ---------------------------------------------------------------- protobuf wire format

def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64: ten-byte two's complement, as protobuf writes it
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise RecordError("malformed", "varint runs past its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of a message: value is bytes for length-delimited fields, the
    integer for varints, the raw bytes for fixed32/fixed64."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise RecordError("malformed", "a field runs past its message")
            yield number, wire, buf[pos:pos + n]
            pos += n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            yield number, wire, buf[pos:pos + n]
            pos += n
        else:
            raise RecordError("malformed", f"wire type {wire}")


def _len_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes) -> list[bytes] | np.ndarray:
    for kind, _wire, body in _fields(buf):
        assert isinstance(body, bytes)
        if kind == 1:  # BytesList: repeated bytes value = 1
            return [bytes(v) for n, _w, v in _fields(body) if n == 1]
        if kind == 2:  # FloatList: repeated float value = 1 (packed or not)
            parts = [np.frombuffer(v, "<f4") for n, _w, v in _fields(body)  # type: ignore[arg-type]  # wire 2: bytes
                     if n == 1]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
        if kind == 3:  # Int64List: repeated int64 value = 1 (packed or not)
            vals: list[int] = []
            for n, w, v in _fields(body):
                if n != 1:
                    continue
                if w == 0:
                    vals.append(_signed64(int(v)))
                else:
                    p = 0
                    while p < len(v):  # type: ignore[arg-type]  # wire 2 (packed): bytes
                        x, p = _read_varint(v, p)  # type: ignore[arg-type]  # idem
                        vals.append(_signed64(x))
            return np.asarray(vals, np.int64)
    return []  # an empty Feature (no kind set)


def decode_example(payload: bytes, only: set[str] | None = None) -> dict[str, list[bytes] | np.ndarray]:
    """tf.train.Example bytes -> {name: list of bytes | float32 array | int64 array}. `only`: decode just
    these names (the others are skipped unparsed)."""
    out: dict[str, list[bytes] | np.ndarray] = {}
    for n, _w, features in _fields(payload):
        if n != 1 or not isinstance(features, bytes):
            continue
        for m, _w2, entry in _fields(features):  # map<string, Feature> feature = 1
            if m != 1 or not isinstance(entry, bytes):
                continue
            key, value = None, b""
            for e, _w3, v in _fields(entry):
                if e == 1 and isinstance(v, bytes):
                    key = v.decode("utf-8")
                elif e == 2 and isinstance(v, bytes):
                    value = v
            if key is not None and (only is None or key in only):
                out[key] = _decode_feature(value)
    return out


def encode_example(features: dict[str, list[bytes] | np.ndarray | list[float] | list[int]]) -> bytes:
    """{name: list of bytes | float array | int array} -> tf.train.Example bytes (names in sorted order)."""
    entries = b""
    for key in sorted(features):
        value = features[key]
        if isinstance(value, list) and all(isinstance(v, bytes) for v in value):
            feat = _len_field(1, b"".join(_len_field(1, v) for v in value))  # type: ignore[arg-type]  # all bytes (checked above)
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                feat = _len_field(2, _len_field(1, arr.astype("<f4").tobytes()))
            elif arr.dtype.kind in "iub":
                feat = _len_field(3, _len_field(1, b"".join(_varint(int(v)) for v in arr.ravel())))
            else:
                raise TypeError(f"feature {key!r}: cannot encode {arr.dtype}")
        entries += _len_field(1, _len_field(1, key.encode("utf-8")) + _len_field(2, feat))
    return _len_field(1, entries)
