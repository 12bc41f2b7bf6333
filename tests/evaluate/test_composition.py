"""The composition family (held-out rule combinations) against planted models: the grammar's
exact distribution scores a gap of 0 and generates the combinations at their exact mass; a
sampler of the training distribution never generates them; the posterior of an ambiguous
string is its share of enumerated parses that hold the combination."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfglab.config import EvalConfig
from cfglab.data import exclude as ex
from cfglab.data.sampler import sample
from cfglab.data.vocab import BOS
from cfglab.evaluate import composition as C
from cfglab.evaluate.adapters import exact_logprob_fn
from cfglab.evaluate.context import EvalContext
from tests.data.test_exclude import AMBIGUOUS, QS_COMBO, QUICKSTART, contains, trees


def planted_context(generate_from, n: int = 300, compositions=(QS_COMBO,)) -> EvalContext:
    """The exact model of QUICKSTART, whose generations are fresh strings of `generate_from`
    (a grammar sampled exactly, with an optional tree filter: (grammar, filters))."""
    grammar, filters = generate_from

    def make_generate(temperature: float):
        def generate(prompts, rng):
            seed = int(rng.integers(2**62))
            strings = sample(grammar, len(prompts), seed, labels=False, **filters).strings()
            return [np.concatenate([[BOS], s, [grammar.n_t + 1]]) for s in strings]

        return generate

    settings = EvalConfig(n_samples=n, n_kl=80, cuts=[0], compositions=list(compositions))
    return EvalContext(QUICKSTART, exact_logprob_fn(QUICKSTART), make_generate, settings)


def rows_by_metric(result: dict) -> dict[str, dict]:
    return {r["metric"]: r for r in C.summary_rows(result)}


def test_the_exact_model_has_no_gap_and_generates_the_exact_mass() -> None:
    ctx = planted_context((QUICKSTART, {}))
    result = C.measure(ctx)
    json.dumps(result)  # the result file is JSON
    rows = rows_by_metric(result)
    assert set(rows) == set(C.DEFINITIONS)
    mass = ex.heldout_mass(QUICKSTART, ex.parse_combinations(QUICKSTART, [QS_COMBO]))
    assert rows["heldout_mass"]["value"] == pytest.approx(mass)
    for gap in ("heldout_gap", "control_gap"):
        assert abs(rows[gap]["value"]) < 1e-9 and rows[gap]["n"] == 80
    assert rows["heldout_logprob"]["value"] == pytest.approx(rows["heldout_logprob_exact"]["value"])
    share = rows["heldout_share"]
    assert share["n"] == 300 and share["ci_low"] < mass < share["ci_high"]  # seeded: fixed
    assert share["value"] > 0.05
    assert rows["heldout_share_train"]["value"] == 0.0  # one parse per string for this combo


def test_a_sampler_of_the_training_stream_never_generates_the_combination() -> None:
    combos = ex.parse_combinations(QUICKSTART, [QS_COMBO])
    ctx = planted_context((QUICKSTART, {"exclude": combos}), n=200)
    rows = rows_by_metric(C.measure(ctx))
    assert rows["heldout_share"]["value"] == 0.0 and rows["heldout_share"]["n"] == 200
    held = planted_context((QUICKSTART, {"require": combos}), n=50)
    assert rows_by_metric(C.measure(held))["heldout_share"]["value"] == 1.0


def test_the_family_does_not_apply_without_combinations() -> None:
    assert C.measure(planted_context((QUICKSTART, {}), compositions=())) is None
    ctx = planted_context((QUICKSTART, {}))
    ctx.settings.compositions = None
    assert C.measure(ctx) is None


def test_posterior_of_an_ambiguous_string_is_its_share_of_parses() -> None:
    combos = ex.parse_combinations(AMBIGUOUS, ["A -> 'a' 'a' under S -> A A"])
    total: dict[tuple, float] = {}
    held: dict[tuple, float] = {}
    for tree, y, p in trees(AMBIGUOUS, 0, 10):
        total[y] = total.get(y, 0.0) + p
        if contains(tree, combos[0]):
            held[y] = held.get(y, 0.0) + p
    strings = [np.array([s - AMBIGUOUS.n_nt + 1 for s in y]) for y in total]
    truth = C._Truth(AMBIGUOUS, combos)
    got = truth.posteriors(strings, truth.log_probs(strings))
    want = np.array([held.get(y, 0.0) / total[y] for y in total])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert ((got > 0) & (got < 1)).any()  # some string is truly ambiguous


def test_cfglab_eval_writes_the_family_and_the_report_shows_it(tmp_path) -> None:
    """`cfglab eval` on a run (an untrained checkpoint) whose config names a combination."""
    pytest.importorskip("torch")
    from cfglab import rundir
    from cfglab.cli import main
    from cfglab.config import load_config
    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config
    from cfglab.train.checkpoint import save_checkpoint

    run = tmp_path / "qs"
    cfg = load_config(
        "configs/quickstart.yaml",
        ["model.block_size=64", "train.threads=1", f"data.exclude={json.dumps([QS_COMBO])}"],
    )
    assert cfg.eval.compositions == [QS_COMBO]
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(QUICKSTART).size))
    rundir.write_run_record(run, cfg, cfg.grammar.load())
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 1.5}) + "\n")
    save_checkpoint(run, 10, model, None, {})
    assert main(["eval", str(run), "--n", "12", "--n-kl", "10", "--cut", "0"]) == 0
    body = json.loads((run / "eval" / "composition.json").read_text())
    got = body["composition"]
    assert got["combinations"] == [QS_COMBO] and got["heldout"]["gap"]["n"] == 10
    assert got["heldout"]["gap"]["value"] < 0  # an untrained model is far below the truth
    assert set(body["definitions"]) == set(C.DEFINITIONS)
    assert main(["report", str(run)]) == 0
    assert "heldout_gap" in (run / "report" / "report.md").read_text()
