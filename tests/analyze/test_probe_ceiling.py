"""The probe family's ceiling: the best accuracy any reader of the whole string can reach on the
ancestor target, printed beside the probes (rows, and a "ceiling" row under "majority"), equal
to brute-force enumeration of every parse tree of the probe's own test strings on a toy
implicit grammar (overlapping bags: a token's hidden terminal is uncertain), and leaving the
family's other numbers unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from cfglab.analyze.context import AnalysisContext
from cfglab.analyze.run import analyze
from cfglab.config import load_config
from cfglab.data.vocab import Vocab
from cfglab.grammar import load
from cfglab.model import build_model, gpt_config
from tests.exact.test_posterior import IMPLICIT, brute_ancestors

TINY = [
    "probe.n_train=16",
    "probe.n_test=12",
    "probe.steps=3",
    "probe.windows=[all, diagonal]",
    "model.preset=tiny",
    "model.block_size=48",
]


def _context(grammar) -> AnalysisContext:
    cfg = load_config(None, TINY)
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(grammar).size), seed=0).eval()
    return AnalysisContext(model, grammar, cfg)


def test_the_implicit_ceiling_equals_brute_force_on_the_probe_test_strings():
    ctx = _context(IMPLICIT)
    (part,) = analyze(ctx, ["probe"]).values()
    p = ctx.cfg.probe
    test = ctx.labelled("probe_test", p.n_test, p.seed).strings()
    n_levels = len(IMPLICIT.levels)
    brute = [brute_ancestors(IMPLICIT, tuple(x)) for x in test]
    want = [
        np.mean(np.concatenate([b[lev].max(axis=1) for b in brute])) for lev in range(1, n_levels)
    ]
    rows = [r for r in part["rows"] if r["metric"] == "probe_ceiling"]
    assert [(r["target"], r["window"], r["level"]) for r in rows] == [
        ("ancestor", "all", lev) for lev in range(1, n_levels)
    ]
    assert np.allclose([r["value"] for r in rows], want, atol=1e-12, rtol=0)
    assert want[-1] < 0.95  # the hidden terminals (the deepest level) really are uncertain
    assert all(r["n"] == p.n_test for r in rows)
    # the ancestor table of window all: a ceiling row right under majority; not elsewhere
    (table,) = [t for t in part["tables"] if t["title"].startswith("ancestor probe (window all")]
    assert [r[0] for r in table["rows"][-2:]] == ["majority", "ceiling"]
    assert table["rows"][-1][1:] == [f"{100 * v:.1f}" for v in want]
    others = [t for t in part["tables"] if t is not table]
    assert others and all(r[0] != "ceiling" for t in others for r in t["rows"])


def test_the_ceiling_changes_no_other_number(monkeypatch):
    """The same analysis with the exact ceiling refused: every other row is identical, and the
    refusal leaves the ceiling out with its reason."""
    from cfglab.errors import ExactError
    from cfglab.exact import posterior

    grammar = load("configs/grammars/quickstart.cfg")
    with_ceiling = analyze(_context(grammar), ["probe"])["probe"]

    def refuse(*args, **kwargs):
        raise ExactError("planted refusal")

    monkeypatch.setattr(posterior, "ancestor_ceiling", refuse)
    without = analyze(_context(grammar), ["probe"])["probe"]
    assert without["result"]["ceiling"]["reason"] == "planted refusal"
    assert not [r for r in without["rows"] if r["metric"] == "probe_ceiling"]
    kept = [r for r in with_ceiling["rows"] if r["metric"] != "probe_ceiling"]
    assert kept == without["rows"]
    # the quickstart grammar is unambiguous at both levels: a reader of the string can be exact
    ceiling = [r["value"] for r in with_ceiling["rows"] if r["metric"] == "probe_ceiling"]
    assert ceiling == pytest.approx([1.0, 1.0], abs=1e-12)
