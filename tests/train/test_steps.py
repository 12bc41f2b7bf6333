"""The loop's pieces used alone: the validation loss of a model loaded from a checkpoint is the
number the training loop logged for it, and the held-out windows are fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cfglab import rundir
from cfglab.config import load_config
from cfglab.data.vocab import Vocab
from cfglab.model import build_model, gpt_config
from cfglab.train import checkpoint as ckpt
from cfglab.train.loop import train
from cfglab.train.steps import validation_loss, validation_windows

ROOT = Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "grammars" / "quickstart.cfg")
ONE_LAYER = [
    f"grammar.name={QUICK}",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=64",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.eval_every=4",
    "train.eval_batches=2",
    "train.log_every=2",
    "train.lr=3e-3",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=0",
]


@pytest.mark.parametrize(
    "extra",
    [[], ["train.objective=mlm", "model.dropout=0.1", "data.seed=5"]],
    ids=["next_token", "mlm-dropout"],
)
def test_validation_loss_of_the_final_checkpoint_is_the_logged_one(
    tmp_path: Path, extra: list[str]
) -> None:
    cfg = load_config(None, [*ONE_LAYER, f"out_dir={tmp_path}", "name=run", *extra])
    run = train(cfg, progress=False)
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["step"] == 4 and "val_loss" in logged
    model, back = ckpt.load_model(run)  # from the files alone: the run's config and grammar
    grammar = rundir.read_run_grammar(run, back.grammar.name)
    got = validation_loss(model, back, grammar, device="cpu")
    assert got == pytest.approx(logged["val_loss"], abs=1e-6)
    # the run's random-init twin scores differently: the comparison can fail
    vocab_size = Vocab.from_grammar(grammar).size
    twin = build_model(gpt_config(back.model, vocab_size), seed=back.train.seed)
    assert abs(validation_loss(twin, back, grammar, device="cpu") - got) > 1e-3


def test_validation_loss_matches_a_loss_computed_by_hand(tmp_path: Path) -> None:
    """An independent oracle: per-window cross-entropy by log_softmax and gather, averaged per
    batch then over batches, on the windows `validation_windows` gives."""
    cfg = load_config(None, [*ONE_LAYER, f"out_dir={tmp_path}", "name=run", "train.max_steps=2"])
    run = train(cfg, progress=False)
    model, back = ckpt.load_model(run)
    grammar = rundir.read_run_grammar(run, back.grammar.name)
    windows = validation_windows(back, grammar)
    assert len(windows) == 2 and all(w.shape == (4, 65) for w in windows)
    per_batch = []
    with torch.no_grad():
        for w in windows:
            x, y = w[:, :-1], w[:, 1:]  # next_token: (B, T) each
            logp = torch.log_softmax(model(x).double(), dim=-1)  # (B, T, V)
            per_batch.append(-logp.gather(-1, y.unsqueeze(-1)).mean().item())
    expected = sum(per_batch) / len(per_batch)
    assert validation_loss(model, back, grammar, device="cpu") == pytest.approx(expected, rel=1e-5)


def test_windows_are_fixed_and_the_model_mode_is_kept(tmp_path: Path) -> None:
    cfg = load_config(None, [*ONE_LAYER, f"out_dir={tmp_path}", "train.objective=mlm"])
    grammar = cfg.grammar.load()
    a = validation_windows(cfg, grammar)
    b = validation_windows(cfg, grammar)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # each rank holds its slice of the same global batch
    halves = [validation_windows(cfg, grammar, rank=r, world_size=2) for r in (0, 1)]
    assert all(torch.equal(torch.cat([h0, h1]), w) for h0, h1, w in zip(*halves, a, strict=True))
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(grammar).size), seed=0)
    model.train()
    first = validation_loss(model, cfg, grammar, device="cpu", windows=a)
    assert model.training  # back in the mode it was in
    assert validation_loss(model, cfg, grammar, device="cpu") == first  # windows drawn again
    model.eval()
    assert validation_loss(model, cfg, grammar, device="cpu") == first
    assert not model.training
