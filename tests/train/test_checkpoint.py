"""Checkpoints on a plain nn.Module: round trip, keep-last-K, corrupt files, SIGKILL mid-write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from cfglab.errors import CheckpointError
from cfglab.train import checkpoint as ckpt


class Tied(nn.Module):
    """Embedding and output head share one matrix, as in GPT-2 (safetensors must cope)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.mid = nn.Linear(5, 5)
        self.head = nn.Linear(5, 7, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.emb(idx)))


def _trained(seed: int = 0) -> tuple[Tied, torch.optim.AdamW]:
    torch.manual_seed(seed)
    m = Tied()
    opt = torch.optim.AdamW(m.parameters(), lr=0.01)
    for _ in range(3):
        m(torch.randint(0, 7, (4, 3))).sum().backward()
        opt.step()
        opt.zero_grad()
    return m, opt


def test_round_trip_weights_optimizer_rng(tmp_path: Path) -> None:
    m, opt = _trained()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    path = ckpt.save_checkpoint(tmp_path, 3, m, opt, {"tokens": 9, "rng": ckpt.rng_state()})
    expect = (torch.rand(3), random.random(), np.random.rand())
    assert ckpt.latest_checkpoint(tmp_path) == path
    assert path.name == "step_0000003"
    state = ckpt.read_state(path)
    assert state["step"] == 3 and state["tokens"] == 9
    json.dumps(state)  # plain data only

    m2, opt2 = _trained(seed=1)
    assert not torch.equal(m2.mid.weight, m.mid.weight)
    ckpt.load_weights(m2, path)
    ckpt.load_optimizer(opt2, path)
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert m2.head.weight.data_ptr() == m2.emb.weight.data_ptr()  # still tied
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    for k in s1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1[k][name], s2[k][name])
    ckpt.set_rng_state(state["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expect[0]) and got[1:] == expect[1:]


def test_keep_last_and_latest(tmp_path: Path) -> None:
    m, opt = _trained()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, m, opt, {"rng": ckpt.rng_state()}, keep_last=2)
    kept = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert kept == ["latest", "step_0000003", "step_0000004"]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_0000004"


def test_only_cfglab_checkpoints_are_pruned_listed_or_pointed_at(tmp_path: Path) -> None:
    """A user's files in ckpt/ named like checkpoints survive pruning and are never listed; a
    pruned checkpoint loses only cfglab's files (a file put inside keeps it and its folder)."""
    ckpt_dir = tmp_path / "ckpt"
    planted = {
        "step_0000010.bak/model.safetensors": b"a user's copy",
        "step_0000010.bak/state.json": b'{"step": 10}',
        "step_x/state.json": b"{}",
        "step_0000001.tmp.mine/x": b"mine",
        "step_0000099": b"a file, not a folder",
        "step_0000002/README": b"the user's note in a checkpoint",
    }
    for rel, data in planted.items():
        (ckpt_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / rel).write_bytes(data)
    m, opt = _trained()
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, m, opt, {"rng": ckpt.rng_state()}, keep_last=1)
    for rel, data in planted.items():
        assert (ckpt_dir / rel).read_bytes() == data, rel
    assert sorted(p.name for p in (ckpt_dir / "step_0000002").iterdir()) == ["README"]
    assert not (ckpt_dir / "step_0000001").exists() and not (ckpt_dir / "step_0000003").exists()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4]
    (ckpt_dir / "latest").write_text("step_0000010.bak\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        ckpt.latest_checkpoint(tmp_path)


def test_a_failed_write_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """A full disk while writing (torch.save's RuntimeError, as it reports one): a
    CheckpointError naming the step; `latest` and the earlier checkpoint are untouched, and no
    half-written folder is left."""
    m, opt = _trained()
    ckpt.save_checkpoint(tmp_path, 1, m, opt, {"rng": ckpt.rng_state()})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt" / "step_0000001").iterdir()}

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc] file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint of step 2"):
        ckpt.save_checkpoint(tmp_path, 2, m, opt, {"rng": ckpt.rng_state()})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step_0000001"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step_0000001"
    after = {p.name: p.read_bytes() for p in (tmp_path / "ckpt" / "step_0000001").iterdir()}
    assert after == before


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ckpt.latest_checkpoint(tmp_path)
    m, opt = _trained()
    path = ckpt.save_checkpoint(tmp_path, 1, m, opt, {"rng": ckpt.rng_state()})

    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_weights(Tied(), path)

    (path / "state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="state.json is corrupt"):
        ckpt.read_state(path)

    # a pickle that is not plain tensors: weights_only refuses it, we say "corrupt"
    torch.save({"evil": object.__new__(Tied)}, path / "optim.pt")
    with pytest.raises(CheckpointError, match="optim.pt is corrupt"):
        ckpt.load_optimizer(opt, path)

    (tmp_path / "ckpt" / "latest").write_text("step_0000099\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        ckpt.latest_checkpoint(tmp_path)


def test_wrong_shape_is_clear(tmp_path: Path) -> None:
    m, opt = _trained()
    path = ckpt.save_checkpoint(tmp_path, 1, m, opt, {"rng": ckpt.rng_state()})
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        ckpt.load_weights(other, path)


WRITER = textwrap.dedent(
    """
    import sys, torch, torch.nn as nn
    from cfglab.train import checkpoint as ckpt
    run = sys.argv[1]
    m = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])  # ~8 MB weights + 16 MB optimizer
    opt = torch.optim.AdamW(m.parameters())
    m(torch.zeros(1, 512)).sum().backward(); opt.step()
    for step in range(1, 10_000):
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float(step))  # the oracle: every weight equals the step number
        ckpt.save_checkpoint(run, step, m, opt, {"rng": ckpt.rng_state()}, keep_last=2)
        print(step, flush=True)
    """
)


def test_sigkill_during_write_keeps_previous(tmp_path: Path) -> None:
    """Kill the writer while a step_*.tmp folder exists: `latest` must still load, completely."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    ckdir = tmp_path / "ckpt"
    deadline = time.time() + 60
    killed_mid_write = False
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the first checkpoint is complete
        while time.time() < deadline:
            tmp = list(ckdir.glob("step_*.tmp"))
            if tmp and any(tmp[0].iterdir()):  # files being written
                os.kill(proc.pid, signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_mid_write, "never caught the writer mid-write"
    path = ckpt.latest_checkpoint(tmp_path)
    step = ckpt.read_state(path)["step"]
    m = nn.Sequential(*[nn.Linear(512, 512) for _ in range(8)])
    ckpt.load_weights(m, path)
    for p in m.parameters():
        assert torch.all(p == float(step))
    opt = torch.optim.AdamW(m.parameters())
    ckpt.load_optimizer(opt, path)
