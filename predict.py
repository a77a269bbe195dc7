"""A finished run -> predictions on new rows: the input CSV plus a `prediction` column.

python predict.py <run_dir> <input.csv> <output.csv>

The model is the run's `checkpoints/best.pt` where it kept one, else `checkpoints/last.pt`
(or give a checkpoint file instead of the folder). Features are read by name (any column order;
other columns are kept and ignored) and standardised with the training split's statistics;
predictions are class labels as in the training data, or values for regression. In Python:
`gradtrain.load_run(run_dir).predict(rows)` (README: Predictions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Write the rows of a CSV file with the predictions of a trained run.",
    )
    parser.add_argument("run_dir", type=Path, help="a run folder (or one of its checkpoints)")
    parser.add_argument("input", type=Path, help="a CSV file with a header row")
    parser.add_argument("output", type=Path, help="where to write the rows with `prediction`")
    args = parser.parse_args(argv)

    # Imported after parsing, so that --help and usage errors come back before torch loads.
    from gradtrain.errors import GradtrainError
    from gradtrain.files import os_error_text
    from gradtrain.inference import PREDICTION, load_run, read_csv_rows, write_predictions

    try:
        run = load_run(args.run_dir)
        header, rows = read_csv_rows(args.input, run.delimiter)
        if PREDICTION in header:
            raise GradtrainError(
                f"{args.input} already has a column '{PREDICTION}'; rename or remove it"
            )
        predictions = run.predict_records(rows, source=str(args.input))
        write_predictions(args.output, header, rows, predictions, run.delimiter)
    except GradtrainError as exc:
        print(f"gradtrain: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"gradtrain: could not write {args.output}: {os_error_text(exc)}", file=sys.stderr)
        return 1
    kind = "classes" if run.classification else "values"
    print(f"{len(rows)} predictions ({kind}) from {run.checkpoint} written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
