"""Dynamics cost: the dynamics stage on the quickstart run's 8 log-spaced checkpoints (goal <= 5
minutes on 2 cores), its cost per checkpoint, and one probe stage on the same run (reference).

Uses runs/quickstart (`cfglab run configs/quickstart.yaml`, which keeps log:8 checkpoints),
copied to a temporary folder so nothing in it changes; without it, the quickstart is trained
first. Also prints the quickstart's emergence table.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from cfglab.analyze.dynamics import tables
from cfglab.config import load_config
from cfglab.report.tables import table_markdown
from cfglab.stages import STAGES, load_run_config, run_stages

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from cfglab import rundir
    from cfglab.train.checkpoint import list_checkpoints

    source = ROOT / "runs" / "quickstart"
    with tempfile.TemporaryDirectory(prefix="cfglab-bench-dynamics-") as tmp:
        run = Path(tmp) / "quickstart"
        if len(list_checkpoints(source)) >= 8:
            shutil.copytree(source, run)
        else:
            print("runs/quickstart has fewer than 8 kept checkpoints: training it first")
            cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["stages=[train, eval]"])
            run_stages(cfg, run, progress=False)
        cfg = load_run_config(run)
        n = len(list_checkpoints(run))
        print(
            f"{n} checkpoints {[s for s, _ in list_checkpoints(run)]}; load "
            f"{os.getloadavg()[0]:.1f}"
        )
        t0 = time.perf_counter()
        STAGES["analyze"](cfg, run, only=["probe"])
        probe_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        STAGES["dynamics"](cfg, run)
        dyn_s = time.perf_counter() - t0
        table = rundir.read_result(run, "analyze/dynamics")["emergence"]
    print(
        f"dynamics stage: {dyn_s:.1f} s for {n} checkpoints (goal <= 60 s within the quickstart), "
        f"{dyn_s / n:.1f} s per checkpoint"
    )
    print(
        f"one probe stage (model + random-init twin): {probe_s:.1f} s; a checkpoint of the "
        f"dynamics stage costs {dyn_s / n / probe_s:.2f}x one probe stage"
    )
    print("\n".join(table_markdown(tables(table)[0])))
