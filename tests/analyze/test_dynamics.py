"""Training dynamics: kept checkpoints, the dynamics stage against the eval and probe stages at
the final checkpoint, the emergence table on planted curves, and the report's figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfglab import cli
from cfglab.analyze.dynamics import emergence, kl_by_level, row_levels
from cfglab.config import kept_steps, load_config
from cfglab.errors import ConfigError
from cfglab.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]


def test_kept_steps():
    assert kept_steps("log:8", 3000) == [1, 3, 10, 31, 97, 305, 956, 3000]
    assert kept_steps("log:1", 50) == [50] and kept_steps([9, 3, 9], 10) == [3, 9]
    steps = kept_steps("log:20", 10)  # more than there are steps: each at most once
    assert steps == sorted(set(steps)) and steps[-1] == 10 and len(steps) <= 10
    for bad in ("lin:5", "log:x", "log:0"):
        with pytest.raises(ConfigError, match="train.keep_steps"):
            load_config(None, [f"train.keep_steps={bad}"])
    with pytest.raises(ConfigError, match=r"steps must be in 1..train.max_steps"):
        load_config(None, ["train.max_steps=10", "train.keep_steps=[5, 11]"])


def test_emergence_on_planted_curves():
    steps = [1, 10, 100, 1000]
    e = emergence(steps, [0.5, 0.55, 0.8, 0.9], baseline=0.5)  # halfway = 0.7
    assert e["step"] == 100 and e["bracket"] == [10, 100] and e["halfway"] == pytest.approx(0.7)
    assert emergence(steps, [0.9, 0.9, 0.9, 0.95], 0.5)["bracket"] == [None, 1]
    assert emergence(steps, [0.5, 0.45, 0.4, 0.4], 0.5)["step"] is None  # never rises


def test_row_levels_and_kl_by_level_by_hand():
    # tokens 0..3; level-1 subtree ends at token 3, level-2 subtrees end at tokens 1 and 3
    is_boundary = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 1]], dtype=bool)
    assert row_levels(is_boundary) == ["start", "inside", "L2", "inside", "L1"]
    kls = [np.array([1.0, 2.0, 3.0, 4.0, 5.0])]
    out = kl_by_level(kls, [row_levels(is_boundary)])
    assert out == {
        "inside": {"kl": 3.0, "n_rows": 2},
        "start": {"kl": 1.0, "n_rows": 1},
        "L1": {"kl": 5.0, "n_rows": 1},
        "L2": {"kl": 3.0, "n_rows": 1},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "run"
    argv = [
        "run",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "model.preset=tiny",
        "model.block_size=48",
        "train.batch_size=8",
        "train.max_steps=40",
        "train.keep_steps=log:4",
        "train.ckpt_every=20",
        "train.keep_last=1",
        "train.log_every=10",
        "train.eval_every=20",
        "eval.n_samples=16",
        "eval.n_kl=12",
        "eval.cuts=[0, 3]",
        "eval.n_fixed_prompt=4",
        "dynamics.n_samples=16",
        "dynamics.n_kl=12",
        "probe.n_train=24",
        "probe.n_test=12",
        "probe.steps=20",
        "attention.n_strings=6",
        "stages=[train, eval, probe, attention, dynamics, report]",
    ]
    assert cli.main(argv) == 0
    return out


def test_kept_checkpoints_survive_pruning(run):
    steps = [s for s, _ in ckpt.list_checkpoints(run)]
    assert kept_steps("log:4", 40) == [1, 3, 12, 40]
    assert steps == [1, 3, 12, 40]  # step 20 (regular, keep_last 1) pruned at step 40


def test_the_final_checkpoint_equals_the_eval_and_probe_stages(run):
    records = [json.loads(x) for x in (run / "analyze" / "dynamics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 12, 40]
    last = records[-1]
    acc = json.loads((run / "eval" / "accuracy.json").read_text())["accuracy"]
    cut0 = next(a for a in acc if a["cut"] == 0)
    assert last["accuracy"]["accuracy"] == cut0["accuracy"] and last["accuracy"]["n"] == 16
    assert last["accuracy"]["ci_low"] == cut0["ci_low"]
    dist = json.loads((run / "eval" / "distribution.json").read_text())["distribution"]
    assert last["kl"] == pytest.approx(dist["kl"], rel=1e-12)
    rows = sum(v["n_rows"] for v in last["kl_by_level"].values())
    assert rows == dist["n_rows"]  # every KL row in exactly one level group
    floor = json.loads((run / "eval" / "loss_floor.json").read_text())["loss_floor"]["value"]
    assert last["loss_floor"] == floor
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert last["val_loss"] == pytest.approx(metrics[-1]["val_loss"], rel=1e-5)
    probe = json.loads((run / "analyze" / "probe.json").read_text())
    for t in probe["tables"]:
        table = np.array(t["accuracy"]["model"])  # (layers, levels)
        twin = np.array(t["accuracy"]["random_init"])
        for j, level in enumerate(t["levels"]):
            got = last["probe"][f"{t['target']}_L{level}"]
            assert got["last"] == pytest.approx(table[-1, j], abs=1e-12)
            assert got["best"] == pytest.approx(table[:, j].max(), abs=1e-12)
    summary = json.loads((run / "analyze" / "dynamics.json").read_text())
    twin_last = summary["baseline"]["probe"][f"{t['target']}_L{t['levels'][0]}"]["last"]
    assert twin_last == pytest.approx(twin[-1, 0], abs=1e-12)  # the same random-init twin
    what = [row["what"] for row in summary["emergence"]]
    assert "probe ancestor_L1" in what and what[-1] == "generation accuracy cut0"


def test_the_report_draws_the_dynamics(run):
    md = (run / "report" / "report.md").read_text()
    assert "## Training dynamics" in md and "first step at halfway" in md
    figs = {p.name for p in (run / "report" / "figures").iterdir()}
    assert {
        "dynamics_probe.png",
        "dynamics_accuracy.png",
        "dynamics_kl_level.png",
        "dynamics_heads.png",
    } <= figs


def test_a_longer_resumed_run_keeps_the_checkpoints_kept_so_far(tmp_path):
    """Resuming with a higher max_steps (--allow-changes) moves log:N to new steps; the steps
    the run kept so far stay (the dynamics stage has measured them and may again)."""
    import shutil

    out = tmp_path / "run"
    base = [
        "--no-progress",
        "--out",
        str(out),
        "--set",
        "model.preset=tiny",
        "model.block_size=32",
        "train.batch_size=4",
        "train.keep_steps=log:4",
        "train.ckpt_every=20",
        "train.keep_last=1",
        "train.log_every=10",
        "train.eval_every=20",
    ]
    config = str(ROOT / "configs" / "quickstart.yaml")
    assert cli.main(["train", config, *base, "train.max_steps=40"]) == 0
    before = [s for s, _ in ckpt.list_checkpoints(out)]
    assert before == kept_steps("log:4", 40) == [1, 3, 12, 40]
    longer = ["train", config, "--resume", "--allow-changes", *base, "train.max_steps=80"]
    assert cli.main(longer) == 0
    after = [s for s, _ in ckpt.list_checkpoints(out)]
    # the new schedule's steps past the resume point are kept as well
    assert set(after) == set(before) | {s for s in kept_steps("log:4", 80) if s > 40}
    shutil.rmtree(out)


def test_bad_inputs_to_later_stages_change_nothing(run, tmp_path, capsys):
    """A damaged analyze/dynamics.jsonl (not its torn last line) makes `cfglab report` refuse
    before it redraws any figure; a file where a stage writes its folder is refused before the
    stage runs."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    figures = {p: p.read_bytes() for p in (copy / "report" / "figures").iterdir()}
    lines = (copy / "analyze" / "dynamics.jsonl").read_text().splitlines()
    lines[1] = "{bad"
    (copy / "analyze" / "dynamics.jsonl").write_text("\n".join(lines) + "\n")
    acc_file = copy / "eval" / "accuracy.json"  # a changed result: figures would be redrawn
    acc = json.loads(acc_file.read_text())
    for a in acc["accuracy"]:
        a["accuracy"] = 1.0 - a["accuracy"]
    acc_file.write_text(json.dumps(acc))
    assert cli.main(["report", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cfglab: error: {copy / 'analyze' / 'dynamics.jsonl'}:2: ")
    assert "dynamics.jsonl holds one per line" in err
    assert {p: p.read_bytes() for p in (copy / "report" / "figures").iterdir()} == figures
    shutil.rmtree(copy / "eval")
    (copy / "eval").write_text("not a folder\n")
    assert cli.main(["eval", str(copy), "--n", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cfglab: error: {copy / 'eval'} is a file where the eval stage writes a folder; "
        "move it away"
    )
