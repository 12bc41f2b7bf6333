"""Hostile input to the stage commands (train, run, eval, probe, report, sweep, compare) and to
the files of a run directory: each case ends with exit 2 and one line `cfglab: error: ...`
naming the problem and the fix, no traceback, and the run directory unchanged byte for byte
(or, where the input is recoverable, the command works and loses nothing)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cfglab.cli import main
from tests.processes import cfglab_process

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = [
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.ckpt_every=2",
    "train.log_every=1",
    "train.eval_every=0",
    "train.tensorboard=false",
    "data.prefetch=0",
    "eval.n_samples=8",
    "eval.n_kl=4",
    "eval.cuts=[0, 3]",
    "eval.n_fixed_prompt=2",
    "probe.n_train=8",
    "probe.n_test=4",
    "probe.steps=2",
    "attention.n_strings=2",
    "train.keep_steps=[]",
    "stages=[train, eval, analyze, report]",
]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("hostile") / "run"
    argv = ["run", QUICKSTART, "--no-progress", "--out", str(run), "--set", *TINY]
    assert main(argv) == 0
    return run


@pytest.fixture
def run(base_run: Path, tmp_path: Path) -> Path:
    """A fresh copy of the trained, evaluated and probed run for each case."""
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def one_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("cfglab: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def damage(run: Path, what: str) -> None:
    step = sorted((run / "ckpt").glob("step_*"))[-1]
    if what == "state_key":
        state = json.loads((step / "state.json").read_text())
        del state["rng"]["numpy"]
        (step / "state.json").write_text(json.dumps(state))
    elif what == "state_rng":
        state = json.loads((step / "state.json").read_text())
        state["rng"]["torch"] = "not base64!"
        (step / "state.json").write_text(json.dumps(state))
    elif what == "state_step":
        state = json.loads((step / "state.json").read_text())
        state["step"] = 3
        (step / "state.json").write_text(json.dumps(state))
    elif what == "optim":
        (step / "optim.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    elif what == "grammar":
        text = (run / "grammar.cfg").read_text()
        (run / "grammar.cfg").write_text(text.replace("[", "[0", 1) if "[" in text else text + "\n")
        (run / "grammar.cfg").write_text((run / "grammar.cfg").read_text() + "S -> '1'\n")
    elif what == "accuracy_shape":
        path = run / "eval" / "accuracy.json"
        body = json.loads(path.read_text())
        body["accuracy"][0].pop("ci_low")
        path.write_text(json.dumps(body))
    elif what == "accuracy_schema":
        path = run / "eval" / "accuracy.json"
        body = json.loads(path.read_text())
        body["schema"]["version"] = 0
        path.write_text(json.dumps(body))
    elif what == "probe_json":
        (run / "analyze" / "probe.json").write_text("{not json")
    elif what == "config_json":
        (run / "config.json").write_text('{"train": {"lr": "fast"}}')


# (command template, damage, message); {run} is the run, {tmp} a scratch folder
CASES = [
    (["eval", "{run}", "--n", "0"], None, "eval.n_samples must be >= 1, got 0 (given as --n)"),
    (["eval", "{run}", "--n", "-5"], None, "got -5 (given as --n)"),
    (["eval", "{run}", "--temperature", "nan"], None, "eval.temperatures: expected list of float"),
    (["eval", "{run}", "--temperature", "0"], None, "give one or more temperatures > 0"),
    (["eval", "{run}", "--cut", "0", "100"], None, "leaves no room to generate"),
    (["eval", "{run}", "--corrupt", "1.5"], None, "each gamma is a probability"),
    (["eval", "{run}", "--set", "train.lr=0.1"], None, "takes only eval.* settings"),
    (["eval", "{run}", "--set", "eval.n_sampels=3"], None, "(did you mean 'n_samples'?)"),
    (["eval", "{run}", "--threads", "0"], None, "eval.threads must be >= 1"),
    (["eval", "{run}", "--device", "tpu"], None, "unknown device 'tpu'"),
    (["eval", "{tmp}/nothing"], None, "no run directory"),
    (["eval", "{run}/config.json"], None, "is a file, not a run directory"),
    (["eval", "{run}"], "grammar", "was changed after training"),
    (["eval", "{run}"], "config_json", "train.lr: expected float"),
    (["probe", "{run}", "--window", "wide"], None, "probe.windows: unknown value 'wide'"),
    (["probe", "{run}", "--n-test", "1"], None, "probe.n_test must be >= 2"),
    (["probe", "{run}", "--lr", "-1"], None, "probe.lr must be > 0"),
    (["report", "{run}"], "accuracy_shape", "accuracy.json: not the shape cfglab writes"),
    (["report", "{run}"], "accuracy_schema", "written by another cfglab version"),
    (["report", "{run}"], "probe_json", "probe.json: not valid JSON"),
    (["report", "{run}", "--compare", "{tmp}/nothing"], None, "no run directory"),
    (["train", QUICKSTART, "--out", "{run}", "--set", *TINY], None, "already holds a trained run"),
    (
        [
            "train",
            QUICKSTART,
            "--resume",
            "--out",
            "{run}",
            "--set",
            *TINY,
            "train.lr=0.5",
            "data.seed=99",
        ],
        None,
        "data.seed 0 -> 99, train.lr 0.004 -> 0.5",
    ),
    (
        [
            "train",
            QUICKSTART,
            "--resume",
            "--out",
            "{run}",
            "--set",
            *TINY,
            "train.max_steps=2",
        ],
        None,
        "train.max_steps 4 -> 2",
    ),
    (
        [
            "train",
            QUICKSTART,
            "--resume",
            "--allow-changes",
            "--out",
            "{run}",
            "--set",
            *TINY,
            "train.max_steps=2",
        ],
        None,
        "the run is at step 4, past train.max_steps 2",
    ),
    (
        ["train", QUICKSTART, "--allow-changes", "--out", "{tmp}/x", "--set", *TINY],
        None,
        "--allow-changes only applies with --resume",
    ),
    (
        ["train", QUICKSTART, "--resume", "--out", "{run}", "--set", *TINY],
        "state_key",
        "state.json is corrupt",
    ),
    (
        ["train", QUICKSTART, "--resume", "--out", "{run}", "--set", *TINY],
        "state_rng",
        "state.json is corrupt",
    ),
    (
        ["train", QUICKSTART, "--resume", "--out", "{run}", "--set", *TINY],
        "state_step",
        "step 3 in folder step_0000004",
    ),
    (["train", QUICKSTART, "--out", "{run}/config.json", "--set", *TINY], None, "is a file"),
    (["compare", "{tmp}"], None, "neither an experiment folder"),
    (["compare", "{run}", "--out", "{run}/config.json"], None, "cannot make the report folder"),
    (["compare", "{run}", "--out", "{run}/config.json/x"], None, "cannot make the report folder"),
]


@pytest.mark.parametrize("argv, broken, needle", CASES, ids=[c[2][:40] for c in CASES])
def test_hostile_run_input(run, tmp_path, capsys, argv, broken, needle):
    if broken:
        damage(run, broken)
    before = snapshot(run)
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    line = one_error(capsys, main(argv))
    assert needle in line, line
    assert snapshot(run) == before  # nothing written, nothing lost


def test_a_corrupt_optimizer_state_keeps_the_weights_usable(run, capsys):
    """optim.pt is unreadable: resuming is refused without advice to delete the weights, and
    the weights still evaluate."""
    damage(run, "optim")
    argv = [
        "train",
        QUICKSTART,
        "--resume",
        "--out",
        str(run),
        "--set",
        *TINY,
        "train.max_steps=6",
        "--allow-changes",
    ]
    line = one_error(capsys, main(argv))
    assert "optim.pt is corrupt" in line and "not affected" in line and "delete" not in line
    assert main(["eval", str(run)]) == 0


def test_a_torn_metrics_line_is_dropped_on_resume(run):
    metrics = run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5, "lo')  # what a power cut leaves
    argv = [
        "train",
        QUICKSTART,
        "--resume",
        "--allow-changes",
        "--out",
        str(run),
        "--set",
        *TINY,
        "train.max_steps=6",
    ]
    assert main(argv) == 0
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "history.jsonl").read_text())["changed"] == {"train.max_steps": [4, 6]}


def test_a_run_killed_before_its_first_checkpoint_restarts_cleanly(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    assert main(["train", QUICKSTART, "--out", str(out), "--no-progress", "--set", *TINY]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the killed run's lines are not kept beside the new ones


def test_an_encoder_is_not_evaluated(base_run, tmp_path, capsys):
    enc = tmp_path / "enc"
    argv = [
        "train",
        QUICKSTART,
        "--out",
        str(enc),
        "--no-progress",
        "--set",
        *TINY,
        "train.objective=mlm",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    line = one_error(capsys, main(["eval", str(enc)]))
    assert "masked-LM encoder" in line and "analyze stage" in line


def test_ctrl_c_during_eval_exits_130_quickly(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    argv = ["eval", str(run), "--n", "100000", "--threads", "auto"]
    with cfglab_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        # threads auto says its choice once the model is loaded, right before it generates: a
        # signal that the eval works, however long the imports took on a busy machine
        assert proc.stderr.readline().startswith("threads: ")
        time.sleep(1)  # the model generating
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        assert code == 130 and time.perf_counter() - t0 < 2.0
        assert "Traceback" not in proc.stderr.read()
    assert json.loads((run / "eval" / "summary.json").read_text())["settings"]["n_samples"] == 8
