"""`cfglab sweep` and `cfglab compare` on the smoke experiment: results, reruns, failures,
kills, the submitit path and the HTML report in a real browser."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cfglab import cli
from tests.chromium import images_loaded
from tests.processes import as_in_a_terminal

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "experiments" / "smoke.yaml"


def experiment(tmp_path: Path, **changes) -> Path:
    """smoke.yaml with its base made absolute, its runs under tmp_path, and `changes`."""
    data = yaml.safe_load(SMOKE.read_text())
    data["base"] = str((SMOKE.parent / data["base"]).resolve())
    data["out_dir"] = str(tmp_path / "runs")
    data.update(changes)
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def results(exp_dir: Path) -> dict:
    """Every result file of every run, without wall-clock times and what names the run's
    folder (run_dir; the provenance's fingerprint hashes config.json, which holds out_dir)."""
    volatile = {"seconds", "timing", "tokens_per_s", "elapsed_s", "data_wait_frac", "run_dir"}
    volatile.add("fingerprint")

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in volatile}
        return [strip(v) for v in x] if isinstance(x, list) else x

    out = {}
    for path in sorted(exp_dir.glob("*/eval/*.json")) + sorted(exp_dir.glob("*/metrics.jsonl")):
        rel = path.relative_to(exp_dir).as_posix()
        if path.suffix == ".json":
            out[rel] = strip(json.loads(path.read_text()))
        else:
            out[rel] = [strip(json.loads(line)) for line in path.read_text().splitlines()]
    for path in sorted(exp_dir.glob("*/ckpt/step_*/model.safetensors")):
        out[path.relative_to(exp_dir).as_posix()] = path.read_bytes()
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("smoke")
    assert cli.main(["sweep", str(experiment(tmp)), "--workers", "2"]) == 0
    return tmp / "runs" / "smoke"


def test_smoke_sweep_writes_runs_status_and_tidy_results(smoke):
    runs = sorted(p.name for p in smoke.iterdir() if (p / "config.json").is_file())
    assert runs == [f"model.position={p},seed={s}" for p in ("abs", "rot") for s in (0, 1)]
    status = json.loads((smoke / "status.json").read_text())
    assert {s["state"] for s in status.values()} == {"done"} and set(status) == set(runs)
    plan = json.loads((smoke / "experiment.json").read_text())
    assert plan["axes"] == ["model.position"] and len(plan["runs"]) == 4
    with open(smoke / "compare" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"model.position", "seed", "stage", "metric", "cut", "value", "ci_low"} <= set(rows[0])
    keys = [
        (
            r["run"],
            r["stage"],
            r["metric"],
            r["cut"],
            r["temperature"],
            r["gamma"],
            r["target"],
            r["level"],
            r["layer"],
            r["weights"],
            r["window"],
            r["pattern"],
        )
        for r in rows
    ]
    assert len(keys) == len(set(keys))  # one row per run x metric
    for run in runs:  # every run's numbers, read back from its own files
        mine = {(r["metric"], r["cut"]): float(r["value"]) for r in rows if r["run"] == run}
        acc = json.loads((smoke / run / "eval" / "accuracy.json").read_text())["accuracy"]
        for a in acc:
            assert mine[("accuracy", str(a["cut"]))] == pytest.approx(a["accuracy"])
        last = json.loads((smoke / run / "metrics.jsonl").read_text().splitlines()[-1])
        assert mine[("final_loss", "")] == pytest.approx(last["loss"])
        assert {r["seed"] for r in rows if r["run"] == run} == {run[-1]}
    with open(smoke / "compare" / "summary.csv") as f:
        summary = [r for r in csv.DictReader(f) if r["metric"] == "final_loss"]
    for s in summary:  # the seed mean is the mean of the seeds' rows
        seeds = [
            float(r["value"])
            for r in rows
            if r["metric"] == "final_loss" and r["model.position"] == s["model.position"]
        ]
        assert float(s["mean"]) == pytest.approx(sum(seeds) / len(seeds)) and s["n_seeds"] == "2"


def test_a_finished_sweep_runs_nothing_again(smoke, capsys):
    before = {p: p.stat().st_mtime_ns for p in smoke.rglob("*") if p.is_file()}
    exp = smoke.parent.parent / "exp.yaml"
    assert cli.main(["sweep", str(exp), "--workers", "2"]) == 0
    assert "(0 with stages left)" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in smoke.rglob("*") if p.is_file()}
    changed = [p.relative_to(smoke).as_posix() for p in before if after.get(p) != before[p]]
    assert changed == ["status.json", "experiment.json"] or set(changed) <= {
        "status.json",
        "experiment.json",
    }


def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path, capsys, monkeypatch):
    """One grid point's eval stage fails at run time (a stand-in for any error no config check
    can foresee): that run is recorded as failed with its error line, the others complete."""
    from cfglab import stages
    from cfglab.errors import CfglabError

    run_eval = stages.STAGES["eval"]

    def failing_eval(cfg, run_dir):
        if cfg.model.position == "rot":
            raise CfglabError("eval: a planted failure")
        return run_eval(cfg, run_dir)

    monkeypatch.setitem(stages.STAGES, "eval", failing_eval)
    exp = experiment(tmp_path, seeds=[0], stages=["train", "eval"])
    assert cli.main(["sweep", str(exp), "--workers", "1"]) == 1
    status = json.loads((tmp_path / "runs" / "smoke" / "status.json").read_text())
    bad, good = status["model.position=rot,seed=0"], status["model.position=abs,seed=0"]
    assert good["state"] == "done" and good["error"] is None
    assert bad["state"] == "failed" and bad["error"] == "eval: a planted failure"
    err = capsys.readouterr().err
    assert "model.position=rot,seed=0: failed: eval: a planted failure" in err
    # the failed stage finished by its own command: the sweep again runs nothing, says done
    monkeypatch.setitem(stages.STAGES, "eval", run_eval)
    assert cli.main(["eval", str(tmp_path / "runs" / "smoke" / "model.position=rot,seed=0")]) == 0
    assert cli.main(["sweep", str(exp), "--workers", "1"]) == 0
    status = json.loads((tmp_path / "runs" / "smoke" / "status.json").read_text())
    again = status["model.position=rot,seed=0"]
    assert again["state"] == "done" and again["error"] is None
    assert again["seconds"] == bad["seconds"]  # the wall time its sweep spent is kept


def test_slurm_parameters_reach_submitit_unchanged(tmp_path, monkeypatch):
    """The executor block as sbatch sees it: a fake srun/sbatch on PATH records the script
    submitit writes for the job array."""
    from cfglab.experiment.grid import load_experiment
    from cfglab.experiment.launch import SubmititRun, _job, submitit_executor

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    block = {
        "kind": "slurm",
        "partition": "gpu-long",
        "gpus_per_run": 2,
        "cpus_per_run": 12,
        "time_min": 240,
        "array_parallelism": 3,
        "mem_gb": 64,
        "account": "lab",
    }
    exp = load_experiment(experiment(tmp_path, executor=block))
    ex = submitit_executor(exp, cluster="slurm")
    params = ex._executor.parameters
    assert params["partition"] == "gpu-long" and params["gpus_per_node"] == 2
    assert (
        params["cpus_per_task"] == 12 and params["time"] == 240 and params["ntasks_per_node"] == 2
    )
    assert params["array_parallelism"] == 3 and params["mem"] == "64GB"
    assert params["account"] == "lab"
    ex.map_array(SubmititRun(), [_job(s) for s in exp.runs])
    script = (tmp_path / "submitted.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu-long",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=12",
        "#SBATCH --time=240",
        "#SBATCH --array=0-3%3",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --account=lab",
    ):
        assert line in script, line


@pytest.mark.slow
def test_the_submitit_path_runs_the_smoke_grid_locally(tmp_path):
    from cfglab.experiment.grid import load_experiment
    from cfglab.experiment.launch import sweep

    exp = load_experiment(experiment(tmp_path), only=["seed=0"])
    states, ran = sweep(exp, cluster="local")
    assert ran == 2 and {states[spec.dir.name]["state"] for spec in exp.runs} == {"done"}
    assert {s["state"] for n, s in states.items() if n.endswith("seed=1")} == {"pending"}
    for spec in exp.runs:
        assert (spec.dir / "eval" / "accuracy.json").is_file()
        assert "== cfglab run: eval" in (spec.dir / "log.txt").read_text()


@pytest.mark.slow
def test_a_killed_sweep_finishes_only_the_missing_work(tmp_path):
    """SIGKILL the sweep (and its workers) once the first run is done; sweeping again finishes
    the rest, and every result equals an uninterrupted sweep's."""
    whole = experiment(tmp_path / "whole")
    assert cli.main(["sweep", str(whole), "--workers", "1"]) == 0
    killed = experiment(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfglab", "sweep", str(killed), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    exp_dir = tmp_path / "killed" / "runs" / "smoke"
    deadline = time.time() + 300
    seen_running = False  # status.json shows a run as running while it runs
    while time.time() < deadline:
        done = [p for p in exp_dir.glob("*/run_status.json") if '"done"' in p.read_text()]
        if done:
            break
        with contextlib.suppress(OSError, ValueError):
            states = json.loads((exp_dir / "status.json").read_text()).values()
            seen_running |= any(s["state"] == "running" for s in states)
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, "the first run never finished"
    assert seen_running, "status.json never showed the first run running"
    status = json.loads((exp_dir / "status.json").read_text())
    assert sum(s["state"] == "done" for s in status.values()) < 4
    first = {p.parent.name: p.read_text() for p in exp_dir.glob("*/run_status.json")}
    assert cli.main(["sweep", str(killed), "--workers", "1"]) == 0
    for name, text in first.items():  # the finished run was not run again
        if '"done"' in text:
            assert (exp_dir / name / "run_status.json").read_text() == text
    assert results(exp_dir) == results(tmp_path / "whole" / "runs" / "smoke")


@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium installed")
def test_the_html_report_renders_in_a_browser(smoke, tmp_path):
    """Headless Chromium loads report.html; every image decodes (naturalWidth > 0)."""
    page = (smoke / "compare" / "report.html").resolve()
    total, loaded = images_loaded(page, tmp_path / "profile")
    n = page.read_text().count("<img")
    assert n >= 3 and (total, loaded) == (n, n)


def test_a_sweep_refuses_run_folders_trained_otherwise(tmp_path, capsys):
    """Runs are resumed and skipped by folder, so a folder trained under other settings (an
    edited grammar file, another train.lr) or by another experiment file would pass off its old
    results as this file's: refused before any work, nothing written; a setting that changes
    nothing learned (log cadence) is not a difference."""
    grammar = tmp_path / "g.cfg"
    text = (ROOT / "configs" / "grammars" / "quickstart.cfg").read_text()
    grammar.write_text(text)
    small = {"train.max_steps": 4, "train.log_every": 2, "train.ckpt_every": 4}

    def exp(name="exp.yaml", **changes):
        data = yaml.safe_load(experiment(tmp_path).read_text())
        data["set"].update({"grammar.name": str(grammar), **small, **changes})
        data.update(grid={"model.position": ["abs"]}, seeds=[0], stages=["train"])
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data))
        return str(p)

    assert cli.main(["sweep", exp(), "--workers", "1"]) == 0
    out = tmp_path / "runs" / "smoke"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    def refused(path: str, *needles: str) -> None:
        capsys.readouterr()
        assert cli.main(["sweep", path, "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("cfglab: error: ") and "\n" not in err
        assert all(n in err for n in needles), err
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before

    grammar.write_text(text.replace("13 -> 10 12 |", "13 -> 10 12 10 |"))
    refused(exp(), "model.position=abs,seed=0", "the grammar's content", "move or delete")
    grammar.write_text(text)
    refused(exp(**{"train.lr": 0.01}), "train.lr 0.004 -> 0.01")
    refused(exp(**{"model.n_embd": 16}), "model.n_embd 32 -> 16")
    refused(exp("other.yaml"), "another experiment file")
    assert cli.main(["sweep", exp(**{"train.log_every": 1}), "--workers", "1"]) == 0


def start_long_sweep(tmp_path: Path, workers: int) -> tuple[subprocess.Popen, Path]:
    """A sweep of three long runs in its own session; returns once `workers` runs train."""
    exp = experiment(
        tmp_path,
        grid={"model.position": ["abs", "rot", "nope"]},
        seeds=[0],
        stages=["train", "eval"],
    )
    data = yaml.safe_load(exp.read_text())
    data["set"].update({"train.max_steps": 100000, "train.ckpt_every": 100000})
    exp.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfglab", "sweep", str(exp), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_in_a_terminal,  # SIGINT at its default (tests.processes says why)
    )
    out = tmp_path / "runs" / "smoke"
    deadline = time.time() + 120
    while time.time() < deadline:
        training = [m for m in out.glob("*/metrics.jsonl") if m.stat().st_size > 0]
        if len(training) >= workers:
            return proc, out
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the runs never started training")


def lock_is_free(run_dir: Path) -> bool:
    import fcntl

    with open(run_dir / "run.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_ctrl_c_stops_the_whole_sweep(tmp_path):
    """One worker (in the sweep's process): Ctrl-C saves the run in flight and stops the sweep;
    the runs after it never start."""
    proc, out = start_long_sweep(tmp_path, workers=1)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    states = json.loads((out / "status.json").read_text())
    assert sorted(s["state"] for s in states.values()) == ["interrupted", "pending", "pending"]
    (run,) = [out / n for n, s in states.items() if s["state"] == "interrupted"]
    assert (run / "ckpt" / "latest").exists()  # saved where it stopped
    assert sum(1 for p in out.glob("*/config.json")) == 1  # the others never started


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigint to the sweep alone"])
def test_ctrl_c_stops_a_pool_of_workers(tmp_path, how):
    """Two workers: Ctrl-C (to the terminal's process group, or SIGINT to the sweep alone)
    interrupts both runs in flight, each saves a checkpoint, the queued run never starts, and
    no worker is left running."""
    proc, out = start_long_sweep(tmp_path, workers=2)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    states = json.loads((out / "status.json").read_text())
    assert sorted(s["state"] for s in states.values()) == ["interrupted", "interrupted", "pending"]
    for name, s in states.items():
        if s["state"] == "interrupted":
            assert (out / name / "ckpt" / "latest").exists()
            assert lock_is_free(out / name)
    assert sum(1 for p in out.glob("*/config.json")) == 2


@pytest.mark.slow
def test_a_killed_sweeps_workers_save_and_exit(tmp_path):
    """SIGKILL of the sweep alone: its workers notice, save a checkpoint, and exit (no orphan
    keeps training, so a second sweep never trains a run twice at once)."""
    proc, out = start_long_sweep(tmp_path, workers=2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    running = [p.parent for p in out.glob("*/metrics.jsonl")]
    deadline = time.time() + 60
    while time.time() < deadline and not all(lock_is_free(r) for r in running):
        time.sleep(0.5)
    assert all(lock_is_free(r) for r in running)
    assert all((r / "ckpt" / "latest").exists() for r in running)


def test_a_run_held_by_another_process_is_not_run_twice(tmp_path):
    """A run whose lock another process holds (a worker of a killed sweep still saving) is
    reported, not trained a second time beside it."""
    import fcntl

    from cfglab.experiment.grid import load_experiment
    from cfglab.experiment.launch import _job, run_one

    spec = load_experiment(experiment(tmp_path, seeds=[0])).runs[0]
    spec.dir.mkdir(parents=True)
    with open(spec.dir / "run.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        status = run_one(_job(spec))
    assert status["state"] == "failed" and "pid 4242" in status["error"]
    assert not (spec.dir / "config.json").exists()  # nothing was trained


def test_only_runs_a_part_and_keeps_the_whole_plan(tmp_path):
    """--only runs the matching grid points; experiment.json and status.json still hold every
    run (a later compare of the folder sees the whole experiment)."""
    data = yaml.safe_load(experiment(tmp_path).read_text())
    data["set"].update({"train.max_steps": 4, "train.log_every": 2, "train.ckpt_every": 4})
    data.update(seeds=[0], stages=["train"])
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(exp), "--workers", "1", "--only", "model.position=abs"]) == 0
    out = tmp_path / "runs" / "smoke"
    plan = json.loads((out / "experiment.json").read_text())
    assert [r["dir"] for r in plan["runs"]] == [
        f"model.position={p},seed=0" for p in ("abs", "rot")
    ]
    status = json.loads((out / "status.json").read_text())
    assert status["model.position=abs,seed=0"]["state"] == "done"
    assert status["model.position=rot,seed=0"]["state"] == "pending"
    assert not (out / "model.position=rot,seed=0").exists()
    # the comparison says what it left out, rather than "2 runs" and a table of one
    md = (out / "compare" / "report.md").read_text()
    assert "**1 of 2 runs left out**" in md
    assert "- `model.position=rot,seed=0`: not started: no run folder yet" in md


def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """srun and an sbatch that records the script submitit writes, first on PATH; returns where
    the script lands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n"
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_a_slurm_sweep_without_slurm_is_refused_and_its_dry_run_shows_sbatch(
    tmp_path, capsys, monkeypatch
):
    """No sbatch on PATH: `--executor slurm` is refused before anything is written (not run
    locally, all at once); the dry run shows the #SBATCH lines, which are exactly those of the
    script submitit hands to sbatch where SLURM is (a recording sbatch)."""
    block = {"kind": "slurm", "partition": "short", "cpus_per_run": 3, "array_parallelism": 1}
    exp = experiment(tmp_path, executor=block)
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    capsys.readouterr()
    assert cli.main(["sweep", str(exp), "--only", "seed=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cfglab: error: ") and "SLURM is not here" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()
    assert cli.main(["sweep", str(exp), "--only", "seed=0", "--dry-run"]) == 0
    shown = [ln.strip() for ln in capsys.readouterr().out.splitlines() if "#SBATCH" in ln]
    assert "#SBATCH --array=0-1%1" in shown and "#SBATCH --partition=short" in shown

    from cfglab.experiment.grid import load_experiment
    from cfglab.experiment.launch import SubmititRun, _job, submitit_executor

    monkeypatch.setenv("PATH", path)
    script = fake_slurm(tmp_path, monkeypatch)
    spec = load_experiment(exp, only=["seed=0"])
    submitit_executor(spec, cluster="slurm").map_array(SubmititRun(), [_job(s) for s in spec.runs])
    submitted = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
    assert sorted(shown) == sorted(submitted)


def test_a_resumed_runs_wall_time_sums_its_segments(tmp_path):
    """status.json's seconds of a run resumed by a sweep: the earlier segments' plus this one's
    (an interrupted run's 100 s are not forgotten when it finishes)."""
    data = yaml.safe_load(experiment(tmp_path).read_text())
    data["set"].update({"train.max_steps": 4, "train.log_every": 2, "train.ckpt_every": 4})
    data.update(grid={"model.position": ["abs"]}, seeds=[0], stages=["train"])
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(exp), "--workers", "1"]) == 0
    out = tmp_path / "runs" / "smoke"
    run = out / "model.position=abs,seed=0"
    first = json.loads((run / "run_status.json").read_text())["seconds"]
    (run / "run_status.json").write_text(json.dumps({"state": "interrupted", "seconds": 100.0}))
    data["stages"] = ["train", "eval"]  # a stage left: the sweep runs the run again
    exp.write_text(yaml.safe_dump(data))
    t0 = time.perf_counter()
    assert cli.main(["sweep", str(exp), "--workers", "1"]) == 0
    took = time.perf_counter() - t0
    status = json.loads((out / "status.json").read_text())["model.position=abs,seed=0"]
    assert status["state"] == "done" and 100.0 < status["seconds"] <= 100.0 + took + 0.1
    assert first < 100.0
