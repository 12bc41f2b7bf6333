"""The metadata family (cfglab.evaluate.metadata) on planted models whose answers are known: an
oracle that reads the metadata and gives the brute-force distribution given it (every tree
enumerated: KL 0 given metadata, every generation obeys), the same oracle blind to the metadata
(it obeys only by chance, and its KL given metadata is the gap to the plain distribution), and a
tiny trained run end to end (`cfglab run` with data.metadata: train and eval)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from cfglab.config import EvalConfig
from cfglab.data import metadata as md
from cfglab.evaluate import metadata as family
from cfglab.evaluate.adapters import sampling_generate_fn
from cfglab.evaluate.context import EvalContext
from cfglab.grammar import load
from tests.grammar.test_condition import LAYERED, trees

MAX_LEN = 30  # LAYERED is finite: every tree has fewer tokens
META = md.Metadata(LAYERED, (0, 1))
V = LAYERED.n_t + 4 + META.n_tokens


def _table(named: dict) -> list[tuple[tuple, float]]:
    """Every string of LAYERED with its probability given `named` (brute force over trees)."""
    out: dict = defaultdict(float)
    for p, tokens, ch in trees(LAYERED, 0, 0, MAX_LEN):
        if all(d < len(ch) and ch[d] == list(js) for d, js in named.items()):
            out[tokens] += p
    total = sum(out.values())
    return [(x, p / total) for x, p in out.items()]


def planted_model(reads_metadata: bool):
    """A LogProbFn over V ids: after BOS and any metadata block, the brute-force next-token
    distribution given that metadata (or, blind, the plain grammar's); -inf elsewhere."""
    tables: dict = {}  # metadata -> its strings' table
    rows: dict = {}  # (metadata, prefix) -> the next-token row
    t = LAYERED.n_t

    def model(batch):
        out = []
        for seq in batch:
            block = [int(v) for v in seq[1:] if v >= META.first_id]
            named: dict = defaultdict(list)
            for tok in block if reads_metadata else []:
                d, j = divmod(tok - META.first_id, META.n_rules)
                named[d].append(j)
            key = tuple(sorted((d, tuple(js)) for d, js in named.items()))
            if key not in tables:
                tables[key] = _table(dict(key))
            x = tuple(int(v) for v in seq[1 + len(block) :])
            lq = np.full((len(seq), V), -np.inf)
            for k in range(len(block), len(seq)):
                prefix = x[: k - len(block)]
                if (key, prefix) not in rows:
                    mass = np.zeros(t + 2)
                    for y, p in tables[key]:
                        if y[: len(prefix)] == prefix:
                            mass[t + 1 if len(y) == len(prefix) else y[len(prefix)]] += p
                    with np.errstate(divide="ignore"):
                        rows[key, prefix] = np.log(mass / mass.sum())
                lq[k, : t + 2] = rows[key, prefix]
            out.append(lq)
        return out

    return model


def context(reads_metadata: bool, n: int = 40) -> EvalContext:
    model = planted_model(reads_metadata)
    settings = EvalConfig(n_samples=n, n_kl=n, cuts=[0], seed=3, metadata=[0, 1])
    eos = LAYERED.n_t + 1

    def make_generate(temperature: float):
        return sampling_generate_fn(model, eos, max_new_tokens=MAX_LEN, temperature=temperature)

    return EvalContext(LAYERED, model, make_generate, settings, max_len=60)


def rows(ctx: EvalContext) -> dict[str, dict]:
    return {r["metric"]: r for r in family.summary_rows(family.measure(ctx))}


def test_an_oracle_given_the_metadata_obeys_it_at_kl_zero() -> None:
    r = rows(context(reads_metadata=True))
    assert set(r) == set(family.DEFINITIONS)  # every row defined, every definition a row
    assert r["kl_given_metadata"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert r["metadata_accuracy"]["value"] == 1.0
    assert r["metadata_obeyed"]["value"] == 1.0
    # blind cut0 generations obey another string's metadata only by chance
    assert r["metadata_obeyed_chance"]["value"] < 0.8
    assert r["metadata_obeyed_gain"]["ci_low"] > 0  # reading the metadata is what obeys it
    assert r["metadata_accuracy_gain"]["value"] == 0.0  # the plain oracle is exact too
    # the plain model (the same oracle after BOS alone) is exact too
    assert r["kl_without_metadata"]["value"] == pytest.approx(0.0, abs=1e-9)


def test_an_oracle_blind_to_the_metadata_is_far_from_the_distribution_given_it() -> None:
    r = rows(context(reads_metadata=False))
    assert r["metadata_accuracy"]["value"] == 1.0  # still in the language
    assert r["metadata_obeyed"]["ci_high"] < 0.8  # but not the named rules
    assert r["kl_given_metadata"]["ci_low"] > 0.05
    assert r["kl_without_metadata"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert r["kl_given_metadata"]["ci_low"] <= r["kl_given_metadata"]["value"]
    gain = r["metadata_obeyed_gain"]  # obeying only by chance: no gain
    assert gain["ci_low"] < 0 < gain["ci_high"] or abs(gain["value"]) < 0.1


def test_the_family_does_not_apply_without_metadata() -> None:
    ctx = context(True)
    ctx.settings.metadata = []
    assert family.measure(ctx) is None
    ctx.settings.metadata = None
    assert family.measure(ctx) is None


def test_a_tiny_run_with_metadata_trains_and_evaluates(tmp_path) -> None:
    from cfglab.cli import main
    from cfglab.train.checkpoint import load_model

    argv = [
        "run", "configs/quickstart.yaml", "--out", str(tmp_path / "r"),
        "--set", "data.metadata.levels=[0, 1]", "--set", "data.metadata.fraction=0.5",
        "--set", "train.max_steps=4", "--set", "train.batch_size=4",
        "--set", "model.n_layer=1", "--set", "model.n_embd=16", "--set", "model.n_head=2",
        "--set", "model.block_size=64", "--set", "train.threads=1", "--set", "train.keep_steps=[]",
        "--set", "eval.n_samples=4", "--set", "eval.n_kl=4", "--set", "eval.cuts=[0]",
        "--set", "stages=[train, eval]",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "r"
    model, cfg = load_model(run)
    assert model.config.vocab_size == md.model_vocab_size(
        load("configs/grammars/quickstart.cfg"), [0, 1]
    )
    body = json.loads((run / "eval" / "metadata.json").read_text())
    assert body["metadata"]["levels"] == [0, 1] and cfg.eval.metadata == [0, 1]
    summary = json.loads((run / "eval" / "summary.json").read_text())
    metrics = {r["metric"] for r in summary["rows"]}
    assert {"kl_given_metadata", "metadata_obeyed", "accuracy"} <= metrics
    # export would name the special tokens wrongly: refused in one line, nothing written
    assert main(["export", str(run), "-o", str(tmp_path / "hf")]) == 2
    assert not (tmp_path / "hf").exists()
