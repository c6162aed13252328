"""What a sweep costs beyond its first run: one `scoregeo run` against a multirun, measured
back to back (alternating, fresh output folders, so no run is skipped and no cache is warm).

    .venv/bin/python benchmarks/bench_sweep.py [--reps 3] [--jobs 12]
    .venv/bin/python benchmarks/bench_sweep.py --digits [--sweep solver=fixed_point metric.lam=1000,999]

Default: `scoregeo run experiment=sphere` against `scoregeo run -m experiment=sphere
seed=range(jobs)`, wall-clock of each process; prints every repetition, then the medians
and the fastest of each (on a shared machine the least disturbed) with their ratios (the
sweep's target: at most 2.5x one run for 12 jobs).

--digits: a two-job sweep `scoregeo run -m experiment=rotated_mnist <sweep>` (default: the
fixed point at lambda 1000 and 999, two jobs of equal cost, so the second job's saving is the
cache's; `--sweep solver=gauss_newton,fixed_point` is a solver sweep), each job's time taken
from the sweep's clock: the first from the process start to its DONE marker, the
second between the two DONE markers (it reuses the first job's cached denoisings, features
and baseline frames; target: at most 40% of the first). Needs `scoregeo weights` and the
packaged UNet; about 2.5 minutes per repetition on two CPU cores.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCOREGEO = [sys.executable, "-m", "scoregeo_cli.cli"]


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(SCOREGEO + args, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`scoregeo {' '.join(args)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def sphere(reps: int, jobs: int) -> None:
    one, many = [], []
    for rep in range(reps):
        with tempfile.TemporaryDirectory() as root:
            one.append(timed(["run", "experiment=sphere", f"output_root={root}/one"]))
            many.append(timed(["run", "-m", "experiment=sphere", f"seed=range({jobs})", f"output_root={root}/many"]))
        print(f"rep {rep}: one run {one[-1]:.2f} s, {jobs}-job multirun {many[-1]:.2f} s, "
              f"ratio {many[-1] / one[-1]:.2f}")
    for name, pick in (("median", statistics.median), ("fastest", min)):  # the fastest: least disturbed
        m1, m2 = pick(one), pick(many)
        print(f"{name}: one run {m1:.2f} s, {jobs}-job multirun {m2:.2f} s, ratio {m2 / m1:.2f} "
              f"({(m2 - m1) / (jobs - 1):.2f} s per further job)")


def digits(reps: int, sweep: list[str]) -> None:
    ratios = []
    for rep in range(reps):
        with tempfile.TemporaryDirectory() as root:
            start = time.time()
            timed(["run", "-m", "experiment=rotated_mnist", *sweep, f"output_root={root}"])
            done = sorted(p.stat().st_mtime for p in Path(root).glob("**/DONE"))
        if len(done) != 2:
            sys.exit(f"expected 2 finished runs, found {len(done)}")
        first, second = done[0] - start, done[1] - done[0]
        ratios.append(second / first)
        print(f"rep {rep}: first job {first:.1f} s, second {second:.1f} s, ratio {second / first:.2f}")
    print(f"median ratio {statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--digits", action="store_true", help="the rotated-digit two-job sweep instead")
    parser.add_argument("--sweep", nargs="+", default=["solver=fixed_point", "metric.lam=1000,999"],
                        help="overrides of the two-job digit sweep")
    args = parser.parse_args()
    if args.digits:
        digits(args.reps, args.sweep)
    else:
        sphere(args.reps, args.jobs)


if __name__ == "__main__":
    main()
