"""The SLURM path against a real SLURM: the one-node cluster of tests/slurm/start.sh.

The smoke grid is swept with `--executor slurm` (one job-array task per run, submitted by
submitit through sbatch); while one run trains, its task is requeued (`scontrol requeue`, what
a preemption does): SLURM kills it and starts it again, and the run resumes from its last
checkpoint inside the requeued job. Every run must finish with results equal to the local
executor's, byte for byte (weights) and number for number (every eval file and metrics line).

    apt-get install -y slurm-wlm munge && bash tests/slurm/start.sh && pytest -q -m slurm
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from cfglab import cli
from tests.experiment.test_sweep import SMOKE, results

ROOT = Path(__file__).resolve().parents[2]
CONF = Path(os.environ.get("CFGLAB_SLURM_DIR", "/tmp/cfglab-slurm")) / "slurm.conf"
# long enough to catch a run early in its training (after its first checkpoint, with most
# steps still to go when SLURM kills it KillWait seconds after the requeue)
LONGER = {"train.max_steps": 1000, "train.ckpt_every": 50, "train.log_every": 50}
EARLY = 200  # the run requeued has a checkpoint at step 50..EARLY


def cluster_problem() -> str | None:
    """Why the SLURM test cannot run here (None: it can)."""
    if shutil.which("sbatch") is None:
        return "no sbatch: apt-get install -y slurm-wlm munge, then bash tests/slurm/start.sh"
    if not CONF.is_file():
        return f"no {CONF}: start the one-node cluster with bash tests/slurm/start.sh"
    env = {**os.environ, "SLURM_CONF": str(CONF)}
    try:
        up = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=30
        )
    except subprocess.TimeoutExpired:
        return f"the cluster of {CONF} does not answer (sinfo timed out)"
    if up.returncode != 0 or not {"idle", "mixed", "allocated"} & set(up.stdout.split()):
        return f"the cluster of {CONF} does not answer (sinfo: {up.stderr.strip() or up.stdout})"
    return None


pytestmark = pytest.mark.slurm  # not in the default run, nor in -m slow: `pytest -m slurm`


@pytest.fixture
def cluster(monkeypatch) -> None:
    """The one-node cluster, for this test's sbatch, scontrol and jobs (skip, saying why,
    where there is none)."""
    problem = cluster_problem()
    if problem is not None:
        pytest.skip(problem)
    monkeypatch.setenv("SLURM_CONF", str(CONF))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the jobs import this checkout's cfglab


def smoke(tmp_path: Path, executor: dict) -> Path:
    data = yaml.safe_load(SMOKE.read_text())
    data["base"] = str((SMOKE.parent / data["base"]).resolve())
    data["out_dir"] = str(tmp_path / "runs")
    data["set"].update(LONGER)
    data["executor"] = executor
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def job_of(pid: int) -> str | None:
    """The SLURM array task (ARRAY_TASK) a process runs in, from its environment."""
    try:
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in item
        )
    except OSError:
        return None
    if "SLURM_ARRAY_JOB_ID" not in env:
        return None
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def requeue_one_mid_training(exp_dir: Path, done: threading.Event, log: list[str]) -> None:
    """Watch the sweep's runs; the first one seen early in its training (a checkpoint at step
    50..EARLY) has its job-array task requeued. Notes what it did in `log`."""
    while not done.is_set():
        for run in sorted(exp_dir.glob("*,seed=*")):
            status = run / "run_status.json"
            latest = run / "ckpt" / "latest"
            if not (status.is_file() and latest.is_file()):
                continue
            try:
                state = json.loads(status.read_text())
            except ValueError:
                continue
            step = int(latest.read_text().strip().removeprefix("step_"))
            if state.get("state") != "running" or not 0 < step <= EARLY:
                continue
            job = job_of(state["pid"])
            if job is None:
                continue
            subprocess.run(["scontrol", "requeue", job], check=True)
            log.append(f"{run.name} {job} at step {step}")
            return
        time.sleep(0.2)


def test_a_requeued_job_resumes_and_every_run_equals_the_local_executors(tmp_path, cluster):
    local = smoke(tmp_path / "local", {"kind": "local", "workers": 2})
    assert cli.main(["sweep", str(local)]) == 0
    block = {"kind": "slurm", "cpus_per_run": 1, "array_parallelism": 2, "time_min": 30}
    slurm = smoke(tmp_path / "slurm", block)
    exp_dir = tmp_path / "slurm" / "runs" / "smoke"
    done, requeued = threading.Event(), []
    watcher = threading.Thread(target=requeue_one_mid_training, args=(exp_dir, done, requeued))
    watcher.start()
    try:
        assert cli.main(["sweep", str(slurm), "--executor", "slurm"]) == 0
    finally:
        done.set()
        watcher.join()
    assert requeued, "no run was caught mid-training"
    name = requeued[0].split()[0]
    log = (exp_dir / name / "log.txt").read_text()
    starts = [int(s) for s in re.findall(rf"steps (\d+)->{LONGER['train.max_steps']} ", log)]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] > 0, starts  # resumed from a ckpt
    states = json.loads((exp_dir / "status.json").read_text())
    assert {s["state"] for s in states.values()} == {"done"} and len(states) == 4
    assert results(exp_dir) == results(tmp_path / "local" / "runs" / "smoke")
