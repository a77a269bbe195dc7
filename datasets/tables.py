"""Tables read column by column with pyarrow: CSV, Parquet and Arrow IPC (Feather) files into
float32 tensors, without a Python object per cell.

pyarrow rather than pandas: its CSV reader parses on every core straight into typed columns
(float32 here, so a 1M x 20 table takes 80 MB, not the 160 MB of pandas' float64 frame), it is
the reader Parquet and Arrow files need anyway, and its columns become NumPy arrays (and
tensors) without a copy per cell. pandas would add a second large dependency for no gain.

The fast path checks whole columns (a float32 conversion that fails, a non-finite value, an
empty or missing-marker label). When a check fails on a CSV file, the slow, cell-by-cell reader
of `csv_table` reads the file again to name the exact line, column and value; it is never run
on a good file. Parquet and Arrow files have no lines: their messages name the row (1-based).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from gradtrain.datasets.tensor import InMemoryDataset
from gradtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from gradtrain.datasets.csv_table import CsvData

Format = Literal["auto", "csv", "parquet", "arrow"]
SUFFIXES: dict[str, Literal["csv", "parquet", "arrow"]] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
}
# What each binary format's files start with (Feather v1 files, "FEA1", are not read).
MAGIC = {"parquet": b"PAR1", "arrow": b"ARROW1"}
# The header is read from the file's first bytes (a header longer than this goes the slow way).
HEAD_BYTES = 1 << 16


class SlowLook(Exception):
    """The fast reader found something wrong (or could not tell): read the CSV cell by cell."""


def file_format(path: Path, chosen: Format = "auto") -> Literal["csv", "parquet", "arrow"]:
    """The format `dataset.format` names, or (auto) the one the suffix says; CSV otherwise."""
    if chosen != "auto":
        return chosen
    return SUFFIXES.get(path.suffix.lower(), "csv")


def check_readable(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a file (dataset.path)")
    if not path.is_file():
        # Not only a missing path: a FIFO or device would block or never end, so it is refused.
        what = "not a regular file" if path.exists() else "no such file"
        raise DataError(f"{path}: {what} (dataset.path)")


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(size)
    except OSError as exc:  # permission denied, an I/O error
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None


def check_magic(path: Path, kind: Literal["parquet", "arrow"], chosen: Format) -> None:
    """A file that the suffix (or dataset.format) calls Parquet or Arrow must be one: pyarrow's
    own error on a CSV named .parquet is a traceback about footers."""
    head = read_head(path, 64)
    if head.startswith(MAGIC[kind]):
        return
    name = {"parquet": "Parquet", "arrow": "Arrow IPC (Feather v2)"}[kind]
    why = f"dataset.format={chosen}" if chosen != "auto" else f"its suffix {path.suffix}"
    looks = "is empty" if not head else f"starts with {head[:24]!r}"
    fix = (
        "set dataset.format=csv if it is a CSV file"
        if head and b"\x00" not in head
        else "check the file, or set dataset.format to what it is (csv, parquet, arrow)"
    )
    raise ConfigError(
        [f"dataset.path={path}: {why} says {name}, but the file is not one (it {looks}); {fix}"]
    )


# ---------------------------------------------------------------------------------------- CSV
def csv_header(path: Path, delimiter: str) -> tuple[int, list[str]]:
    """(line, raw names) of the header, read from the file's first bytes; SlowLook when those
    hold something the slow reader must name (a NUL, bytes that are not UTF-8, no full line)."""
    head = read_head(path)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        raise SlowLook
    complete = len(head) < HEAD_BYTES
    if not complete:  # up to the last line break: the header must lie before it
        cut = max(head.rfind(b"\n"), head.rfind(b"\r"))
        if cut < 0:
            raise SlowLook
        head = head[: cut + 1]
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        # (The first bytes may end inside a character; a real error is named by the slow look.)
        raise SlowLook from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for row in reader:
            if row:
                if not complete and reader.line_num >= text.count("\n") + text.count("\r"):
                    raise SlowLook  # the header may run on past the bytes read
                return start, row
            start = reader.line_num + 1
    except csv.Error:
        raise SlowLook from None
    raise SlowLook  # empty, or only blank lines: the slow reader says so


def read_csv_columns(
    path: Path,
    raw_names: dict[str, str],
    features: Sequence[str],
    target: str,
    task: str,
    delimiter: str,
) -> pa.Table:
    """The used columns of a CSV file as a pyarrow table: features (and a regression target)
    as float32, a classification target as text. `raw_names` maps each name to the header's
    spelling (the names are stripped of spaces). SlowLook on any cell pyarrow cannot convert,
    a ragged row, or text that is not UTF-8."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    types = {raw_names[name]: pa.float32() for name in features}
    types[raw_names[target]] = pa.float32() if task == "regression" else pa.string()
    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=strict_convert_options(types),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError):
        raise SlowLook from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    return table


def check_text_is_clean(path: Path) -> None:
    """SlowLook if any byte of the file is a NUL or not UTF-8. Needed only when some columns
    are not read (pyarrow does not look at them), as the slow reader refuses such a file
    whatever column holds the byte. Read in blocks: the file is never held whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as file:
        while block := file.read(1 << 22):
            if b"\x00" in block:
                raise SlowLook
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                raise SlowLook from None
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise SlowLook from None


# ------------------------------------------------------------------------- Parquet and Arrow
def read_binary_table(path: Path, kind: Literal["parquet", "arrow"]) -> pa.Table:
    """The whole table of a Parquet or Arrow IPC file. Read, not memory-mapped: the columns are
    copied into a tensor anyway, and mapped pages would count as memory too."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, memory_map=False)
        import pyarrow.feather as feather

        return feather.read_table(path, memory_map=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read the {kind} file: {exc}") from None


def binary_schema_names(path: Path, kind: Literal["parquet", "arrow"]) -> list[str]:
    """The column names of a Parquet or Arrow file, from its metadata alone."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with pa.memory_map(str(path)) as source:
            return list(pa.ipc.open_file(source).schema.names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read the {kind} file: {exc}") from None


def numeric_problems(
    path: Path, schema: pa.Schema, features: Sequence[str], target: str, task: str
) -> list[str]:
    """Columns of a typed table that cannot be what they are used as: a feature must be a
    number (or bool); a regression target too. Each problem names the key to change."""
    import pyarrow.types as pat

    def numeric(name: str) -> bool:
        kind = schema.field(name).type
        return bool(pat.is_integer(kind) or pat.is_floating(kind) or pat.is_boolean(kind))

    problems = []
    text = [name for name in features if not numeric(name)]
    if text:
        kept = [name for name in features if name not in text]
        kinds = ", ".join(f"'{name}' ({schema.field(name).type})" for name in text)
        problems.append(
            f"dataset.features: {path} column{'s' if len(text) > 1 else ''} {kinds} "
            "cannot be a feature: features must be numbers; leave "
            f"{'them' if len(text) > 1 else 'it'} out with "
            f"dataset.features=[{','.join(kept)}]"
        )
    if task == "regression" and not numeric(target):
        problems.append(text_target_problem(path, target, str(schema.field(target).type)))
    return problems


def text_target_problem(path: Path, target: str, what: str) -> str:
    return (
        f"dataset.task: the target column '{target}' of {path} holds text ({what}), so the "
        "task is classification: set dataset.task=classification (with its loss, "
        "loss=cross_entropy)"
    )


# ------------------------------------------------------------------------ columns to tensors
def features_tensor(table: pa.Table, names: Sequence[str]) -> torch.Tensor:
    """(rows, len(names)) float32, filled one column at a time (never a float64 copy of the
    whole table)."""
    import pyarrow as pa

    inputs = torch.empty((table.num_rows, len(names)), dtype=torch.float32)
    columns = inputs.numpy()  # the same memory
    for index, name in enumerate(names):
        column = table.column(name)
        if column.null_count:
            raise _NullCell(name, _first_null(column))
        if column.type != pa.float32():
            column = column.cast(pa.float32(), safe=False)  # int64, float64: may overflow to inf
        columns[:, index] = column.to_numpy()  # (a copy into place, read-only source)
    return inputs


class _NullCell(Exception):
    def __init__(self, column: str, row: int) -> None:
        super().__init__(column, row)
        self.column, self.row = column, row


def _first_null(column: pa.ChunkedArray) -> int:
    import numpy as np

    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return int(np.argmin(valid))


def class_indices(labels: pa.ChunkedArray) -> tuple[list[str], torch.Tensor]:
    """(class names as written, in `_sorted_labels` order; int64 index of each row's class).
    The labels are stripped of surrounding spaces, as the slow reader strips them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from gradtrain.datasets.csv_table import _sorted_labels

    if labels.type != pa.string():
        labels = labels.cast(pa.string())
    labels = pc.utf8_trim_whitespace(labels)
    encoded = labels.combine_chunks().dictionary_encode()
    dictionary: list[str] = encoded.dictionary.to_pylist()
    class_names = _sorted_labels(set(dictionary))
    where = {name: i for i, name in enumerate(class_names)}
    to_sorted = torch.tensor([where[name] for name in dictionary], dtype=torch.int64)
    codes = torch.from_numpy(encoded.indices.to_numpy(zero_copy_only=False).astype("int64"))
    return class_names, to_sorted[codes]


def to_dataset(
    path: Path,
    table: pa.Table,
    target: str,
    feature_names: list[str],
    task: str,
    place: str = "row",
) -> CsvData:
    """A typed table (Parquet, Arrow) as an in-memory dataset, each value checked as the CSV
    reader checks it; a bad one is named by its row."""
    from gradtrain.datasets.csv_table import (
        CsvData,
        _check_class_count,
        _is_non_finite_number,
        _show,
    )

    if table.num_rows == 0:
        raise DataError(f"{path}: the table has no rows")
    try:
        inputs = features_tensor(table, feature_names)
        if task == "regression":
            targets = features_tensor(table, [target])[:, 0]
    except _NullCell as null:
        raise DataError(
            f"{path}, {place} {null.row + 1}, column '{null.column}': empty (null) value; fill "
            "in or remove the row"
        ) from None

    def cell(row: int, name: str) -> Any:
        return table.column(name)[row]

    refuse_non_finite(path, inputs, feature_names, place, cell)
    if task == "regression":
        refuse_non_finite(path, targets, [target], place, cell)
        return CsvData(InMemoryDataset(inputs, targets), feature_names)
    labels = table.column(target)
    if labels.null_count:
        row = _first_null(labels)
        raise DataError(f"{path}, {place} {row + 1}, column '{target}': empty (null) label")
    class_names, targets = class_indices(labels)
    for index, name in enumerate(class_names):
        if not name or _is_non_finite_number(name):
            row = int((targets == index).nonzero()[0])
            what = "empty label" if not name else f"{_show(name)} is not a finite number"
            raise DataError(
                f"{path}, {place} {row + 1}, column '{target}': {what}, so it marks a missing "
                "label rather than a class; fill in or remove the row"
            )
    _check_class_count(path, target, class_names, table.num_rows)
    return CsvData(InMemoryDataset(inputs, targets), feature_names, class_names)


def load_binary(
    path: Path,
    kind: Literal["parquet", "arrow"],
    target: str,
    features: list[str] | None,
    task: str,
    chosen: Format,
) -> CsvData:
    """A Parquet or Arrow IPC file, with the CSV reader's options and checks."""
    from gradtrain.datasets.csv_table import check_columns

    check_readable(path)
    check_magic(path, kind, chosen)
    header = binary_schema_names(path, kind)
    feature_names = check_columns(path, None, header, target, features, delimiter=None)
    table = read_binary_table(path, kind).select([*feature_names, target])
    problems = numeric_problems(path, table.schema, feature_names, target, task)
    if problems:
        raise ConfigError(problems)
    return to_dataset(path, table, target, feature_names, task)


def refuse_non_finite(
    path: Path,
    values: torch.Tensor,
    columns: Sequence[str],
    place: str,
    cell: Callable[[int, str], Any],
    first_row: int = 0,
) -> None:
    """Refuse the first NaN or infinity in `values`, (rows,) or (rows, len(columns)), naming
    its row (1-based, counted from `first_row`, the file's row of `values[0]`) and column;
    `cell(row, column)` is the value as stored. A float64 value beyond float32's range is
    infinite here, and named as such."""
    from gradtrain.datasets.csv_table import FLOAT32_MAX

    bad = ~torch.isfinite(values)
    if not bad.any():
        return
    first = bad.nonzero()[0].tolist()
    row, name = first[0], columns[first[1] if len(first) > 1 else 0]
    stored = cell(row, name)
    number = float(stored.as_py() if hasattr(stored, "as_py") else stored)
    reason = (
        f"is beyond float32's range (±{FLOAT32_MAX:.4g}), in which gradtrain trains"
        if math.isfinite(number)
        else "is not a finite number; fill in or remove the row"
    )
    where = f"{place} {first_row + row + 1}"
    raise DataError(f"{path}, {where}, column '{name}': {number!r} {reason}")


def strict_convert_options(types: dict[str, Any]) -> pa_csv.ConvertOptions:
    """pyarrow's CSV conversion to exactly these columns and types, where an empty cell, "NA"
    and the like are errors to name, not missing values."""
    import pyarrow.csv as pa_csv

    return pa_csv.ConvertOptions(
        column_types=types,
        include_columns=list(types),
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
