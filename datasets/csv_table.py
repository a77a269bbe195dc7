"""The user's own data: a table with named columns (a CSV file with a header row, or Parquet or
Arrow), read into an in-memory dataset.

`load_csv` parses a table column by column (`tables.py`, pyarrow) and checks whole columns.
Only when a check fails, or pyarrow cannot parse the file, does the slow reader here read the
CSV again cell by cell, to name what is wrong: every refusal is a DataError (a ConfigError for
`dataset.features` itself) that names the file and, where there is one, the line (as in an
editor: the header is line 1), the column and the value as written.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from gradtrain.datasets.tensor import InMemoryDataset
from gradtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from gradtrain.datasets.tables import Format

log = logging.getLogger("gradtrain")

# Features and regression targets become float32: a float64 beyond this would become infinite.
FLOAT32_MAX = torch.finfo(torch.float32).max
# A message quotes at most this many characters of a cell, so a huge one cannot swamp it.
SHOWN_CHARACTERS = 40
# The log line lists every class up to this many; beyond, the first few and the last.
LISTED_CLASSES = 10

# Stand-ins the reader puts into the text so the csv parser can carry them to a cell, where they
# are named with their line and column: a NUL byte (csv raises on it before Python 3.11 and
# accepts it from 3.11 on) becomes a lone surrogate that no decoded text holds, and an
# undecodable byte 0xXX becomes U+DCXX (Python's "surrogateescape").
_NUL = "\ud800"
_MARKED = re.compile("[\ud800\udc80-\udcff]")
_LINE_BREAK = re.compile("\r\n|\r|\n")  # what csv, like an editor, counts as one

Row = tuple[int, list[str]]  # (line where the record starts, its cells)


@dataclass
class CsvData:
    dataset: InMemoryDataset
    feature_names: list[str]
    # Classification: class index -> the label as written in the file.
    class_names: list[str] = field(default_factory=list)

    def describe_classes(self) -> str:
        return describe_classes(self.class_names)


def describe_classes(class_names: list[str]) -> str:
    """The classes for a log line: all of them when few, else the first few, "...", the last
    and the count (a file with a thousand labels once put all of them on one line)."""
    shown = list(enumerate(class_names))
    if len(shown) > LISTED_CLASSES:
        shown = [*shown[: LISTED_CLASSES // 2], (-1, ""), shown[-1]]
    items = ", ".join("..." if i < 0 else f"{i}: {_show(name)}" for i, name in shown)
    count = len(class_names)
    return "{" + items + "}" + (f" ({count} classes)" if count > LISTED_CLASSES else "")


def load_csv(
    path: str | Path,
    target: str,
    features: list[str] | None = None,
    task: Literal["regression", "classification"] = "regression",
    delimiter: str = ",",
    format: Format = "auto",
) -> CsvData:
    """Read `path`, a table with named columns: a UTF-8 CSV file (a byte-order mark is allowed)
    with a header row that names every column once, or a Parquet or Arrow IPC (Feather) file,
    told apart by the suffix (.parquet, .pq, .arrow, .feather, .ipc) unless `format` names one.
    `features=None` takes every column but the target. Blank lines are skipped. Every value
    used must be a finite number within float32's range, except classification labels, which
    are text (but not "nan" or "inf").

    The table is parsed column by column (pyarrow); only when a check fails is a CSV file read
    again, cell by cell, to name the line, column and value in the message.
    """
    from gradtrain.datasets import tables

    path = Path(path)
    kind = tables.file_format(path, format)
    if kind != "csv":
        return tables.load_binary(path, kind, target, features, task, format)
    tables.check_readable(path)
    try:
        return _load_fast(path, target, features, task, delimiter)
    except tables.SlowLook:
        return _load_slowly(path, target, features, task, delimiter)


def _load_fast(
    path: Path, target: str, features: list[str] | None, task: str, delimiter: str
) -> CsvData:
    """Columns parsed by pyarrow and checked whole; `tables.SlowLook` when a check fails (or
    pyarrow cannot parse the file), for `_load_slowly` to find and name the cell."""
    from gradtrain.datasets import tables

    line, raw_header = tables.csv_header(path, delimiter)
    header = [name.strip() for name in raw_header]
    feature_names = check_columns(path, line, header, target, features, delimiter)
    if len(feature_names) + 1 < len(header):
        tables.check_text_is_clean(path)  # (the columns pyarrow skips are not checked by it)
    raw_names = dict(zip(header, raw_header, strict=True))
    table = tables.read_csv_columns(path, raw_names, feature_names, target, task, delimiter)
    stripped = {raw: name for name, raw in raw_names.items()}
    table = table.rename_columns([stripped[name] for name in table.column_names])
    if table.num_rows == 0:
        raise tables.SlowLook
    inputs = tables.features_tensor(table, feature_names)
    if not torch.isfinite(inputs).all():
        raise tables.SlowLook
    if task == "regression":
        targets = tables.features_tensor(table, [target])[:, 0]
        if not torch.isfinite(targets).all():
            raise tables.SlowLook
        return CsvData(InMemoryDataset(inputs, targets), feature_names)
    class_names, targets = tables.class_indices(table.column(target))
    if any(not name or _is_non_finite_number(name) or "\x00" in name for name in class_names):
        raise tables.SlowLook
    _check_class_count(path, target, class_names, table.num_rows)
    return CsvData(InMemoryDataset(inputs, targets), feature_names, class_names)


def check_columns(
    path: Path,
    header_line: int | None,
    header: list[str],
    target: str,
    features: list[str] | None,
    delimiter: str | None,
) -> list[str]:
    """The header's checks (every column named once, the target and features present, the
    features neither the target nor repeated); returns the feature columns. `header_line`
    and `delimiter` are None for a file without lines (Parquet, Arrow)."""
    if header_line is not None:
        _check_header(path, header_line, header)
    else:
        _check_unique_names(path, header)
    _check_features(path, header, target, features)
    for name in [target, *(features or [])]:
        if name not in header:
            role = "target" if name == target else "feature"
            hint = _delimiter_hint(header, delimiter) if delimiter is not None else ""
            raise DataError(
                f"{path}: no column '{name}' ({role}); columns are: {', '.join(header)}{hint}"
            )
    feature_names = features if features is not None else [n for n in header if n != target]
    if not feature_names:
        raise DataError(f"{path}: no feature columns besides the target '{target}'")
    return feature_names


def _load_slowly(
    path: Path, target: str, features: list[str] | None, task: str, delimiter: str
) -> CsvData:
    """The file read cell by cell into Python values: slow, but it knows the line, column and
    text of every cell, so whatever made the fast reader give up is named exactly."""
    text, undecodable = _read_text(path)
    records = _parse(path, text, delimiter)
    if not records:
        raise DataError(f"{path}: the file is empty; it needs a header row")
    if undecodable or _NUL in text:
        _refuse_marked_cell(path, records)
    (header_line, header), rows = records[0], records[1:]
    header = [name.strip() for name in header]
    feature_names = check_columns(path, header_line, header, target, features, delimiter)
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")

    column = {name: index for index, name in enumerate(header)}
    for line, row in rows:  # every row has every column before any value is read
        if len(row) != len(header):
            raise DataError(f"{path}, {_ragged(line, row, len(header))}")
    if task == "regression":
        _refuse_text_target(path, target, [row[column[target]] for _, row in rows], rows)
    feature_rows: list[list[float]] = []
    labels: list[str] = []
    for line, row in rows:
        values = []
        for name in feature_names:
            try:
                values.append(_number(path, line, name, row[column[name]]))
            except DataError as error:
                cells = [r[column[name]] for _, r in rows]
                hint = _text_feature_hint(name, cells, feature_names)
                raise DataError(f"{error}{hint}") from None
        feature_rows.append(values)
        label = row[column[target]].strip()
        if not label:
            raise DataError(f"{path}, line {line}, column '{target}': empty value")
        labels.append(label)

    lines = [line for line, _ in rows]
    inputs = torch.tensor(feature_rows, dtype=torch.float32)
    _check_finite(inputs, path, feature_names, lines, lambda r, c: rows[r][1][column[c]])
    if task == "regression":
        values = [
            _number(path, line, target, label) for line, label in zip(lines, labels, strict=True)
        ]
        targets = torch.tensor(values, dtype=torch.float32)
        _check_finite(targets, path, [target], lines, lambda r, _: labels[r])
        return CsvData(InMemoryDataset(inputs, targets), feature_names)

    class_names = _sorted_labels(set(labels))
    _check_labels(path, target, class_names, labels, lines)
    index = {name: i for i, name in enumerate(class_names)}
    targets = torch.tensor([index[label] for label in labels], dtype=torch.int64)
    return CsvData(InMemoryDataset(inputs, targets), feature_names, class_names)


def _refuse_text_target(path: Path, target: str, cells: list[str], rows: list[Row]) -> None:
    """A regression target that is mostly text is a classification target: say so, rather
    than "'dog' is not a number" (a stray word in a numeric column is named as a cell)."""
    words = [i for i, cell in enumerate(cells) if cell.strip() and not _is_number(cell.strip())]
    if 2 * len(words) <= len(cells):  # (a minority of words: cells to fix, named one by one)
        return
    first = words[0]
    raise DataError(
        f"{path}, line {rows[first][0]}, column '{target}': {_show(cells[first].strip())} is "
        f"text ({len(words)} of the {len(cells)} values of the target column are), so the "
        "task is classification: set dataset.task=classification (with its loss, "
        "loss=cross_entropy)"
    )


def _text_feature_hint(name: str, cells: list[str], features: list[str]) -> str:
    """For a feature cell that is not a number: if the column is mostly text, it is a text
    column, which cannot be a feature; say how to leave it out."""
    words = sum(1 for cell in cells if cell.strip() and not _is_number(cell.strip()))
    if 2 * words <= len(cells):
        return "; fix or remove the row"
    kept = ",".join(feature for feature in features if feature != name)
    leave_out = f"dataset.features=[{kept}]" if kept else "another column as a feature"
    return (
        f"; column '{name}' holds text ({words} of {len(cells)} values), which cannot be a "
        f"feature: leave it out with {leave_out}"
    )


# ------------------------------------------------------------------------------ the file's text
def _read_text(path: Path) -> tuple[str, bool]:
    """The file's text, and whether some bytes were not UTF-8 (then they are U+DCXX in it, and
    NULs are `_NUL`, for `_refuse_marked_cell` to name where they are)."""
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a file (dataset.path)")
    if not path.is_file():
        # Not only a missing path: a FIFO or device would block or never end, so it is refused.
        what = "not a regular file" if path.exists() else "no such file"
        raise DataError(f"{path}: {what} (dataset.path)")
    try:
        data = path.read_bytes()
    except OSError as exc:  # permission denied, an I/O error
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(
            f"{path}: the file is UTF-16 or UTF-32 (it starts with their byte-order mark); "
            "gradtrain reads CSV files as UTF-8: save it as UTF-8 (in Excel: 'CSV UTF-8')"
        )
    undecodable = False
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark (Excel's) is not a header
    except UnicodeDecodeError:
        text, undecodable = data.decode("utf-8-sig", errors="surrogateescape"), True
    return text.replace("\x00", _NUL), undecodable


def _parse(path: Path, text: str, delimiter: str) -> list[Row]:
    """The records, each with the line it starts on; blank lines are skipped (as pandas and
    pyarrow skip them)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[Row] = []
    start = 1
    try:
        for row in reader:
            if row:
                records.append((start, row))
            # A quoted cell may hold line breaks: the next record starts after the last line read.
            start = reader.line_num + 1
    except csv.Error as exc:
        header = [name.strip() for name in records[0][1]] if records else []
        raise _parse_error(path, text, delimiter, start, reader.line_num, header, exc) from None
    return records


def _parse_error(
    path: Path,
    text: str,
    delimiter: str,
    start: int,
    end: int,
    header: list[str],
    exc: csv.Error,
) -> DataError:
    limit = csv.field_size_limit()
    if not str(exc).startswith("field larger than field limit"):
        return DataError(f"{path}, line {end}: {exc}")
    # The csv module caps a cell's length, and raises without saying which cell: find it in the
    # record's text. It is refused rather than the limit raised (a process-wide setting): a
    # number that long would be nonsense, and text that long belongs in another file.
    record = "".join(io.StringIO(text, newline="").readlines()[start - 1 : end])
    found = _oversized_field(record, delimiter, limit)
    where, value = "", ""
    if found is not None:
        index, begin = found
        where = f", {_column(header, index)}"
        value = f" (starting {_show(record[begin : begin + SHOWN_CHARACTERS])[:-1]}...')"
    return DataError(
        f"{path}, line {start}{where}: a cell of more than {limit} characters{value}, the limit "
        "of Python's csv module; remove that column from the file"
    )


def _oversized_field(record: str, delimiter: str, limit: int) -> tuple[int, int] | None:
    """(index, start offset) of the first cell of `record` longer than `limit` characters,
    following the csv module's default quoting (a doubled quote counts as one more character)."""
    index, begin, length, quoted = 0, 0, 0, False
    for offset, char in enumerate(record):
        if char == '"':
            quoted = not quoted
        elif char == delimiter and not quoted:
            index, begin, length = index + 1, offset + 1, 0
            continue
        else:
            length += 1
        if length > limit:
            return index, begin
    return None


def _refuse_marked_cell(path: Path, records: list[Row]) -> None:
    """Raise for the first cell holding a NUL or a byte that is not UTF-8 (see `_read_text`)."""
    found = _first_marked_cell(records)
    if found is None:
        return
    line, index, text = found
    header = [name.strip() for name in records[0][1]] if line != records[0][0] else []
    mark = _MARKED.search(text)
    assert mark is not None
    where = f"{path}, line {line}, {_column(header, index)}: {_show(text)}"
    if mark.group() == _NUL:
        raise DataError(
            f"{where} holds a NUL byte, which text files do not: is the file binary, or "
            "UTF-16 without a byte-order mark? gradtrain reads CSV files as UTF-8"
        )
    byte = ord(mark.group()) - 0xDC00
    raise DataError(
        f"{where} is not UTF-8 (byte 0x{byte:02x}); gradtrain reads CSV files as UTF-8: save "
        "the file as UTF-8 (in Excel: 'CSV UTF-8'; or iconv -f latin1 -t utf-8 for Latin-1)"
    )


def _first_marked_cell(records: Sequence[Row]) -> tuple[int, int, str] | None:
    """(line, column index, text) of the first cell holding a `_MARKED` stand-in."""
    for line, row in records:
        for index, cell in enumerate(row):
            if _MARKED.search(cell):
                return line, index, cell
    return None


# -------------------------------------------------------------------------- header and features
def _check_unique_names(path: Path, header: list[str]) -> None:
    """A Parquet or Arrow file's columns: every name once."""
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: column '{name}' appears twice; column names must be unique")
        seen.add(name)


def _check_header(path: Path, line: int, header: list[str]) -> None:
    """Every column has a name, and no name twice: a repeated name made all but its last column
    unreachable (`a,a,y` trained on the second `a` twice)."""
    first: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if not name:
            hint = " (a delimiter at the end of the line?)" if number == len(header) else ""
            raise DataError(
                f"{path}, line {line}, column {number}: the header gives this column no "
                f"name{hint}; every column needs one"
            )
        if name in first:
            raise DataError(
                f"{path}, line {line}: column '{name}' appears twice in the header (columns "
                f"{first[name]} and {number}); column names must be unique"
            )
        first[name] = number


def _check_features(path: Path, header: list[str], target: str, features: list[str] | None) -> None:
    """`dataset.features` may not hold the target (training on the answer scores well and
    learns nothing) or a column twice (a copy of a feature only adds weights)."""
    if features is None:
        return
    choices = ", ".join(name for name in header if name != target)
    problems = []
    if target in features:
        problems.append(
            f"dataset.features lists the target '{target}', which would hand the model the "
            f"answer; choose among the other columns of {path} ({choices}), or null for all"
        )
    for name in dict.fromkeys(name for name in features if features.count(name) > 1):
        problems.append(
            f"dataset.features lists '{name}' twice; each column of {path} ({choices}) "
            "can be a feature once"
        )
    if problems:
        raise ConfigError(problems)


# ------------------------------------------------------------------------------------- values
def _number(path: Path, line: int, column: str, text: str) -> float:
    text = text.strip()
    if not text:
        raise DataError(f"{path}, line {line}, column '{column}': empty value")
    try:
        return float(text)
    except ValueError:
        raise DataError(
            f"{path}, line {line}, column '{column}': {_show(text)} is not a number"
        ) from None


def _check_finite(
    values: Tensor,
    path: Path,
    columns: Sequence[str],
    lines: Sequence[int],
    cell: Callable[[int, str], str],
) -> None:
    """Refuse the first NaN or infinity in `values`, (rows,) or (rows, len(columns)), in file
    order. Checked after the conversion to float32, so a value beyond its range, which became
    infinite there, is caught too. `cell(row, column)` is the text as written, for the message.

    Without this, a NaN in a training row surfaced as "diverged: lower the learning rate", and
    one in a validation row as a run that completed with val_loss null.
    """
    bad = ~torch.isfinite(values)
    if not bad.any():
        return
    # nonzero() lists indices in row-major order: the first is the earliest line, leftmost.
    first = bad.nonzero()[0].tolist()
    row, name = first[0], columns[first[1] if len(first) > 1 else 0]
    text = cell(row, name).strip()
    reason = (
        f"is beyond float32's range (±{FLOAT32_MAX:.4g}), in which gradtrain trains"
        if math.isfinite(float(text))
        else "is not a finite number; fill in or remove the row"
    )
    raise DataError(f"{path}, line {lines[row]}, column '{name}': {_show(text)} {reason}")


def _check_labels(
    path: Path, target: str, class_names: list[str], labels: list[str], lines: list[int]
) -> None:
    # Labels are text, but "nan" or "inf" is what a numeric export writes for a missing value.
    missing = [name for name in class_names if _is_non_finite_number(name)]
    if missing:
        row = next(r for r, label in enumerate(labels) if label in missing)
        raise DataError(
            f"{path}, line {lines[row]}, column '{target}': {_show(labels[row])} is not a "
            "finite number, so it marks a missing label rather than a class; fill in or remove "
            "the row"
        )
    _check_class_count(path, target, class_names, len(labels))


def _check_class_count(path: Path, target: str, class_names: list[str], rows: int) -> None:
    if len(class_names) < 2:
        raise DataError(
            f"{path}: target column '{target}' has a single class '{class_names[0]}'; "
            "classification needs at least 2"
        )
    # About one row per class is what a measurement or an ID looks like, not a class; it is
    # warned about, not refused (a many-class set can be meant, and no setting could allow it).
    if len(class_names) > LISTED_CLASSES and 2 * len(class_names) > rows:
        hint = (
            "they are all numbers: is it dataset.task=regression?"
            if all(_is_number(name) for name in class_names)
            else "is it an ID column?"
        )
        log.warning(
            "%s: target '%s' has %d classes in %d rows, so most classes have one row or none "
            "to train on; %s",
            path,
            target,
            len(class_names),
            rows,
            hint,
        )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_non_finite_number(text: str) -> bool:
    return _is_number(text) and not math.isfinite(float(text))


def _sorted_labels(labels: set[str]) -> list[str]:
    """Integer labels in numeric order (so 2 < 10), anything else alphabetically."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


# ---------------------------------------------------------------------------------- messages
def _column(header: list[str], index: int) -> str:
    """A column as a message names it: by its header name where there is one."""
    if index < len(header) and header[index]:
        return f"column '{header[index]}'"
    return f"column {index + 1}"


def _delimiter_hint(header: list[str], delimiter: str) -> str:
    """A header read as one column that holds another common delimiter: the setting is wrong.
    The suggestion is quoted as Hydra needs it on a shell's command line (`;` and `|` would be
    the shell's, and Hydra reads an unquoted `,` as a list)."""
    if len(header) != 1:
        return ""
    counts = {other: header[0].count(other) for other in ";\t|," if other != delimiter}
    likely = max(counts, key=lambda other: counts[other])
    if not counts[likely]:
        return ""
    setting = "dataset.delimiter=tab" if likely == "\t" else f"'dataset.delimiter=\"{likely}\"'"
    return f" (one column: is the delimiter {likely!r}? add {setting} to the command)"


def _ragged(line: int, row: list[str], expected: int) -> str:
    fields = f"{len(row)} field" + ("s" if len(row) != 1 else "")
    message = f"line {line}: {fields}, but the header has {expected}"
    breaks = sum(len(_LINE_BREAK.findall(cell)) for cell in row)
    if breaks:  # only a quoted cell holds a line break: one opened and never closed eats lines
        message += f" (a quoted cell runs on to line {line + breaks}: an unclosed '\"'?)"
    return message


def _show(text: str) -> str:
    """`text` quoted for a message: cut to SHOWN_CHARACTERS, with NULs, undecodable bytes and
    other unprintable characters written as escapes, so none can hide or break the message."""
    escaped = []
    for char in text[:SHOWN_CHARACTERS]:
        if char == _NUL:
            escaped.append("\\x00")
        elif "\udc80" <= char <= "\udcff":
            escaped.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char.isprintable():
            escaped.append(char)
        else:
            escaped.append(repr(char)[1:-1])  # \n, \t, \x1b, ...
    if len(text) > SHOWN_CHARACTERS:
        return f"'{''.join(escaped)}...' ({len(text)} characters)"
    return f"'{''.join(escaped)}'"
