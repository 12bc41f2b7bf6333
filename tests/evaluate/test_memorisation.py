"""The memorisation family on a tiny trained run: its seen set equals the very batches the
training loop consumed (recorded by a spy on its step, across a resume that changed the data
seed), and its shares are the planted ones."""

from __future__ import annotations

import numpy as np
import pytest

from cfglab import rundir
from cfglab.config import EvalConfig, load_config
from cfglab.data.sampler import sample
from cfglab.evaluate import memorisation as M
from cfglab.evaluate.adapters import uniform_logprob_fn
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.families import FAMILIES
from cfglab.evaluate.run import evaluate, write_eval
from cfglab.exact import cyk
from tests.data.test_seen import EOS, GRAMMAR, QUICK, brute_force

SETS = [
    f"grammar.name={QUICK}",
    "model.preset=tiny",
    "model.block_size=32",
    "train.batch_size=8",
    "train.threads=1",
    "train.tensorboard=false",
    "data.prefetch=0",
    "train.eval_every=0",
    "name=tiny",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, string -> first step of the windows the training loop stepped on): 4 steps
    with data.seed 0, then a resume to 8 with data.seed 3 (recorded in history.jsonl)."""
    from cfglab.train import loop

    consumed = []
    step_fn = loop.train_step

    def spy(s, p, windows, lr, ctrl_c):
        consumed.append((p.step, windows.cpu().numpy().copy()))  # p.step: the data step
        return step_fn(s, p, windows, lr, ctrl_c)

    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_step", spy)
        run = loop.train(
            load_config(None, [*SETS, "train.max_steps=4", f"out_dir={out}"]), progress=False
        )
        again = load_config(None, [*SETS, "train.max_steps=8", f"out_dir={out}", "data.seed=3"])
        loop.train(again, resume=True, allow_changes=True, run_dir=run, progress=False)
    assert [s for s, _ in consumed] == list(range(8))
    assert "data.seed" in (run / rundir.HISTORY).read_text()
    return run, brute_force(consumed)


def test_seen_set_equals_the_batches_training_consumed(trained):
    run, brute = trained
    seen = M.seen_set(run)
    keys = [np.array(k) for k in brute]
    assert seen.first_seen(keys).tolist() == list(brute.values())
    assert {s for s in brute.values()} & {0, 4}  # both stretches hold strings
    probes = sample(GRAMMAR, 300, seed=11, labels=False).strings()
    assert seen.seen(probes).tolist() == [tuple(x.tolist()) in brute for x in probes]
    assert seen.n_distinct == len(brute)


def planted_generator(seen_strings, unseen_strings):
    """Generations in a fixed cycle of four: a seen string, an unseen sentence, a non-sentence
    (a seen string with a token added), a seen string without its EOS (unfinished)."""
    count = [0]

    def make(temperature):
        def generate(prompts, rng):
            out = []
            for p in prompts:
                i, kind = divmod(count[0], 4)
                count[0] += 1
                x = seen_strings[i % len(seen_strings)]
                body = [x, unseen_strings[i % len(unseen_strings)], np.append(x, 1), x][kind]
                out.append(np.concatenate([p, body, [EOS] if kind < 3 else []]))
            return out

        return generate

    return make


def test_planted_shares_rows_and_the_reference(trained, tmp_path):
    run, brute = trained
    seen_strings = [np.array(k) for k in brute]
    fresh = sample(GRAMMAR, 400, seed=12, labels=False).strings()
    unseen = [x for x in fresh if tuple(x.tolist()) not in brute]
    assert not cyk.recognize(GRAMMAR, [np.append(x, 1) for x in seen_strings[:10]]).any()
    settings = EvalConfig(n_samples=16, n_kl=40, cuts=[0], temperatures=[1.0], seed=4)
    ctx = EvalContext(
        GRAMMAR,
        uniform_logprob_fn(GRAMMAR.n_t + 4),
        planted_generator(seen_strings, unseen),
        settings,
        max_len=31,
        run_dir=run,
    )
    out = evaluate(ctx, ["accuracy", "memorisation"])
    res = out["results"]["memorisation"]
    g = res["generations"][0]
    assert (g["seen_generated"]["k"], g["seen_generated"]["n"]) == (4, 16)
    assert (g["novelty"]["k"], g["novelty"]["n"]) == (4, 8)  # of the 8 sentences, 4 are new
    test = ctx.true_batch(40, "eval_kl").strings()
    assert res["seen_test"]["k"] == sum(tuple(x.tolist()) in brute for x in test)
    assert res["steps"] == 8 and res["n_distinct"] == len(brute)
    rows = [r for r in out["rows"] if r["family"] == "memorisation"]
    assert [r["metric"] for r in rows] == ["seen_test", "seen_generated", "novelty"]
    for r in rows:
        assert r["metric"] in M.DEFINITIONS and r["ci_low"] <= r["value"] <= r["ci_high"]
    assert rows[1]["cut"] == 0 and rows[1]["temperature"] == 1.0
    write_eval(tmp_path, out)
    assert rundir.read_result(tmp_path, "eval/memorisation")["memorisation"] == res


def test_an_earlier_checkpoint_counts_only_the_steps_before_it(trained):
    run, brute = trained
    early = [np.array(k) for k, s in brute.items() if s < 4]
    late = [np.array(k) for k, s in brute.items() if s >= 4]
    settings = EvalConfig(n_samples=4, n_kl=4, cuts=[0], seed=4)
    ctx = EvalContext(
        GRAMMAR,
        uniform_logprob_fn(GRAMMAR.n_t + 4),
        lambda t: lambda prompts, rng: [np.concatenate([p, late[0], [EOS]]) for p in prompts],
        settings,
        run_dir=run,
        step=4,
    )
    res = M.measure(ctx)
    assert res["generations"][0]["seen_generated"]["k"] == 0  # seen at step >= 4 only
    assert res["steps"] == 4
    is_seen, _ = M._seen_fn(ctx)
    assert is_seen(early).all() and not is_seen(late).any()


def test_without_a_run_the_training_strings_stand_in_and_without_either_nothing():
    gen = lambda t: lambda prompts, rng: [np.concatenate([p, [3, 2], [EOS]]) for p in prompts]  # noqa: E731
    settings = EvalConfig(n_samples=4, n_kl=4, cuts=[0], seed=4)
    logprob = uniform_logprob_fn(GRAMMAR.n_t + 4)
    ctx = EvalContext(GRAMMAR, logprob, gen, settings, training={np.array([3, 2]).tobytes()})
    res = M.measure(ctx)
    assert res["source"] == "training strings"
    assert res["generations"][0]["seen_generated"]["share"] == 1.0
    assert M.measure(EvalContext(GRAMMAR, logprob, gen, settings)) is None
    assert FAMILIES["memorisation"] is M


def test_a_stream_no_replay_rebuilds_gives_its_reason_and_no_rows(tmp_path):
    from tests.data.test_seen import fake_run

    history = [{"step": 2, "changed": {"data.seed": [0, 1]}}]
    run = fake_run(tmp_path, ["data.sampler=physicslm4", "data.seed=1"], 5, history)
    settings = EvalConfig(n_samples=4, n_kl=4, cuts=[0], seed=4)
    logprob = uniform_logprob_fn(GRAMMAR.n_t + 4)
    ctx = EvalContext(GRAMMAR, logprob, lambda t: None, settings, run_dir=run)
    res = M.measure(ctx)
    assert "physicslm4 stream and resumed with changed data" in res["unavailable"]
    assert M.summary_rows(res) == []
