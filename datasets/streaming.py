"""Training from a table larger than memory: the file is read in chunks while training.

- **Chunks.** A chunk is at most `CHUNK_ROWS` rows of a Parquet row group, a slice of an Arrow
  IPC record batch, or one block of a CSV file. Their list (the plan) is fixed by the file
  alone, so every process and worker agrees on it.
- **One pass first** (`scan`): every value is checked (as the in-memory reader checks it),
  the classes are collected, the rows are split into training and validation, and the
  training rows' per-feature mean and standard deviation are taken (float64, merged chunk by
  chunk), so features are standardised with statistics of the training rows only.
- **Validation split.** Row `i` (0-based, in file order) is a validation row when a seeded
  hash of `i` falls below `val_fraction`: the split is the same in every epoch, process and
  resume, and needs no pass over the data to draw.
- **Sharding.** DataLoader worker `w` of `W` reads chunks `w, w+W, ...` and yields exactly one
  item per chunk, so the DataLoader's round-robin hands them over in file order whatever `W`
  is. Under torchrun, process `p` of `P` keeps the training rows whose index among training
  rows is `p` modulo `P`, below the largest multiple of `P` (every process gets as many rows,
  as DDP's lockstep needs; fewer than `P` rows are left out).
- **Shuffling.** In the main process, chunks pass through a buffer of `shuffle_buffer` rows;
  each batch is drawn at random from the buffer (a generator seeded with `seed + epoch`).
  The batches of an epoch are thus a function of (seed, epoch, number of processes) alone,
  and a resumed run, which replays the epoch up to its checkpointed batch, continues with
  the very batches an uninterrupted run would have had.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gradtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_ROWS = 65_536  # rows of a Parquet row group or Arrow batch read at a time
CSV_BLOCK_BYTES = 4 << 20  # a CSV block: ~20,000 rows of 20 numbers
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def validation_rows(first_row: int, count: int, seed: int, val_fraction: float) -> Tensor:
    """Whether each of the rows `first_row ..< first_row + count` is a validation row: a
    splitmix64 hash of (row index, seed), taken as a number in [0, 1), below `val_fraction`."""
    import numpy as np

    if val_fraction <= 0:
        return torch.zeros(count, dtype=torch.bool)
    with np.errstate(over="ignore"):
        z = np.arange(first_row, first_row + count, dtype=np.uint64)
        z = z * np.uint64(_GOLDEN) + np.uint64((seed * _GOLDEN + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
    return torch.from_numpy(uniform < val_fraction)


# ------------------------------------------------------------------------------------ the file
@dataclass(frozen=True)
class Chunk:
    unit: int  # Parquet row group, Arrow record batch, or CSV block
    start: int  # first row within the unit
    rows: int
    first_row: int  # index of its first row in the file


@dataclass
class TableSource:
    """The used columns of a table file, read a chunk at a time (picklable: workers get a copy
    and open the file themselves)."""

    path: Path
    kind: Literal["csv", "parquet", "arrow"]
    features: list[str]
    target: str
    task: str
    delimiter: str = ","
    raw_names: dict[str, str] = field(default_factory=dict)  # CSV: name -> header's spelling

    def plan(self) -> list[Chunk] | None:
        """The chunks from the file's metadata (None for CSV: known only once read)."""
        chunks: list[Chunk] = []
        first = 0
        for unit, rows in enumerate(self._unit_rows()):
            for start in range(0, rows, CHUNK_ROWS):
                length = min(CHUNK_ROWS, rows - start)
                chunks.append(Chunk(unit, start, length, first))
                first += length
        return chunks if self.kind != "csv" else None

    def _unit_rows(self) -> list[int]:
        import pyarrow as pa

        if self.kind == "parquet":
            import pyarrow.parquet as pq

            metadata = pq.ParquetFile(self.path).metadata
            return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        if self.kind == "arrow":
            with pa.memory_map(str(self.path)) as source:
                reader = pa.ipc.open_file(source)
                return [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
        return []

    def read(self, chunks: Sequence[Chunk] | None, wanted: Sequence[int] | None) -> Iterator[Any]:
        """(chunk index, Chunk, pyarrow table of the used columns, by name) for the chunks
        `wanted` (all when None), in order. For CSV `chunks` is None: the blocks are the
        chunks, numbered as read."""
        if self.kind == "csv":
            yield from self._read_csv(wanted)
            return
        assert chunks is not None
        indices = range(len(chunks)) if wanted is None else wanted
        columns = [*self.features, self.target]
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            # Read, not memory-mapped: mapped pages count as the process's memory, and a pass
            # over a mapped 600 MB file once doubled a streamed run's peak.
            file = pq.ParquetFile(self.path, memory_map=False)
            cached: tuple[int, pa.Table] | None = None
            for index in indices:
                chunk = chunks[index]
                if cached is None or cached[0] != chunk.unit:
                    cached = None  # (freed before the next row group is read)
                    cached = (chunk.unit, file.read_row_group(chunk.unit, columns=columns))
                yield index, chunk, cached[1].slice(chunk.start, chunk.rows)
            return
        import pyarrow as pa

        with pa.OSFile(str(self.path)) as source:  # (read, not mapped: see above)
            reader = pa.ipc.open_file(source)
            for index in indices:
                chunk = chunks[index]
                batch = reader.get_batch(chunk.unit).slice(chunk.start, chunk.rows)
                yield index, chunk, pa.Table.from_batches([batch]).select(columns)

    def _read_csv(self, wanted: Sequence[int] | None) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        from gradtrain.datasets.tables import strict_convert_options

        types = {self.raw_names[name]: pa.float32() for name in self.features}
        types[self.raw_names[self.target]] = (
            pa.float32() if self.task == "regression" else pa.string()
        )
        stripped = {raw: name for name, raw in self.raw_names.items()}
        keep = set(wanted) if wanted is not None else None
        first = 0
        index = 0
        try:
            reader = pa_csv.open_csv(
                self.path,
                read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
                parse_options=pa_csv.ParseOptions(delimiter=self.delimiter),
                convert_options=strict_convert_options(types),
            )
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                if keep is None or index in keep:
                    table = pa.Table.from_batches([batch])
                    table = table.rename_columns([stripped[n] for n in table.column_names])
                    yield index, Chunk(index, 0, batch.num_rows, first), table
                first += batch.num_rows
                index += 1
        except pa.ArrowInvalid as exc:
            # (pyarrow's "Row #" counts the lines of the file, the header included.)
            raise DataError(
                f"{self.path}: {_arrow_message(exc, list(types), stripped)}; with "
                "dataset.streaming=false the cell is named by its line, column and value"
            ) from None


def _arrow_message(exc: Exception, columns: list[str], names: dict[str, str]) -> str:
    """pyarrow's message, with "CSV column #i" given its name and "Row #n" called a line."""
    import re

    def column(match: re.Match[str]) -> str:
        number = int(match.group(1))
        return f"column '{names[columns[number]]}'" if number < len(columns) else match.group()

    text = re.sub(r"CSV column #(\d+)", column, str(exc))
    return re.sub(r"Row #(\d+)", r"line \1", text)


# ------------------------------------------------------------------------------ the first pass
@dataclass
class StreamPlan:
    """What one pass over the file found: the chunks, the rows of each split, statistics."""

    chunks: list[Chunk]
    train_before: list[int]  # training rows in the chunks before each chunk
    val_before: list[int]
    n_train: int
    n_val: int
    mean: Tensor | None  # (n_features,), float32; None: no standardisation
    std: Tensor | None
    class_names: list[str] = field(default_factory=list)


def scan(source: TableSource, seed: int, val_fraction: float, standardize: bool) -> StreamPlan:
    """One pass over the file: checks, classes, split sizes and the training rows' mean and
    standard deviation (Chan's merge of per-chunk moments, in float64)."""
    from gradtrain.datasets.csv_table import _check_class_count, _is_non_finite_number
    from gradtrain.datasets.tables import class_indices, features_tensor

    n_features = len(source.features)
    count = 0
    mean = torch.zeros(n_features, dtype=torch.float64)
    m2 = torch.zeros(n_features, dtype=torch.float64)
    chunks: list[Chunk] = []
    train_before: list[int] = []
    val_before: list[int] = []
    n_train = n_val = 0
    labels: set[str] = set()
    for _, chunk, table in source.read(source.plan(), None):
        chunks.append(chunk)
        train_before.append(n_train)
        val_before.append(n_val)
        inputs = _checked_features(source, table, chunk, features_tensor)
        if source.task == "regression":
            _checked_features(source, table, chunk, features_tensor, [source.target])
        else:
            labels |= set(class_indices(table.column(source.target))[0])
        is_val = validation_rows(chunk.first_row, chunk.rows, seed, val_fraction)
        n_val += int(is_val.sum())
        train = inputs[~is_val].double()
        n_train += len(train)
        if standardize and len(train):
            # Chan et al.: merge (count, mean, M2) of the rows so far with this chunk's.
            chunk_mean = train.mean(dim=0)
            chunk_m2 = ((train - chunk_mean) ** 2).sum(dim=0)
            total = count + len(train)
            delta = chunk_mean - mean
            mean = mean + delta * len(train) / total
            m2 = m2 + chunk_m2 + delta**2 * count * len(train) / total
            count = total
    if not chunks:
        raise DataError(f"{source.path}: the table has no rows")
    class_names: list[str] = []
    if source.task == "classification":
        from gradtrain.datasets.csv_table import _sorted_labels

        class_names = _sorted_labels(labels)
        bad = [name for name in class_names if not name or _is_non_finite_number(name)]
        if bad:
            raise DataError(
                f"{source.path}, column '{source.target}': the label {bad[0]!r} marks a missing "
                "label rather than a class; fill in or remove those rows"
            )
        _check_class_count(source.path, source.target, class_names, n_train + n_val)
    mean_f = std_f = None
    if standardize and count:
        std = (m2 / count).sqrt()
        mean_f = mean.float()
        std_f = torch.where(std > 0, std, torch.ones_like(std)).float()
    return StreamPlan(chunks, train_before, val_before, n_train, n_val, mean_f, std_f, class_names)


def _checked_features(
    source: TableSource,
    table: pa.Table,
    chunk: Chunk,
    features_tensor: Any,
    names: list[str] | None = None,
) -> Tensor:
    """The chunk's columns as float32, refusing a null or non-finite value by its row."""
    from gradtrain.datasets.tables import _NullCell, refuse_non_finite

    names = names if names is not None else source.features
    place = "data row" if source.kind == "csv" else "row"
    try:
        values = features_tensor(table, names)
    except _NullCell as null:
        raise DataError(
            f"{source.path}, {place} {chunk.first_row + null.row + 1}, column '{null.column}': "
            "empty (null) value; fill in or remove the row"
        ) from None
    if not torch.isfinite(values).all():

        def cell(row: int, name: str) -> Any:
            return table.column(name)[row]

        refuse_non_finite(source.path, values, names, place, cell, chunk.first_row)
    return values


# ---------------------------------------------------------------------------- the stream itself
class ChunkStream(IterableDataset[tuple[Tensor, Tensor]]):
    """One split's rows for this process, one item per chunk (possibly empty), in file order
    across DataLoader workers (see the module's docstring)."""

    def __init__(
        self,
        source: TableSource,
        plan: StreamPlan,
        split: Literal["train", "val"],
        seed: int,
        val_fraction: float,
        num_replicas: int,
        rank: int,
    ) -> None:
        self.source, self.plan, self.split = source, plan, split
        self.seed, self.val_fraction = seed, val_fraction
        self.num_replicas, self.rank = num_replicas, rank
        total = plan.n_train if split == "train" else plan.n_val
        # Training: as many rows on every process; validation: every row once.
        self.used = total - total % num_replicas if split == "train" else total
        self.rows = len(range(rank, self.used, num_replicas))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        plan, source = self.plan, self.source
        before = plan.train_before if self.split == "train" else plan.val_before
        wanted = list(range(worker_id, len(plan.chunks), workers))
        chunks = plan.chunks if source.kind != "csv" else None
        for index, chunk, table in source.read(chunks, wanted):
            from gradtrain.datasets.tables import class_indices, features_tensor

            is_val = validation_rows(chunk.first_row, chunk.rows, self.seed, self.val_fraction)
            mine = is_val if self.split == "val" else ~is_val
            # Each kept row's index among this split's rows, then this process's share.
            order = before[index] + torch.arange(int(mine.sum()))
            share = (order % self.num_replicas == self.rank) & (order < self.used)
            keep = mine.nonzero()[:, 0][share]
            inputs = features_tensor(table, source.features).index_select(0, keep)
            if plan.mean is not None and plan.std is not None:
                inputs = (inputs - plan.mean) / plan.std
            if source.task == "regression":
                targets = features_tensor(table, [source.target])[:, 0]
            else:
                names, codes = class_indices(table.column(source.target))
                where = {name: i for i, name in enumerate(plan.class_names)}
                to_index = torch.tensor([where[name] for name in names], dtype=torch.int64)
                targets = to_index[codes]
            yield inputs, targets.index_select(0, keep)


class StreamLoader:
    """Batches of a `ChunkStream`, drawn from a seeded shuffle buffer; a loader the Trainer
    uses like a DataLoader (a length, `sampler.set_epoch`)."""

    def __init__(
        self,
        stream: ChunkStream,
        batch_size: int,
        shuffle: bool,
        shuffle_buffer: int,
        seed: int,
        drop_last: bool,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        self.dataset = stream
        self.batch_size, self.shuffle, self.shuffle_buffer = batch_size, shuffle, shuffle_buffer
        self.seed, self.drop_last, self.pin_memory = seed, drop_last, pin_memory
        self.sampler = self  # (where the Trainer looks for set_epoch)
        self.epoch = 0
        self.chunks = DataLoader(
            stream,
            batch_size=None,  # the stream's items are whole chunks
            num_workers=num_workers,
            # A generator of its own: creating an iterator draws a seed from it, which must
            # not come from the global generator (a resumed run would draw at another point).
            generator=torch.Generator().manual_seed(seed),
            # Not persistent: new workers each epoch start from the beginning of the file.
            persistent_workers=False,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        rows = self.dataset.rows
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self._batches()
        if self.pin_memory and torch.cuda.is_available():
            return (tuple(t.pin_memory() for t in batch) for batch in batches)  # type: ignore[misc]
        return batches

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        size = self.batch_size
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        held_inputs: list[Tensor] = []
        held_targets: list[Tensor] = []
        held = 0
        # Rows kept back so that each batch is drawn from at least `shuffle_buffer` of them.
        keep_back = self.shuffle_buffer if self.shuffle else 0
        for inputs, targets in self.chunks:
            if not len(targets):
                continue
            held_inputs.append(inputs)
            held_targets.append(targets)
            held += len(targets)
            if held - keep_back < size:
                continue
            pool_x, pool_y = torch.cat(held_inputs), torch.cat(held_targets)
            if self.shuffle:
                order = torch.randperm(held, generator=generator)
                pool_x, pool_y = pool_x[order], pool_y[order]
            ready = (held - keep_back) // size * size
            for start in range(0, ready, size):
                yield pool_x[start : start + size], pool_y[start : start + size]
            held_inputs, held_targets = [pool_x[ready:]], [pool_y[ready:]]
            held -= ready
        if held == 0:
            return
        pool_x, pool_y = torch.cat(held_inputs), torch.cat(held_targets)
        if self.shuffle:
            order = torch.randperm(held, generator=generator)
            pool_x, pool_y = pool_x[order], pool_y[order]
        end = held // size * size if self.drop_last else held
        for start in range(0, end, size):
            yield pool_x[start : start + size], pool_y[start : start + size]


# -------------------------------------------------------------------------------- from a config
@dataclass
class StreamingData:
    train_loader: StreamLoader
    val_loader: StreamLoader | None
    n_features: int
    feature_names: list[str]
    class_names: list[str] | None
    feature_mean: Tensor | None  # the training rows' statistics; None: not standardised
    feature_std: Tensor | None


def build_streaming_data(
    path: str,
    target: str,
    features: list[str] | None,
    task: str,
    delimiter: str,
    format: Literal["auto", "csv", "parquet", "arrow"],
    standardize: bool,
    val_fraction: float,
    batch_size: int,
    shuffle: bool,
    shuffle_buffer: int,
    drop_last: bool,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
) -> StreamingData:
    """`dataset.streaming=true`: the file is checked and measured in one pass, then read in
    chunks while training. Refuses, before training, a stream shorter than one batch."""
    from gradtrain.datasets import tables
    from gradtrain.datasets.csv_table import check_columns

    file = Path(path)
    kind = tables.file_format(file, format)
    tables.check_readable(file)
    raw_names: dict[str, str] = {}
    if kind == "csv":
        try:
            line, raw_header = tables.csv_header(file, delimiter)
        except tables.SlowLook:
            raise DataError(
                f"{file}: the header row cannot be read as UTF-8 CSV with "
                f"dataset.delimiter={delimiter!r}; read it with dataset.streaming=false to "
                "have the cell named"
            ) from None
        header = [name.strip() for name in raw_header]
        feature_names = check_columns(file, line, header, target, features, delimiter)
        raw_names = dict(zip(header, raw_header, strict=True))
    else:
        tables.check_magic(file, kind, format)
        header = tables.binary_schema_names(file, kind)
        feature_names = check_columns(file, None, header, target, features, delimiter=None)
        schema = _schema(file, kind)
        problems = tables.numeric_problems(file, schema, feature_names, target, task)
        if problems:
            raise ConfigError(problems)
    source = TableSource(file, kind, feature_names, target, task, delimiter, raw_names)
    plan = scan(source, seed, val_fraction, standardize)

    def stream(split: Literal["train", "val"]) -> ChunkStream:
        return ChunkStream(source, plan, split, seed, val_fraction, num_replicas, rank)

    train = stream("train")
    if train.rows < batch_size:
        per = f" for each of {num_replicas} processes" if num_replicas > 1 else ""
        raise ConfigError(
            [
                f"dataset.batch_size={batch_size}, but the stream of {file} holds "
                f"{train.rows} training rows{per}, fewer than one batch: lower "
                "dataset.batch_size, or read the table into memory (dataset.streaming=false)"
            ]
        )
    if val_fraction > 0 and plan.n_val == 0:
        raise ConfigError(
            [
                f"dataset.val_fraction={val_fraction:g} holds out none of the "
                f"{plan.n_train} rows of {file}; raise it, or set it to 0"
            ]
        )

    def loader(split: ChunkStream, train: bool) -> StreamLoader:
        return StreamLoader(
            split,
            batch_size,
            shuffle=shuffle and train,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            drop_last=drop_last and train,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )

    val = stream("val")
    return StreamingData(
        train_loader=loader(train, train=True),
        val_loader=loader(val, train=False) if plan.n_val else None,
        n_features=len(feature_names),
        feature_names=feature_names,
        class_names=plan.class_names if task == "classification" else None,
        feature_mean=plan.mean,
        feature_std=plan.std,
    )


def _schema(path: Path, kind: Literal["parquet", "arrow"]) -> pa.Schema:
    import pyarrow as pa

    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_schema(path)
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema
