"""Screenshots of TensorBoard on a real sweep: what a user sees after the README's sweep command.

    python tools/dashboard_screenshots.py                 # into docs/ (the README's pictures)
    python tools/dashboard_screenshots.py --out /tmp/shots --keep

It runs the README's four-job sweep (`train.py -m experiment=linear_regression
optimizer.lr=0.01,0.03,0.1,0.3 logger.update_ratio=true logger.histogram_every_n_steps=50`),
serves it with a real `tensorboard` on 127.0.0.1, and takes headless-Chromium screenshots of the
Custom Scalars, Scalars and HParams pages (and Time Series with --time-series). Look at them:
they are the check that the charts a user needs come first.

Needs Chromium (Debian: `apt-get install -y chromium`); not part of the test suite or CI.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = [
    "experiment=linear_regression",
    "optimizer.lr=0.01,0.03,0.1,0.3",
    "logger.update_ratio=true",
    "logger.histogram_every_n_steps=50",  # histograms must not come first either
]
# page -> (URL fragment, file name, window size): the README's three pictures
PAGES = {
    "custom_scalars": ("#custom_scalars", "sweep-dashboard.png", (1400, 1250)),
    "scalars": ("#scalars", "sweep-scalars.png", (1400, 1000)),
    "hparams": ("#hparams", "sweep-hparams.png", (1800, 520)),
}
# (Headless Chromium draws Time Series' cards but not their lines, which need WebGL: enough to
# see the order of the groups, not for the README.)
TIME_SERIES = ("#timeseries", "sweep-timeseries.png", (1400, 1000))


def run_sweep(sweep_dir: Path) -> None:
    command = [sys.executable, str(ROOT / "train.py"), "-m", *SWEEP]
    command.append(f"hydra.sweep.dir={sweep_dir}")
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=sweep_dir.parent.parent, check=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(logdir: Path, port: int) -> subprocess.Popen[bytes]:
    """A real TensorBoard on 127.0.0.1, ready to answer once this returns."""
    tensorboard = [sys.executable, "-m", "tensorboard.main"]
    server = subprocess.Popen(
        [*tensorboard, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=2) as r:
                if r.status == 200 and len(r.read()) > 2:  # the runs are loaded
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit("tensorboard did not answer within 60 s")


def screenshot(chromium: str, url: str, target: Path, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",  # let the page fetch and draw its charts
                f"--window-size={size[0]},{size[1]}",
                f"--screenshot={target}",
                url,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )
    print(f"{url} -> {target}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go")
    parser.add_argument("--keep", action="store_true", help="keep the sweep folder")
    parser.add_argument("--time-series", action="store_true", help="also the Time Series page")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Chromium: apt-get install -y chromium")
    work = Path(tempfile.mkdtemp(prefix="gradtrain-shots-"))
    sweep_dir = work / "multirun" / "sweep"
    try:
        run_sweep(sweep_dir)
        port = free_port()
        server = serve(sweep_dir, port)
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            pages = [*PAGES.values(), *([TIME_SERIES] if args.time_series else [])]
            for fragment, name, size in pages:
                screenshot(chromium, f"http://127.0.0.1:{port}/{fragment}", args.out / name, size)
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        if args.keep:
            print(f"sweep kept in {sweep_dir}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
