"""Sweep throughput and the plan's time estimate: the same small grid with 2 local workers
against 1, on this machine.

The grid is configs/experiments/smoke.yaml (2 position variants x 2 seeds, the quickstart
grammar, a tiny model) with 2000 training steps per run, so a run's work outweighs a worker's
start; each sweep starts from empty folders, after a warm-up sweep of one 5-step run that
leaves the exact algorithms' compiled kernels in Numba's cache (a first use on a fresh checkout
compiles them once, ~40 s per process, which no estimate includes). Reported: wall time of each
sweep (the `cfglab sweep` command, its plan included), runs per minute, the ratio (goal >= 1.6x
on 2 cores), the time the plan estimated for each against the time the sweep took after
printing it (goal: within 1.5x either way), and the time of re-running the finished 2-worker
sweep against its first run (goal <= 10%: nothing is trained again).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from pathlib import Path

import yaml

from cfglab import cli

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("CFGLAB_BENCH_SWEEP_STEPS", "2000"))
ESTIMATE = re.compile(r"estimated time ([\d,.]+) (s|min)")


def _experiment(folder: Path, steps: int = STEPS, only_one: bool = False) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "experiments" / "smoke.yaml").read_text())
    data["base"] = str((ROOT / "configs" / "quickstart.yaml").resolve())
    data["out_dir"] = str(folder / "runs")
    data["set"]["train.max_steps"] = steps
    if only_one:
        data["grid"] = {"model.position": ["abs"]}
        data["seeds"] = [0]
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class _Clocked(io.StringIO):
    """stdout that notes when the plan's estimate line was written."""

    estimated_at: float | None = None

    def write(self, text: str) -> int:
        if self.estimated_at is None and "estimated time" in text:
            self.estimated_at = time.perf_counter()
        return super().write(text)


def _sweep(path: Path, workers: int) -> tuple[float, float, float | None]:
    """(wall seconds of `cfglab sweep`, of its work after the plan was printed, the seconds
    the plan estimated: None if it gave none)."""
    out = _Clocked()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(["sweep", str(path), "--workers", str(workers)])
    end = time.perf_counter()
    if code != 0:
        raise RuntimeError(f"sweep with {workers} workers exited {code}:\n{out.getvalue()}")
    found = ESTIMATE.search(out.getvalue())
    if found is None:
        return end - t0, end - t0, None
    value = float(found.group(1).replace(",", ""))
    return end - t0, end - out.estimated_at, value * (60 if found.group(2) == "min" else 1)


def main() -> None:
    print(
        f"grid: smoke.yaml, 4 runs x {STEPS} steps; {os.cpu_count()} cores; load "
        f"{os.getloadavg()[0]:.1f}"
    )
    times, after_plan, estimates = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="cfglab-bench-sweep-") as tmp:
        warm = Path(tmp) / "warm-up"
        warm.mkdir()
        _sweep(_experiment(warm, steps=5, only_one=True), 1)
        for workers in (1, 2):
            folder = Path(tmp) / f"w{workers}"
            folder.mkdir()
            times[workers], after_plan[workers], estimates[workers] = _sweep(
                _experiment(folder), workers
            )
        rerun, _, _ = _sweep(Path(tmp) / "w2" / "exp.yaml", 2)
    print(
        f"{'workers':>8} {'wall s':>8} {'runs/min':>9} {'after plan s':>13} {'estimate s':>11} "
        f"{'measured/estimate':>18}"
    )
    for workers, t in times.items():
        est = estimates[workers]
        ratio = f"{after_plan[workers] / est:>18.2f}" if est else f"{'-':>18}"
        print(
            f"{workers:>8} {t:>8.1f} {4 * 60 / t:>9.1f} {after_plan[workers]:>13.1f} "
            f"{est or float('nan'):>11.1f} {ratio}"
        )
    print(f"2 workers vs 1: {times[1] / times[2]:.2f}x (goal >= 1.6x)")
    print(
        "the plan's estimate against the sweep's time after printing it: goal within 1.5x "
        "either way (the plan itself, which times a few training steps, took the difference)"
    )
    print(
        f"re-run of the finished sweep: {rerun:.2f} s = {100 * rerun / times[2]:.1f}% of its "
        f"first run (goal <= 10%)"
    )
    print(f"load after: {os.getloadavg()[0]:.1f}")
