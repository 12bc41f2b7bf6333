"""Noisy pretraining and the authors' stream inside the training loop: what the run records,
exact resume of the sequential stream, and saved datasets that must match the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cfglab.config import load_config
from cfglab.errors import ConfigError
from cfglab.train import checkpoint as ckpt
from cfglab.train.loop import train, training_noise

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "grammars" / "quickstart.cfg")
TINY = [
    f"grammar.name={QUICK}",
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=8",
    "train.max_steps=8",
    "train.log_every=2",
    "train.eval_every=0",
    "train.ckpt_every=4",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=2",
]


def cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"out_dir={tmp_path}", *extra])


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt.latest_checkpoint(run) / "model.safetensors"))


def test_a_noisy_run_records_its_out_of_language_share(tmp_path):
    run = train(
        cfg(tmp_path, "name=noisy", "data.noise.fraction=0.5", "data.noise.kind=rule"),
        progress=False,
    )
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    shares = [r["train_out_of_language"] for r in logged]
    assert len(shares) == 4 and all(
        0 < s <= r["train_perturbed"] for s, r in zip(shares, logged, strict=True)
    )
    assert 0.2 < sum(r["train_perturbed"] for r in logged) / 4 < 0.8
    clean = train(cfg(tmp_path, "name=clean"), progress=False)
    assert all(
        "train_out_of_language" not in json.loads(x)
        for x in (clean / "metrics.jsonl").read_text().splitlines()
    )


def test_the_authors_stream_resumes_exactly(tmp_path):
    """data.sampler physicslm4: a run stopped at step 4 and resumed ends with the same weights
    as one trained straight through, and its checkpoint holds the stream's position."""
    whole = train(cfg(tmp_path, "name=whole", "data.sampler=physicslm4"), progress=False)
    part_cfg = cfg(tmp_path, "name=part", "data.sampler=physicslm4")
    part = train(part_cfg, progress=False, stop_after=4)
    state = ckpt.read_state(ckpt.latest_checkpoint(part))
    assert state["step"] == 4 and state["data_stream"] is not None
    train(part_cfg, progress=False, resume=True)
    a, b = weights(whole), weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fast = train(cfg(tmp_path, "name=fast"), progress=False)  # the default sampler differs
    assert not all(torch.equal(a[k], weights(fast)[k]) for k in a)


def test_saved_datasets_must_match_the_runs_grammar_and_noise(tmp_path):
    from cfglab.data.saved import write_dataset

    noisy = cfg(tmp_path, "data.noise.fraction=0.2", "data.noise.kind=rule")
    grammar = noisy.grammar.load()
    ds = write_dataset(grammar, tmp_path / "ds", 300, seed=1, noise=training_noise(noisy))
    ok = cfg(
        tmp_path, "name=ok", f"data.dataset={ds}", "data.noise.fraction=0.2", "data.noise.kind=rule"
    )
    assert ckpt.read_state(ckpt.latest_checkpoint(train(ok, progress=False)))["step"] == 8
    with pytest.raises(ConfigError, match="was written with noise .* but data.noise is None"):
        train(cfg(tmp_path, "name=clean", f"data.dataset={ds}"), progress=False)
    other = write_dataset(load_config(None).grammar.load(), tmp_path / "cfg3b", 50, seed=1)
    with pytest.raises(ConfigError, match="was written for another grammar"):
        train(cfg(tmp_path, "name=other", f"data.dataset={other}"), progress=False)
    meta = json.loads((ds / "meta.json").read_text())
    del meta["grammar_text"]
    (ds / "meta.json").write_text(json.dumps(meta))
    tampered = cfg(
        tmp_path, "name=t", f"data.dataset={ds}", "data.noise.fraction=0.2", "data.noise.kind=rule"
    )
    with pytest.raises(ConfigError, match="is not a saved dataset"):
        train(tampered, progress=False)
