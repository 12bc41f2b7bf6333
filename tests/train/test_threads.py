"""train.threads: auto picks the faster thread count by timing the work itself (planted
timings), never changes a number of the run, and a resumed run keeps the count it started with."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from cfglab.config import load_config
from cfglab.train import threads as T

ROOT = Path(__file__).resolve().parents[2]


def _planted(seconds: dict[int, float]):
    """Work whose duration depends only on torch's thread count (a sleep)."""

    def work() -> None:
        time.sleep(seconds[torch.get_num_threads()])

    return work


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(T, "max_threads", lambda: 2)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_keeps_the_faster_count_and_fewer_on_a_tie(two_cores):
    assert T.choose_threads(_planted({1: 0.02, 2: 0.01}))[0] == 2  # a quiet machine
    assert T.choose_threads(_planted({1: 0.01, 2: 0.02}))[0] == 1  # the other core is busy
    assert T.choose_threads(_planted({1: 0.0100, 2: 0.0099}))[0] == 1  # within 3%: fewer
    line = T.apply_threads("auto", _planted({1: 0.02, 2: 0.01}))
    assert (
        line.startswith("threads: 2 (auto, measured per call: 1: ") and torch.get_num_threads() == 2
    )


def test_auto_leaves_torch_s_random_state_and_a_resume_keeps_its_count(two_cores):
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    T.choose_threads(lambda: torch.rand(100))  # the timed work draws random numbers
    assert torch.equal(torch.rand(3), want)
    assert T.apply_threads("auto", _planted({1: 0.01, 2: 0.02}), resumed=2) == (
        "threads: 2 (auto, as the run started with)"
    )
    assert torch.get_num_threads() == 2


def test_a_number_is_taken_as_given_and_capped(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert T.apply_threads(1) == "threads: 1"
        monkeypatch.setenv("CFGLAB_MAX_THREADS", "1")
        T.apply_threads(2)
        assert torch.get_num_threads() == 1 and T.max_threads() == 1
        assert T.apply_threads("auto", _planted({1: 0.01})).startswith("threads: 1 (auto")
    finally:
        torch.set_num_threads(before)


def test_auto_changes_no_number_of_the_run_and_a_resume_is_exact(tmp_path, capsys):
    """The timed work runs on a copy: a run with auto equals one with the count auto chose;
    a run stopped and resumed with auto keeps that count and equals the uninterrupted run."""
    from cfglab.train.loop import train

    def cfg(name: str, threads: str | int):
        return load_config(
            ROOT / "configs" / "quickstart.yaml",
            [
                f"name={name}",
                f"out_dir={tmp_path}",
                "model.preset=tiny",
                "model.block_size=32",
                "train.batch_size=4",
                "train.max_steps=12",
                "train.log_every=1",
                "train.ckpt_every=6",
                "train.eval_every=0",
                "train.tensorboard=false",
                "data.prefetch=0",
                f"train.threads={threads}",
                "train.keep_steps=[]",
            ],
        )

    auto = train(cfg("auto", "auto"), progress=False)
    chosen = int(capsys.readouterr().out.split("threads: ")[1].split()[0])
    fixed = train(cfg("fixed", chosen), progress=False)
    lines = [(p / "metrics.jsonl").read_text().splitlines() for p in (auto, fixed)]
    losses = [[row.split('"lr"')[0] for row in rows] for rows in lines]
    assert losses[0] == losses[1]
    train(cfg("resumed", "auto"), progress=False, stop_after=6)
    capsys.readouterr()
    resumed = train(cfg("resumed", "auto"), progress=False, resume=True)
    assert f"threads: {torch.get_num_threads()} (auto, as the run started with)" in (
        capsys.readouterr().out
    )
    from cfglab.train import checkpoint as ckpt

    state = ckpt.read_state(ckpt.latest_checkpoint(resumed))
    assert state["threads"] == torch.get_num_threads()
