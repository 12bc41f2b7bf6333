"""compare and report hold every result to the training record it was measured on: a sweep
where one run is unfinished, one was trained on after its evaluation (stale), one never started
and one is done pools only the done one, marks the others in results.csv and lists each with its
reason; a plain run beside an experiment keeps its name in the `run` column; a non-numeric value
in a result file is one line, not a traceback; and a sweep whose run lost its checkpoints is
refused before any work."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from cfglab import cli, rundir
from tests.experiment.test_sweep import experiment

SMALL = {
    "model.n_layer": 1,
    "train.max_steps": 4,
    "train.log_every": 1,
    "train.eval_every": 0,
    "train.ckpt_every": 2,
    "train.keep_last": 3,
    "eval.n_samples": 4,
    "eval.n_kl": 4,
    "eval.n_fixed_prompt": 2,
}


def small_experiment(tmp_path: Path, seeds: list[int]) -> Path:
    data = yaml.safe_load(experiment(tmp_path).read_text())
    data["set"].update(SMALL)
    data.update(grid={"model.position": ["abs"]}, seeds=seeds, stages=["train", "eval"])
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, Path]:
    """A finished sweep of 4 seeds (the experiment file, its folder), built once."""
    tmp = tmp_path_factory.mktemp("states")
    exp = small_experiment(tmp, [0, 1, 2, 3])
    assert cli.main(["sweep", str(exp), "--workers", "1"]) == 0
    return exp, tmp / "runs" / "smoke"


@pytest.fixture
def damaged(swept, tmp_path) -> Path:
    """A copy of the sweep where seed 1 is unfinished (its latest checkpoint is step 2 of 4),
    seed 2 was trained on to step 6 after its evaluation (stale), seed 3 never started."""
    out = tmp_path / "smoke"
    shutil.copytree(swept[1], out)
    one = out / "model.position=abs,seed=1" / "ckpt"
    shutil.rmtree(one / "step_0000004")
    (one / "latest").write_text("step_0000002\n")
    two = out / "model.position=abs,seed=2"
    config = two / "config.json"
    argv = ["train", str(config), "--resume", "--allow-changes", "--out", str(two)]
    assert cli.main([*argv, "--no-progress", "--set", "train.max_steps=6"]) == 0
    shutil.rmtree(out / "model.position=abs,seed=3")
    return out


def test_only_current_runs_are_pooled_and_the_others_are_listed(damaged, tmp_path):
    assert cli.main(["compare", str(damaged), "--out", str(tmp_path / "c")]) == 0
    rows = read_csv(tmp_path / "c" / "results.csv")
    states = {r["run"]: r["state"] for r in rows}
    assert states == {
        "model.position=abs,seed=0": "current",
        "model.position=abs,seed=1": "unfinished",
        "model.position=abs,seed=2": "stale",
    }  # seed 3 has no rows: it never ran
    done = [r for r in rows if r["metric"] == "final_loss" and r["state"] == "current"]
    (summary,) = [
        r for r in read_csv(tmp_path / "c" / "summary.csv") if r["metric"] == "final_loss"
    ]
    assert summary["n_seeds"] == "1" and float(summary["mean"]) == float(done[0]["value"])
    md = (tmp_path / "c" / "report.md").read_text()
    assert "**3 of 4 runs left out**" in md
    assert "- `model.position=abs,seed=1`: unfinished: trained to step 2 of 4" in md
    assert "- `model.position=abs,seed=2`: stale: eval/" in md and "another training record" in md
    assert "- `model.position=abs,seed=3`: not started: no run folder yet" in md


def test_the_report_of_a_stale_or_unfinished_run_says_so_first(damaged):
    for seed, words in [(2, "**Stale results: eval/"), (1, "**Unfinished run: trained to step")]:
        run = damaged / f"model.position=abs,seed={seed}"
        assert cli.main(["report", str(run)]) == 0
        lines = (run / "report" / "report.md").read_text().splitlines()
        assert lines[2].startswith(words), lines[:4]
    fresh = damaged / "model.position=abs,seed=2"
    assert cli.main(["eval", str(fresh)]) == 0  # measured again: current
    assert cli.main(["report", str(fresh)]) == 0
    assert "Stale" not in (fresh / "report" / "report.md").read_text()


def test_a_result_measured_at_another_step_is_stale(damaged, tmp_path):
    """Provenance is read from the file: the same training record, another step."""
    from cfglab.report.results import run_state

    run = damaged / "model.position=abs,seed=0"
    path = run / "eval" / "accuracy.json"
    body = json.loads(path.read_text())
    body["settings"]["provenance"]["step"] = 2
    path.write_text(json.dumps(body))
    state, why = run_state(run)
    assert state == "stale" and "eval/accuracy.json (measured at step 2, the run is at 4)" in why


def test_plain_runs_beside_an_experiment_keep_their_names(swept, tmp_path):
    exp_dir = swept[1]
    plain = tmp_path / "plain"
    shutil.copytree(exp_dir / "model.position=abs,seed=0", plain)
    assert cli.main(["compare", str(exp_dir), str(plain), "--out", str(tmp_path / "c")]) == 0
    rows = read_csv(tmp_path / "c" / "results.csv")
    assert all(r["run"] for r in rows)
    assert {r["run"] for r in rows if not r["experiment"]} == {"plain"}
    with open(tmp_path / "c" / "results.csv") as f:
        header = next(csv.reader(f))
    assert len(header) == len(set(header))  # no column twice
    summary = read_csv(tmp_path / "c" / "summary.csv")
    losses = {
        (r["experiment"], r["run"]): r["n_seeds"] for r in summary if r["metric"] == "final_loss"
    }
    assert losses == {("smoke", ""): "4", ("", "plain"): "1"}  # the seeds pool, the plain run not


def test_a_non_numeric_value_is_one_line(swept, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(swept[1] / "model.position=abs,seed=0", run)
    path = run / "eval" / "summary.json"
    body = json.loads(path.read_text())
    body["rows"][0]["value"] = "0.9 (about)"
    path.write_text(json.dumps(body))
    capsys.readouterr()
    assert cli.main(["compare", str(run), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cfglab: error: {path}: value '0.9 (about)'") and "\n" not in err
    assert not (tmp_path / "c").exists()


def test_a_sweep_refuses_runs_that_lost_their_checkpoints(swept, tmp_path, capsys):
    """A finished run whose ckpt/ was removed is not retrained over its results, whatever the
    settings; refused before any work, nothing written."""
    exp, _ = swept
    out = tmp_path / "runs" / "smoke"
    shutil.copytree(swept[1], out)
    data = yaml.safe_load(exp.read_text())
    data["out_dir"] = str(tmp_path / "runs")
    data["set"]["train.lr"] = 0.01
    moved = tmp_path / "exp.yaml"
    moved.write_text(yaml.safe_dump(data))
    (out / "experiment.json").unlink()  # this file's runs now
    shutil.rmtree(out / "model.position=abs,seed=1" / "ckpt")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(["sweep", str(moved), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "seed=1 holds a run's results" in err and "no checkpoint" in err and "\n" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert rundir.latest_step(out / "model.position=abs,seed=0") == 4
