"""A TensorBoard event file, written in the caller's thread.

The format is TFRecord: each serialized `Event` framed by its length and two masked CRC-32C
checksums. TensorBoard's own writer (the one behind `SummaryWriter`) computes those checksums a
byte at a time in pure Python on a background thread when TensorFlow is not installed: about
20 µs per logged step, for which the training thread then waits on the GIL. This writer
checksums a sink's whole batch of steps at once with numpy (about 1 µs per step), and writes in
the caller's thread.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import struct
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

# ------------------------------------------------------------------------------------- CRC-32C
_POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed


def _byte_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_POLYNOMIAL if crc & 1 else 0)
        table.append(crc)
    return table


def _word_tables(table: list[int]) -> tuple[array[int], array[int]]:
    """Tables that advance the CRC over a little-endian 32-bit word in two lookups: one for the
    word's low 16 bits, one for its high 16 bits (the CRC is linear, so their results XOR)."""
    # shifted[k][b]: the effect of byte value b followed by k zero bytes.
    shifted = [table]
    for _ in range(3):
        shifted.append([(c >> 8) ^ table[c & 0xFF] for c in shifted[-1]])
    low = array("I", (shifted[3][i & 0xFF] ^ shifted[2][i >> 8] for i in range(1 << 16)))
    high = array("I", (shifted[1][i & 0xFF] ^ shifted[0][i >> 8] for i in range(1 << 16)))
    return low, high


_BYTE = _byte_table()
_LOW, _HIGH = _word_tables(_BYTE)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    whole_words = len(data) - len(data) % 4
    words = array("I", data[:whole_words])  # 4-byte words in the machine's byte order
    if sys.byteorder == "big":
        words.byteswap()
    for word in words:
        crc ^= word
        crc = _LOW[crc & 0xFFFF] ^ _HIGH[crc >> 16]
    for byte in data[whole_words:]:
        crc = _BYTE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_LOW_NP, _HIGH_NP = np.frombuffer(_LOW, dtype=np.uint32), np.frombuffer(_HIGH, dtype=np.uint32)


def crc32c_many(records: Sequence[bytes]) -> list[int]:
    """`crc32c` of each record, all records advanced together by one numpy lookup per word.

    Started from 0 instead of 0xFFFFFFFF, the CRC register ignores leading zero bytes, so the
    records are left-padded to one length and run in lockstep. The CRC is linear: the start
    value's share is added back afterwards, and it depends on a record's length alone.
    """
    width = -(-max(map(len, records)) // 4) * 4  # whole 4-byte words
    padded = b"".join(bytes(width - len(record)) + record for record in records)
    words = np.frombuffer(padded, dtype="<u4").reshape(len(records), width // 4)
    register = np.zeros(len(records), dtype=np.uint32)
    for column in words.T:
        register ^= column
        register = _LOW_NP[register & 0xFFFF] ^ _HIGH_NP[register >> 16]
    return [
        crc ^ _start_share(len(record)) ^ 0xFFFFFFFF
        for crc, record in zip(register.tolist(), records, strict=True)
    ]


@functools.lru_cache(maxsize=1024)
def _start_share(length: int) -> int:
    """What the start value 0xFFFFFFFF contributes to the CRC of `length` bytes."""
    crc = 0xFFFFFFFF
    for _ in range(length):
        crc = _BYTE[crc & 0xFF] ^ (crc >> 8)
    return crc


def mask(crc: int) -> int:
    """The checksum as TFRecord stores it (rotated and offset, so that a CRC of CRCs differs)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    return mask(crc32c(data))


# ----------------------------------------------------------------------- protobuf wire format
# A scalar event is small and fixed in shape, so it is encoded here directly, several times
# faster than building the messages: Event {wall_time = 1 (double), step = 2 (int64),
# summary = 5}, Summary {repeated value = 1}, Value {tag = 1 (string), simple_value = 2 (float)}.
# A test checks the bytes decode to the same Event as protobuf's own.
_DOUBLE = struct.Struct("<d")


def _varint(number: int) -> bytes:
    number &= 0xFFFFFFFFFFFFFFFF  # a negative int64 is sent as its two's complement
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


@functools.lru_cache(maxsize=4096)
def _value_prefix(tag: str) -> bytes:
    """Everything of a Summary.value entry but the float's 4 bytes."""
    name = tag.encode()
    value = b"\x0a" + _varint(len(name)) + name + b"\x15"  # tag, then simple_value's key
    return b"\x0a" + _varint(len(value) + 4) + value


def _float32(value: float) -> float:
    """`value`, or the infinity protobuf stores for a value beyond float32."""
    return (
        value if abs(value) <= _FLOAT32_MAX or math.isnan(value) else math.copysign(math.inf, value)
    )


_FLOAT32_MAX = 3.4028234663852886e38


@functools.lru_cache(maxsize=256)
def _summary_layout(tags: tuple[str, ...]) -> tuple[struct.Struct, tuple[bytes, ...], bytes]:
    """For one tuple of tags: a Struct packing each value's prefix and float, the prefixes,
    and the summary field's key and length (a run logs the same few tuples again and again)."""
    prefixes = tuple(_value_prefix(tag) for tag in tags)
    layout = struct.Struct("<" + "".join(f"{len(prefix)}sf" for prefix in prefixes))
    return layout, prefixes, b"\x2a" + _varint(layout.size)


def scalar_event(
    step: int, wall_time: float, tags: tuple[str, ...], values: Sequence[float]
) -> bytes:
    """The serialized Event of one step's `simple_value` scalars, `values[i]` for `tags[i]`."""
    layout, prefixes, summary_header = _summary_layout(tags)
    try:
        summary = layout.pack(*itertools.chain.from_iterable(zip(prefixes, values, strict=True)))
    except OverflowError:  # beyond float32
        clamped = map(_float32, values)
        summary = layout.pack(*itertools.chain.from_iterable(zip(prefixes, clamped, strict=True)))
    return b"\x09" + _DOUBLE.pack(wall_time) + b"\x10" + _varint(step) + summary_header + summary


# ---------------------------------------------------------------------------------- the writer
_file_numbers = itertools.count()  # keeps two writers of one process in one second apart
_U32 = struct.Struct("<I")
_BATCH = 8  # from this many records on, numpy's per-call overhead pays off


@functools.lru_cache(maxsize=1024)
def _record_header(length: int) -> bytes:
    """A record's length and the length's masked CRC (lengths repeat: scalar events of one run
    have only a few)."""
    header = struct.pack("<Q", length)
    return header + _U32.pack(masked_crc32c(header))


class EventFileWriter:
    """Appends events to a new `events.out.tfevents.*` file in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            # (Zero-padded: readers take a folder's files in name order, and a session's
            # purge must come after the earlier session's file, also past the 10th file of a
            # process, as in a notebook that resumes a run within the second.)
            f"{os.getpid()}.{next(_file_numbers):06d}"
        )
        self.path = log_dir / name
        self._file = self.path.open("xb")
        # Readers expect a file to open with its format version.
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_summary(self, summary: Summary, step: int, wall_time: float | None = None) -> None:
        """Any summary (text, hparams, images, histograms ...) at `step`; wall time: now."""
        wall_time = time.time() if wall_time is None else wall_time
        self.add_event(Event(wall_time=wall_time, step=step, summary=summary))

    def add_scalars(
        self, steps: Sequence[tuple[int, float, tuple[str, ...], Sequence[float]]]
    ) -> None:
        """One event per (step, wall time, tags, values)."""
        self._write_records([scalar_event(*step) for step in steps])

    def add_event(self, event: Event) -> None:
        self._write_records([event.SerializeToString()])

    def _write_records(self, records: Sequence[bytes]) -> None:
        if not records:
            return
        if len(records) >= _BATCH:
            checksums = crc32c_many(records)
        else:
            checksums = [crc32c(record) for record in records]
        self._file.write(
            b"".join(
                _record_header(len(record)) + record + _U32.pack(mask(checksum))
                for record, checksum in zip(records, checksums, strict=True)
            )
        )

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
