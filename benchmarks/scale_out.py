"""Scale-out throughput: ``facekp detect`` vs ``facekp batch`` (1 and 2 Ray workers), and
``facekp-train fit`` on 1 and 2 torchrun processes. Prints a markdown table for docs/scale-out.md.

    python benchmarks/scale_out.py [--data ../shared/data/faces68] [--photos 600] [--steps 4 12]

Every figure is a difference of two end-to-end runs of the real command, so that start-up (Python,
torch, Ray's local cluster and actors, torchrun's rendezvous) and the final validation drop out:

- photos/s = (N - 16) / (wall time on N photos - wall time on the first 16), N = ``--photos``
  faces68 photos (about 220x220 px crops, in index.csv order), bundled model, CPU;
- crops/s = 32 x (S2 - S1) / (wall time of S2 steps - of S1 steps), ``--steps S1 S2``, with the
  default architecture and a global batch of 32 on generated 96x96 faces (tests/synthetic.py), as
  many as keep S2 steps inside the first epoch (both runs then validate once, at their end);
  2 processes take 16 crops each per step, one torch thread each (torchrun's default), 1 process
  runs torch's default threads.

The start-up each command costs is printed too (wall time on 16 photos / S1 steps).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faces68"
FEW = 16


def _timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of ``cmd``; its output is dropped unless it fails."""
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else os.environ | env)
    if run.returncode != 0:
        sys.exit(f"failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr[-3000:]}")
    return time.perf_counter() - t


def _photo_rate(make_cmd, photos: list[str], folder: Path) -> tuple[float, float]:
    """(photos/s past start-up, start-up seconds) of ``make_cmd(list_file, out)``."""
    times = []
    for n in (FEW, len(photos)):
        listed = folder / f"photos{n}.csv"
        with listed.open("w", newline="") as fh:
            csv.writer(fh).writerows([["path"], *[[p] for p in photos[:n]]])
        out = folder / f"out{n}-{time.monotonic_ns()}"
        times.append(_timed(make_cmd(listed, out, photos[:n])))
    return (len(photos) - FEW) / (times[1] - times[0]), times[0]


def _fit_rate(nproc: int, data: Path, steps: tuple[int, int], folder: Path) -> tuple[float, float]:
    """(crops/s past start-up, seconds for the first ``steps[0]`` steps) of fit on ``nproc`` processes."""
    launcher = [sys.executable, "-m", "facekp.train"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "-m", "facekp.train"]
    times = []
    for s in steps:
        out = folder / f"fit{nproc}-{s}"
        times.append(_timed([*launcher, "fit", "--data", str(data), "--out", str(out), "--epochs", "100",
                             "--batch-size", "32", "--max-steps", str(s), "--device", "cpu", "--val-fraction", "0.1"]))
    return 32 * (steps[1] - steps[0]) / (times[1] - times[0]), times[0]


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="faces68 (its index.csv lists the photos)")
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--steps", type=int, nargs=2, default=(4, 12), metavar=("S1", "S2"))
    args = parser.parse_args(argv)
    with (args.data / "index.csv").open() as fh:
        photos = [str(args.data / row["image"]) for row in csv.DictReader(fh)][: args.photos]
    if len(photos) <= FEW:
        sys.exit(f"need more than {FEW} photos, found {len(photos)} in {args.data}")
    facekp = [sys.executable, "-m", "facekp.cli"]
    print(f"{_cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start; "
          f"{len(photos)} photos, fit steps {args.steps[0]} -> {args.steps[1]}\n")
    print("| command | throughput past start-up | start-up (16 photos / S1 steps) |")
    print("|---|---:|---:|", flush=True)

    def row(what: str, rate: str, start: float) -> None:
        print(f"| {what} | {rate} | {start:.1f} s |", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rate, start = _photo_rate(lambda listed, out, ps: [*facekp, "detect", *ps, "--csv", f"{out}.csv",
                                                           "--device", "cpu"], photos, folder)
        row("`facekp detect --csv` (1 process)", f"{rate:.1f} photos/s", start)
        for workers in (1, 2):
            rate, start = _photo_rate(lambda listed, out, ps: [*facekp, "batch", str(listed), "--out", f"{out}.parquet",
                                                               "--device", "cpu", "--workers", str(workers)], photos, folder)
            row(f"`facekp batch --workers {workers}` (local Ray)", f"{rate:.1f} photos/s", start)
        sys.path.insert(0, str(ROOT / "tests"))
        from synthetic import write_kaggle_csv

        data = folder / "faces.csv"
        write_kaggle_csv(data, int(32 * args.steps[1] / 0.8) + 1, seed=0)  # 10% validation, and some margin
        for nproc in (1, 2):
            rate, start = _fit_rate(nproc, data, tuple(args.steps), folder)
            row(f"`facekp-train fit`, {nproc} process{'es' if nproc > 1 else ''}", f"{rate:.1f} crops/s", start)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
