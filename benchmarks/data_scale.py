"""Big tables: one epoch of `experiment=csv_regression` on a generated table, whole process,
against pandas plus a hand-written loop; and a streamed Parquet epoch's peak memory.

    python benchmarks/data_scale.py                   # 1M x 20 CSV, 3 rounds, + 5M streamed
    python benchmarks/data_scale.py --rows 10000000   # the 10M-row figures, if memory allows
    python benchmarks/data_scale.py --quick           # 20k rows: shows that it runs

(The baseline needs pandas: pip install -e ".[bench]".) Each run is a fresh process, timed
from its start to its exit (imports included) by a parent that reads its peak resident
memory from `getrusage(RUSAGE_CHILDREN)`; one parent per run, so each figure is that run's
alone. The runs alternate round by round (A B, B A, ...) and the table gives the median.
gradtrain runs as a user would: `python train.py ...` with `logger=none` and no checkpoints
(the baseline writes no logs either; a default run adds TensorBoard event files and figures).
Both read the CSV, hold out 20% of the rows (seeded), z-score the features with the training
rows' statistics, and train one epoch of a linear model with SGD at batch 1024.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_FEATURES, BATCH_SIZE = 20, 1024

# The baseline: what a user would write by hand with pandas and torch.
HAND_WRITTEN = """
import sys
import numpy as np
import pandas as pd
import torch

path, target = sys.argv[1], "y"
frame = pd.read_csv(path)
features = [c for c in frame.columns if c != target]
inputs = torch.from_numpy(frame[features].to_numpy(np.float32))
targets = torch.from_numpy(frame[target].to_numpy(np.float32))
del frame
torch.manual_seed(0)
order = torch.randperm(len(targets))
n_val = round(0.2 * len(targets))
val, train = order[:n_val].sort().values, order[n_val:].sort().values
x, y, x_val, y_val = inputs[train], targets[train], inputs[val], targets[val]
del inputs, targets
mean, std = x.mean(0), x.std(0, correction=0)
x, x_val = (x - mean) / std, (x_val - mean) / std
model = torch.nn.Linear(x.shape[1], 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for batch in torch.randperm(len(y)).split(1024):
    loss = torch.nn.functional.mse_loss(model(x[batch]).squeeze(-1), y[batch])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
with torch.no_grad():
    val_loss = torch.nn.functional.mse_loss(model(x_val).squeeze(-1), y_val)
print(f"val_loss {val_loss.item():.4f}")
"""

# Runs `argv` as a child and reports its wall time and peak memory (as JSON on stdout).
MEASURE = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - start
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"s": seconds, "mib": peak_kib / 1024, "rc": done.returncode,
                  "tail": (done.stdout + done.stderr)[-600:]}))
"""


def measure(argv: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(argv[:3])}... failed:\n{result['tail']}")
    return result


def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    """A regression table of `rows` x 20 features, written in blocks (never held whole)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=N_FEATURES)
    names = [f"x{i}" for i in range(N_FEATURES)]
    schema = pa.schema([(n, pa.float64()) for n in [*names, "y"]])
    with pa_csv.CSVWriter(path, schema) as writer:
        for start in range(0, rows, 200_000):
            n = min(200_000, rows - start)
            x = rng.normal(size=(n, N_FEATURES)).round(6)
            y = (x @ weights + 0.1 * rng.normal(size=n)).round(6)
            columns = [pa.array(x[:, i]) for i in range(N_FEATURES)] + [pa.array(y)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_parquet(path: Path, rows: int, seed: int = 0) -> None:
    """The same kind of table as Parquet (float32, row groups of 128k rows), in blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=N_FEATURES).astype(np.float32)
    names = [f"x{i}" for i in range(N_FEATURES)]
    schema = pa.schema([(n, pa.float32()) for n in [*names, "y"]])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 131_072):
            n = min(131_072, rows - start)
            x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
            y = x @ weights + np.float32(0.1) * rng.normal(size=n).astype(np.float32)
            columns = [pa.array(x[:, i]) for i in range(N_FEATURES)] + [pa.array(y)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def gradtrain_argv(path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=csv_regression",
        f"dataset.path={path}",
        "dataset.target=y",
        f"dataset.batch_size={BATCH_SIZE}",
        "trainer.max_epochs=1",
        "logger=none",
        "trainer.save_checkpoints=false",
        "trainer.progress_bar=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows (default 1M)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-rows", type=int, default=5_000_000, help="0: skip")
    parser.add_argument("--quick", action="store_true", help="20k rows, 1 round, 50k streamed")
    parser.add_argument("--dir", type=Path, default=None, help="where the tables are written")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.rounds, args.stream_rows = 20_000, 1, 50_000
    work = Path(args.dir or tempfile.mkdtemp(prefix="gradtrain-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(tempfile.mkdtemp(dir=work, prefix="runs-"))  # fresh: runs never overwrite

    csv_path = work / f"table_{args.rows}.csv"
    if not csv_path.exists():
        print(f"writing {csv_path} ...", flush=True)
        write_csv(csv_path, args.rows)
    size_mb = csv_path.stat().st_size / 1e6
    cpus = os.cpu_count()
    print(f"{args.rows:,} rows x {N_FEATURES} features, {size_mb:.0f} MB CSV; {cpus} CPUs")

    hand = [sys.executable, "-c", HAND_WRITTEN, str(csv_path)]
    runs: dict[str, list[dict[str, float]]] = {"pandas + hand loop": [], "gradtrain": []}
    for round_number in range(args.rounds):
        order = list(runs) if round_number % 2 == 0 else list(reversed(runs))
        for name in order:
            run_dir = runs_dir / f"round{round_number}"
            argv = hand if name != "gradtrain" else gradtrain_argv(csv_path, run_dir)
            runs[name].append(measure(argv))
            print(
                f"  round {round_number + 1} {name}: {runs[name][-1]['s']:.2f} s, "
                f"{runs[name][-1]['mib']:.0f} MiB",
                flush=True,
            )
    median = {
        name: (statistics.median(r["s"] for r in rs), statistics.median(r["mib"] for r in rs))
        for name, rs in runs.items()
    }
    base_s, base_mib = median["pandas + hand loop"]
    print(f"\n| one epoch, {args.rows:,} rows (median of {args.rounds}) | time | peak memory |")
    print("|---|---|---|")
    for name, (seconds, mib) in median.items():
        ratio = f" ({seconds / base_s:.2f}x, {mib / base_mib:.2f}x)" if name == "gradtrain" else ""
        print(f"| {name} | {seconds:.2f} s | {mib:.0f} MiB |{ratio}")
    gradtrain_s, gradtrain_mib = median["gradtrain"]
    held = gradtrain_s <= 1.2 * base_s and gradtrain_mib <= 1.2 * base_mib
    print(f"target (<= 1.2x time and memory): {'met' if held else 'NOT met'}")

    if args.stream_rows:
        parquet = work / f"table_{args.stream_rows}.parquet"
        if not parquet.exists():
            print(f"\nwriting {parquet} ...", flush=True)
            write_parquet(parquet, args.stream_rows)
        streamed = measure(gradtrain_argv(parquet, runs_dir / "streamed", "dataset.streaming=true"))
        print(
            f"\nstreamed epoch, {args.stream_rows:,} rows x {N_FEATURES} Parquet "
            f"({parquet.stat().st_size / 1e6:.0f} MB): {streamed['s']:.1f} s, "
            f"peak {streamed['mib']:.0f} MiB (target < 1024 MiB: "
            f"{'met' if streamed['mib'] < 1024 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
