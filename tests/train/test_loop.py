"""The training loop end to end on tiny configs: exact resume, Ctrl-C, NaN, bad configs, layout."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cfglab.data.dataset as dataset_mod
import cfglab.data.saved as saved_mod
from cfglab import cli
from cfglab.config import load_config
from cfglab.errors import ConfigError
from cfglab.train import checkpoint as ckpt
from cfglab.train import steps
from cfglab.train.loop import DivergedError, lr_at, train

TINY = [
    "grammar.name=cfg3b",
    "model.preset=tiny",
    "model.block_size=32",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.lr=3e-3",
    "train.log_every=1",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.ckpt_every=100",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=2",
]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"out_dir={tmp_path}", *extra])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.latest_checkpoint(run_dir) / "model.safetensors"))


@pytest.mark.parametrize(
    "extra",
    [["model.dropout=0.1"], ["train.objective=mlm", "train.grad_accum=2"]],
    ids=["gpt-dropout", "mlm-accum"],
)
def test_resume_is_bit_exact(tmp_path: Path, extra: list[str]) -> None:
    """N steps in one go == N/2 steps, stop, resume, N/2 steps: identical weights and losses."""
    whole = train(_cfg(tmp_path, "name=whole", *extra), progress=False)
    split = _cfg(tmp_path, "name=split", *extra)
    train(split, progress=False, stop_after=3)
    assert ckpt.read_state(ckpt.latest_checkpoint(split.run_dir))["step"] == 3
    train(split, progress=False, resume=True)
    a, b = _weights(whole), _weights(split.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x)["loss"] for x in (whole / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (split.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_run_layout_and_load_model(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "name=layout", "train.ckpt_every=2", "train.keep_last=2")
    run = train(cfg, progress=False)
    assert sorted(p.name for p in run.iterdir()) == [
        "ckpt",
        "config.json",
        "fingerprint.json",
        "grammar.cfg",
        "metrics.jsonl",
    ]
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == [
        "latest",
        "step_0000004",
        "step_0000006",
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert records[-1]["tokens"] == 6 * 4 * 32
    model, back = ckpt.load_model(run)
    assert back == cfg
    saved = _weights(run)
    for name, p in model.state_dict().items():
        if name in saved:
            assert torch.equal(p, saved[name])
    with pytest.raises(Exception, match="already holds a trained run"):
        train(cfg, progress=False)


def test_loss_goes_down(tmp_path: Path) -> None:
    """A learning sanity check: after 40 steps the validation loss is well below log(3)
    (uniform over cfg3b's three terminals), which needs the model to learn structure."""
    run = train(
        _cfg(
            tmp_path,
            "name=learn",
            "train.max_steps=40",
            "train.eval_every=40",
            "train.batch_size=8",
            "train.eval_batches=2",
        ),
        progress=False,
    )
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["val_loss"] < 0.95 * math.log(3)


def test_lr_schedule() -> None:
    cfg = load_config(
        None, ["train.max_steps=110", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr=0.1"]
    )
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    cfg.train.decay = "cosine"
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(35, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    cfg.train.decay = "constant"
    assert lr_at(100, cfg) == 1.0


def test_ctrl_c_saves_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = steps.loss_fn

    def loss_then_sigint(logits, y):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3 (one call per step, no accumulation)
            os.kill(os.getpid(), signal.SIGINT)
        return real(logits, y)

    monkeypatch.setattr(steps, "loss_fn", loss_then_sigint)
    cfg = _cfg(tmp_path, "name=ctrlc", "train.eval_every=0")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert ckpt.read_state(ckpt.latest_checkpoint(cfg.run_dir))["step"] == 3  # step 3 finished
    monkeypatch.setattr(steps, "loss_fn", real)
    train(cfg, progress=False, resume=True)
    assert ckpt.read_state(ckpt.latest_checkpoint(cfg.run_dir))["step"] == 6


def test_nan_stops_and_keeps_last_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = steps.loss_fn

    def nan_at_step_5(logits, y):
        calls["n"] += 1
        loss = real(logits, y)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(steps, "loss_fn", nan_at_step_5)
    cfg = _cfg(tmp_path, "name=nan", "train.ckpt_every=2", "train.eval_every=0")
    with pytest.raises(DivergedError, match="loss is nan at step 5"):
        train(cfg, progress=False)
    path = ckpt.latest_checkpoint(cfg.run_dir)
    assert ckpt.read_state(path)["step"] == 4
    assert all(torch.isfinite(t).all() for t in _weights(cfg.run_dir).values())


def _write_yaml(tmp_path: Path, text: str = "") -> str:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "yaml_text, args, env, needle",
    [
        ("modle: {}\n", [], {}, "unknown key modle (did you mean 'model'?)"),
        ("", ["--set", "train.max_steps=ten"], {}, "train.max_steps: expected int"),
        ("", ["--set", "model.position=rotary"], {}, "model.position: unknown value 'rotary'"),
        ("", ["--set", "grammar.name=cfg3x"], {}, "unknown grammar 'cfg3x'"),
        (
            "",
            ["--set", "train.batch_size=5"],
            {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
            "not divisible by the world",
        ),
        ("", ["--resume"], {}, "no checkpoint in"),
        ("", ["--resume"], {"CORRUPT": "state"}, "state.json is corrupt"),
        ("", ["--resume"], {"CORRUPT": "weights"}, "model.safetensors is corrupt"),
    ],
)
def test_bad_input_exit_2_before_sampling(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    yaml_text: str,
    args: list[str],
    env: dict[str, str],
    needle: str,
) -> None:
    out = tmp_path / "run"
    corrupt = env.pop("CORRUPT", None)
    if corrupt:  # a real checkpoint, then damage one file
        train(_cfg(tmp_path, "name=run", "train.max_steps=2"), progress=False)
        path = ckpt.latest_checkpoint(out)
        target = path / ("state.json" if corrupt == "state" else "model.safetensors")
        target.write_bytes(target.read_bytes()[:40])
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def no_sampling(*a, **k):
        raise AssertionError("sampled before validating")

    monkeypatch.setattr(dataset_mod, "sample", no_sampling)
    monkeypatch.setattr(saved_mod, "sample", no_sampling)
    capsys.readouterr()
    argv = [
        "train",
        _write_yaml(tmp_path, yaml_text),
        "--set",
        *TINY[1:],
        "--out",
        str(out),
        "--no-progress",
        *args,
    ]
    if corrupt:  # the run's own settings, so only the damaged file stands in the way
        argv = [a if a != "train.max_steps=6" else "train.max_steps=2" for a in argv]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cfglab: error: ")
    assert needle in err[0]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    """2 gloo processes under torchrun == 1 process with the same global batch (loss curve
    within float tolerance); only rank 0 writes files (one metrics line per logged step)."""
    common = [*TINY, "train.max_steps=8", "train.eval_every=4", "data.prefetch=0"]
    yaml_path = _write_yaml(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = tmp_path / "one"
    two = tmp_path / "two"

    def train(out: Path) -> list[str]:
        # the same training command; only the launcher in front of it differs
        cmd = ["-m", "cfglab", "train", yaml_path, "--no-progress", "--out", str(out)]
        return [*cmd, "--set", *common]

    subprocess.run([sys.executable, *train(one)], check=True, env=env)
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    subprocess.run([sys.executable, *torchrun, *train(two)], check=True, env=env)
    r1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    r2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in r2] == [r["step"] for r in r1] == list(range(1, 9))
    for a, b in zip(r1, r2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        if "val_loss" in a:
            assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    w1, w2 = _weights(one), _weights(two)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


def test_resume_after_crash_does_not_duplicate_metrics(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "name=crash", "train.ckpt_every=4")
    run = train(cfg, progress=False)
    # as if the process died after logging steps 5-6 but before checkpoint 6 was complete
    (run / "ckpt" / "latest").write_text("step_0000004\n")
    cfg.train.max_steps = 7
    with pytest.raises(ConfigError, match=r"train.max_steps 6 -> 7.*--allow-changes"):
        train(cfg, progress=False, resume=True)  # a changed setting is refused by default
    train(cfg, progress=False, resume=True, allow_changes=True)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert history == [{"step": 4, "changed": {"train.max_steps": [6, 7]}}]
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 7


def test_data_command_and_training_on_it(tmp_path: Path, capsys) -> None:
    yaml_path = _write_yaml(tmp_path)
    ds = tmp_path / "ds"
    assert (
        cli.main(["data", yaml_path, "--set", "grammar.name=cfg3b", "--out", str(ds), "-n", "20"])
        == 0
    )
    assert "20 strings" in capsys.readouterr().out
    run = train(
        _cfg(tmp_path, "name=saved", f"data.dataset={ds}", "train.max_steps=2"), progress=False
    )
    assert ckpt.read_state(ckpt.latest_checkpoint(run))["step"] == 2
