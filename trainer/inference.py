"""A finished run -> predictions on new rows (`predict.py`, `gradtrain.load_run`).

Everything comes from the run's checkpoint (read with `weights_only=True`): the weights, the
validated config the model is rebuilt from, and the facts of its data (`build.Data`): the
feature names the rows are read by, the class names predictions are given as, and the training
split's standardisation statistics, applied to the new rows as they were to the training rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradtrain.checkpoint import LAST, load_checkpoint
from gradtrain.config import Config, CsvDatasetConfig, validate_config
from gradtrain.errors import CheckpointError, ConfigError, DataError, GradtrainError

BEST = "best.pt"  # the checkpoint of the run's best validation loss, where the run keeps one
CHECKPOINT_DIR = "checkpoints"
PREDICTION = "prediction"  # the column predict.py adds
# Rows per forward pass: bounds the memory a large file takes.
CHUNK_ROWS = 65536


@dataclass
class LoadedRun:
    """A trained model with what it needs to predict: `load_run(run_dir).predict(rows)`."""

    model: nn.Module  # on the CPU, in eval mode
    config: Config
    checkpoint: Path  # the file the weights came from
    feature_names: list[str]
    class_names: list[str] | None  # classification: index -> label as in the training data
    feature_mean: Tensor | None  # None: the features were not standardised
    feature_std: Tensor | None

    @property
    def classification(self) -> bool:
        return self.class_names is not None

    def predict(self, rows: Any) -> list[Any]:
        """One prediction per row: the class label (as in the training data) for
        classification, the value for regression.

        `rows`: a CSV file's path (its header names the columns), a list of dicts (column ->
        value), or a pandas DataFrame. Columns are found by name, in any order; extra ones are
        ignored; a missing feature is a DataError naming it.
        """
        if isinstance(rows, str | Path):
            _, records = read_csv_rows(Path(rows), self.delimiter)
            return self.predict_records(records, source=str(rows))
        if type(rows).__module__.startswith("pandas"):  # (pandas only if the caller has it)
            return self.predict_records(rows.to_dict("records"), source="the DataFrame")
        if isinstance(rows, Mapping):
            raise TypeError("predict takes rows (a list of dicts), not one dict: wrap it in [...]")
        return self.predict_records(list(rows), source="the rows")

    @property
    def delimiter(self) -> str:
        """The training CSV's delimiter (new rows are written like the training file)."""
        dataset = self.config.dataset
        return dataset.delimiter if isinstance(dataset, CsvDatasetConfig) else ","

    def predict_records(self, records: Sequence[Mapping[str, Any]], source: str) -> list[Any]:
        inputs = self.features(records, source)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(inputs), CHUNK_ROWS):
                outputs.append(self.model(inputs[start : start + CHUNK_ROWS]))
        if not outputs:
            return []
        output = torch.cat(outputs)
        if self.class_names is None:
            return [float(v) for v in output.reshape(len(inputs)).tolist()]
        # One logit per row (bce_with_logits): class 1 where it is positive.
        indices = (output > 0).long() if output.dim() == 1 else output.argmax(dim=-1)
        return [self.class_names[i] for i in indices.tolist()]

    def features(self, records: Sequence[Mapping[str, Any]], source: str) -> Tensor:
        """(rows, features) float32, the features picked by name and standardised as the
        training rows were."""
        missing = [name for name in self.feature_names if records and name not in records[0]]
        if missing:
            raise DataError(
                f"{source}: no column {', '.join(repr(m) for m in missing)}; the model needs "
                f"the columns {', '.join(self.feature_names)} (in any order; others are "
                f"ignored), and the rows have {', '.join(map(str, records[0]))}"
            )
        values = []
        for number, record in enumerate(records, start=1):
            if not isinstance(record, Mapping):
                raise TypeError(f"{source}: row {number} is a {type(record).__name__}, not a dict")
            values.append([_number(source, number, name, record) for name in self.feature_names])
        inputs = torch.tensor(values, dtype=torch.float32).reshape(
            len(values), len(self.feature_names)
        )
        if self.feature_mean is not None and self.feature_std is not None:
            inputs = (inputs - self.feature_mean) / self.feature_std
        return inputs


def _number(source: str, row: int, column: str, record: Mapping[str, Any]) -> float:
    if column not in record:
        raise DataError(f"{source}, row {row}: no value in column '{column}'")
    value = record[column]
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise DataError(
            f"{source}, row {row}, column '{column}': {value!r} is not a number"
        ) from None
    if not math.isfinite(number):
        raise DataError(f"{source}, row {row}, column '{column}': {value!r} is not finite")
    return number


def load_run(run_dir: str | Path) -> LoadedRun:
    """The trained model of the run in `run_dir` (its `checkpoints/best.pt` where the run kept
    one, else `checkpoints/last.pt`; or a checkpoint file itself), ready to predict."""
    path = checkpoint_of(Path(run_dir))
    payload = load_checkpoint(path)
    if "config" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} holds no config or no weights: not a finished run's")
    facts = payload.get("data") or _facts_beside(path)
    try:
        config = validate_config(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(
            f"{path}: its config no longer validates (saved by another gradtrain version, or "
            f"with a plugin that is not installed now): {exc}"
        ) from None
    if config.dataset.name == "none":
        raise GradtrainError(
            f"{path}: the run trained on no data (dataset=none): its model takes no rows to "
            "predict from (its parameters are in summary.json)"
        )
    if facts is None:
        raise CheckpointError(
            f"{path} stores no feature names or statistics (saved by a gradtrain before "
            "predictions); train the run again to predict with it"
        )
    model = _rebuild_model(config, facts, path)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit its config's model: {exc}") from None
    model.eval()
    return LoadedRun(
        model=model,
        config=config,
        checkpoint=path,
        feature_names=list(facts["feature_names"]),
        class_names=list(facts["class_names"]) if facts.get("class_names") else None,
        feature_mean=facts.get("feature_mean"),
        feature_std=facts.get("feature_std"),
    )


def checkpoint_of(run_dir: Path) -> Path:
    """best.pt, else last.pt, of the run in `run_dir`; a file is taken as the checkpoint."""
    if run_dir.is_file():
        return run_dir
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run folder")
    folder = run_dir / CHECKPOINT_DIR
    for name in (BEST, LAST):
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(
        f"{run_dir} holds no {CHECKPOINT_DIR}/{BEST} or {CHECKPOINT_DIR}/{LAST}: not a run "
        "folder, or a run trained with trainer.save_checkpoints=false"
    )


def _facts_beside(path: Path) -> dict[str, Any] | None:
    """The data facts of last.pt beside `path` (a checkpoint written without them)."""
    last = path.parent / LAST
    if last == path or not last.exists():
        return None
    facts = load_checkpoint(last).get("data")
    return facts if isinstance(facts, dict) else None


def _rebuild_model(config: Config, facts: Mapping[str, Any], path: Path) -> nn.Module:
    """The run's model as `build` made it, sized from the stored facts instead of the data."""
    from gradtrain.build import Data, build_loss, build_model

    names = facts.get("feature_names")
    classes = facts.get("class_names")
    if not isinstance(names, list) or not names:
        raise CheckpointError(f"{path}: its feature names are missing or malformed")
    data = Data(
        n_features=len(names),
        n_classes=len(classes) if classes else None,
        class_names=list(classes) if classes else None,
    )
    return build_model(config, build_loss(config.loss), data)


def read_csv_rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as dicts) of a CSV file with a header row; blank lines are skipped."""
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a CSV file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataError(
            f"{path}: not UTF-8 text; save it as UTF-8 (in Excel: 'CSV UTF-8')"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file: {exc.strerror or exc}") from None
    try:
        records = [
            row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if row
        ]
    except csv.Error as exc:
        raise DataError(f"{path}: {exc}") from None
    if not records:
        raise DataError(f"{path}: the file is empty; it needs a header row")
    header = [name.strip() for name in records[0]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: the header names {', '.join(duplicated)} more than once")
    rows = []
    for line, row in enumerate(records[1:], start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}, data row {line - 1}: {len(row)} fields, but the header has {len(header)}"
            )
        rows.append(dict(zip(header, row, strict=True)))
    return header, rows


def write_predictions(
    path: Path,
    header: list[str],
    rows: Iterable[Mapping[str, str]],
    predictions: list[Any],
    delimiter: str,
) -> None:
    """The input rows as they were, plus the column `prediction`, written atomically."""
    from gradtrain.files import write_atomic

    def write(file: Any) -> None:
        text = io.StringIO(newline="")
        writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        writer.writerow([*header, PREDICTION])
        for row, prediction in zip(rows, predictions, strict=True):
            shown = f"{prediction:.7g}" if isinstance(prediction, float) else prediction
            writer.writerow([*(row[name] for name in header), shown])
        file.write(text.getvalue().encode("utf-8"))

    write_atomic(path, write)
