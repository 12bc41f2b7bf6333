"""Sweep throughput: the same small grid with 2 local workers against 1, on this machine.

The grid is configs/experiments/smoke.yaml (2 position variants x 2 seeds, the quickstart
grammar, a tiny model) with 400 training steps per run, so a run's work outweighs a worker's
start; each sweep starts from empty folders. Reported: wall time of each sweep, runs per
minute, the ratio (goal >= 1.6x on 2 cores), and the time of re-running the finished 2-worker
sweep against its first run (goal <= 10%: nothing is trained again).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

from cfglab import cli

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("CFGLAB_BENCH_SWEEP_STEPS", "400"))


def _experiment(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "experiments" / "smoke.yaml").read_text())
    data["base"] = str((ROOT / "configs" / "quickstart.yaml").resolve())
    data["out_dir"] = str(folder / "runs")
    data["set"]["train.max_steps"] = STEPS
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _sweep(path: Path, workers: int) -> float:
    t0 = time.perf_counter()
    code = cli.main(["sweep", str(path), "--workers", str(workers)])
    if code != 0:
        raise RuntimeError(f"sweep with {workers} workers exited {code}")
    return time.perf_counter() - t0


def main() -> None:
    print(
        f"grid: smoke.yaml, 4 runs x {STEPS} steps; {os.cpu_count()} cores; load "
        f"{os.getloadavg()[0]:.1f}"
    )
    times = {}
    with tempfile.TemporaryDirectory(prefix="cfglab-bench-sweep-") as tmp:
        for workers in (1, 2):
            folder = Path(tmp) / f"w{workers}"
            folder.mkdir()
            times[workers] = _sweep(_experiment(folder), workers)
        rerun = _sweep(Path(tmp) / "w2" / "exp.yaml", 2)
    print(f"{'workers':>8} {'wall s':>8} {'runs/min':>9}")
    for workers, t in times.items():
        print(f"{workers:>8} {t:>8.1f} {4 * 60 / t:>9.1f}")
    print(f"2 workers vs 1: {times[1] / times[2]:.2f}x (goal >= 1.6x)")
    print(
        f"re-run of the finished sweep: {rerun:.2f} s = {100 * rerun / times[2]:.1f}% of its "
        f"first run (goal <= 10%)"
    )
    print(f"load after: {os.getloadavg()[0]:.1f}")
