"""The sweep's time estimate: its parts measured on the training loop's own code, counted on the
loop's own schedule (the loop itself is the oracle), and the runs scheduled as the pool runs
them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from cfglab import cli
from cfglab.config import load_config
from cfglab.experiment.estimate import schedule
from cfglab.experiment.sweep import SweepOutcome
from cfglab.train import loop
from cfglab.train.timing import TrainingCost, measure_training

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "grammar.name=cfg3b",
    "model.preset=tiny",
    "model.block_size=32",
    "train.batch_size=4",
    "train.max_steps=9",
    "train.log_every=2",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.ckpt_every=4",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=0",
]


def test_schedule_gives_each_run_to_the_first_free_worker():
    assert schedule([5, 5, 5, 5], 2, 1.0) == 11.0  # two rounds of two, after the start
    assert schedule([10, 1, 1, 1], 2, 0.0) == 10.0  # the short runs go to the other worker
    assert schedule([3], 4, 2.0) == 5.0  # one run: one worker
    assert schedule([2, 2, 2], 1, 0.0) == 6.0


@pytest.mark.parametrize(
    "extra, done",
    [
        ([], 0),
        (["train.keep_steps=[2, 5]", "train.eval_every=0"], 0),
        (["train.keep_steps=log:3", "train.max_steps=10"], 5),
    ],
    ids=["every", "kept-steps-no-eval", "resumed"],
)
def test_the_cost_counts_the_loops_own_steps_validations_and_checkpoints(
    tmp_path, monkeypatch, extra, done
):
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}", *extra])
    if done:  # trained to `done` first: the estimate counts what is left
        loop.train(cfg, progress=False, stop_after=done)
    calls = {"train_step": 0, "validate": 0, "save_checkpoint": 0}
    for name in calls:
        real = getattr(loop, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(loop, name, counted)
    loop.train(cfg, progress=False, resume=bool(done))
    parts = {"train_step": "step_s", "validate": "validate_s", "save_checkpoint": "checkpoint_s"}
    for name, field in parts.items():  # one second for each call of one kind, none for others
        unit = TrainingCost(0.0, 0.0, 0.0, 0.0, threads=1)
        setattr(unit, field, 1.0)
        assert unit.seconds(cfg, steps_done=done) == calls[name], name
    assert TrainingCost(2.5, 0, 0, 0, threads=1).seconds(cfg, done) == 2.5  # setup once


def test_measuring_touches_neither_the_run_nor_the_process_settings(tmp_path):
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path}"])
    threads, env = torch.get_num_threads(), os.environ.get("CFGLAB_MAX_THREADS")
    cost = measure_training(cfg, max_threads=1)
    assert all(x > 0 for x in (cost.setup_s, cost.step_s, cost.validate_s, cost.checkpoint_s))
    assert cost.threads == 1
    assert torch.get_num_threads() == threads and os.environ.get("CFGLAB_MAX_THREADS") == env
    assert not cfg.run_dir.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_prints_a_measured_estimate_and_writes_nothing(tmp_path, capsys):
    settings = {k: yaml.safe_load(v) for k, v in (t.split("=") for t in TINY)}
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "base": str(ROOT / "configs" / "quickstart.yaml"),
                "out_dir": str(tmp_path / "runs"),
                "set": settings,
                "grid": {"model.position": ["abs", "rot"]},
                "seeds": [0, 1],
                "stages": ["train", "eval"],
                "executor": {"kind": "local", "workers": 2},
            }
        )
    )
    assert cli.main(["sweep", str(exp), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (4 with stages left)" in out
    assert "estimated time" in out and "measured on the training loop, 1 thread(s) per run" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "states, code",
    [
        (["done", "done"], 0),
        (["done", "failed"], 1),
        (["pending", "done"], 1),
        (["interrupted", "failed"], 130),
    ],
)
def test_the_sweeps_exit_code_and_summary(states, code):
    outcome = SweepOutcome(
        exp=type("E", (), {"name": "t", "out": Path("x")})(),
        states={
            f"r{i}": {"state": s, "error": "e" if s != "done" else None}
            for i, s in enumerate(states)
        },
        needs_compare=False,
    )
    assert outcome.exit_code == code
    assert outcome.summary().startswith("sweep t: ")
    assert len(outcome.problems()) == sum(s != "done" for s in states)


def test_the_intervene_stage_is_counted_by_its_own_settings():
    """A sweep that lists intervene estimates its passes (0 s before it was counted); the
    estimate grows with the strings scored and the control draws."""
    from cfglab.experiment.estimate import later_seconds

    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    base = later_seconds(cfg, ["eval"])
    with_it = later_seconds(cfg, ["eval", "intervene"])
    assert with_it - base == pytest.approx(23.0, rel=0.05)  # calibrated on the quickstart
    more = load_config(
        ROOT / "configs" / "quickstart.yaml",
        ["intervene.n_strings=256", "intervene.random_draws=6"],
    )
    assert later_seconds(more, ["intervene"]) > 2 * (with_it - base) * 0.9
