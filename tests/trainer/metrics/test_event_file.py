"""gradtrain's event-file writer produces records TensorBoard's own reader accepts."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

from gradtrain.metrics.event_file import (
    EventFileWriter,
    crc32c,
    crc32c_many,
    masked_crc32c,
    scalar_event,
)


def test_crc32c_gives_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value
    assert crc32c(b"") == 0


def test_masked_crc32c_matches_tensorboards_for_every_length_and_alignment() -> None:
    rng = random.Random(0)
    for length in range(70):
        data = bytes(rng.randrange(256) for _ in range(length))
        assert masked_crc32c(data) == reference(data), length


def test_batched_crc32c_equals_one_at_a_time_for_mixed_lengths() -> None:
    rng = random.Random(1)
    records = [bytes(rng.randrange(256) for _ in range(rng.randrange(300))) for _ in range(40)]
    assert crc32c_many([*records, b""]) == [crc32c(record) for record in [*records, b""]]


def test_events_read_back_in_order_and_two_writers_get_two_files(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import (
        LegacyEventFileLoader as RawEvents,  # the events as written, not migrated to tensors
    )

    first, second = EventFileWriter(tmp_path), EventFileWriter(tmp_path)
    for step in (1, 2):
        value = Summary.Value(tag="train/loss", simple_value=step / 4)
        first.add_summary(Summary(value=[value]), step=step, wall_time=100.0 + step)
    first.close()
    second.close()
    assert first.path != second.path and first.path.name.startswith("events.out.tfevents.")
    events = list(RawEvents(str(first.path)).Load())
    assert events[0].file_version == "brain.Event:2"
    assert [(e.step, e.wall_time, e.summary.value[0].simple_value) for e in events[1:]] == [
        (1, 101.0, 0.25),
        (2, 102.0, 0.5),
    ]


@pytest.mark.parametrize(
    ("step", "wall_time", "scalars"),
    [
        (300, 1.5e9, [("train/loss", 0.25), ("watch/lr", 1e-3)]),
        (0, 0.0, [("train/loss", 0.0)]),  # zeros, which protobuf itself would leave out
        (-1, 2.0, [("t" * 200, -1e40), ("nan", math.nan)]),  # long tag, float32 overflow
    ],
)
def test_hand_encoded_scalar_event_decodes_like_protobufs(
    step: int, wall_time: float, scalars: list[tuple[str, float]]
) -> None:
    expected = Event(
        wall_time=wall_time,
        step=step,
        summary=Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in scalars]),
    )
    tags, values = zip(*scalars, strict=True)
    decoded = Event.FromString(scalar_event(step, wall_time, tags, values))
    assert (decoded.wall_time, decoded.step) == (expected.wall_time, expected.step)
    # repr: exact float32 values, and nan equal to nan
    got = [(v.tag, repr(v.simple_value)) for v in decoded.summary.value]
    assert got == [(v.tag, repr(v.simple_value)) for v in expected.summary.value]
