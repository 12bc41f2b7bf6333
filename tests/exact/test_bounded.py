"""Bounded work in the exact algorithms: chunked sweeps give the same answers as one long
call, and sizes past the limits are refused up front with an ExactError."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cfglab.data.sampler import sample
from cfglab.errors import ExactError
from cfglab.exact import cyk, inside, normal_form, sweep
from cfglab.grammar.builtin import load
from cfglab.grammar.cfg import Grammar
from tests.exact.grammars import HAND_WRITTEN, TINY_LAYERED

AMBIGUOUS = Grammar.from_text("S -> S S [0.3] | 'a' [0.7]")


GRAMMARS = HAND_WRITTEN | TINY_LAYERED


def _strings(g: Grammar, seed: int = 0, max_len: int | None = 60) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    good = sample(g, 12, seed=seed, labels=False, max_len=max_len).strings()
    noise = [rng.integers(1, g.n_t + 1, size=rng.integers(0, 9)) for _ in range(12)]
    return good + noise + [np.zeros(0, np.int64)]


@pytest.mark.parametrize("name", ["recursive", "tiny-unary", "ambiguous"])
def test_tiny_work_budget_changes_no_answer(name, monkeypatch):
    """Every compiled call returns after ~WORK_PER_CALL steps and the sweep resumes where it
    stopped (inside a string, or between strings of a batch): the results must not move."""
    g = GRAMMARS[name]
    xs = _strings(g)
    want = (cyk.judge(g, xs), inside.log_prob(g, xs), inside.next_token_dist(g, xs))
    counts = cyk.count_parses(g, xs)
    monkeypatch.setattr(sweep, "WORK_PER_CALL", 7)
    got = (cyk.judge(g, xs), inside.log_prob(g, xs), inside.next_token_dist(g, xs))
    for a, b in zip(want[0], got[0], strict=True):
        np.testing.assert_array_equal(a, b)
    # bit for bit: log c_m are added in the same order whether a string ran in a batch or alone
    np.testing.assert_array_equal(got[1], want[1])
    for a, b in zip(want[2], got[2], strict=True):
        np.testing.assert_array_equal(b, a)
    assert cyk.count_parses(g, xs) == counts


def test_min_substitutions_in_chunks_is_unchanged(monkeypatch):
    g = HAND_WRITTEN["recursive"]
    xs = [x for x in _strings(g, seed=1) if len(x)]
    want = cyk.min_substitutions(g, xs)
    monkeypatch.setattr(sweep, "WORK_PER_CALL", 5)
    np.testing.assert_array_equal(cyk.min_substitutions(g, xs), want)


def test_judge_is_recognize_and_first_error_in_one_sweep():
    g = load("cfg3f")
    xs = _strings(g, max_len=None)
    ok, err = cyk.judge(g, xs)
    np.testing.assert_array_equal(ok, cyk.recognize(g, xs))
    np.testing.assert_array_equal(err, cyk.first_error(g, xs))


def test_ambiguous_long_string_counts_stay_exact():
    # 2^(n-1) Catalan-many parses of a^n: the chart is quadratic, answers exact
    x = [np.ones(30, np.int64)]
    assert cyk.recognize(AMBIGUOUS, x)[0]
    assert cyk.count_parses(AMBIGUOUS, x)[0] == 1002242216651368  # Catalan(29)


@pytest.mark.parametrize("budget", [None, 300])
def test_chart_growth_inside_an_end_changes_no_answer(budget, monkeypatch):
    """The chart arrays start with room for ~4 cells per token, a^n under S -> S S | a fills
    n(n+1)/2 cells: the sweep stops inside ends many times to have them grown (alone and in a
    batch, with any work budget), and the answers stay the closed forms: Catalan(n-1) parses,
    P = Catalan(n-1) 0.3^(n-1) 0.7^n."""
    if budget:
        monkeypatch.setattr(sweep, "WORK_PER_CALL", budget)
    n = 60
    x = np.ones(n, np.int64)
    catalan = math.comb(2 * (n - 1), n - 1) // n
    cells = sweep.run(normal_form.normal_form(AMBIGUOUS), x, is_prob=False)[4]
    assert len(cells) == n * (n + 1) // 2 > 4 * n + 64  # grown past the first room
    assert cyk.count_parses(AMBIGUOUS, [x]) == [catalan]
    assert cyk.recognize(AMBIGUOUS, [x, x[:7], x[:0]]).tolist() == [True, True, False]
    want = math.log(catalan) + (n - 1) * math.log(0.3) + n * math.log(0.7)
    got = inside.log_prob(AMBIGUOUS, [x[:7], x])  # a batch
    assert got[1] == pytest.approx(want, rel=1e-12)


def test_oversized_tables_and_charts_are_refused_up_front(monkeypatch):
    g = load("cfg3f")
    x = [np.ones(200, np.int64)]
    monkeypatch.setattr(sweep, "MAX_TABLE_BYTES", 10_000)
    with pytest.raises(ExactError, match="tokens"):
        cyk.recognize(g, x)
    with pytest.raises(ExactError, match="table"):
        cyk.min_substitutions(g, x)
    monkeypatch.setattr(sweep, "MAX_TABLE_BYTES", 2 * 1024**3)
    monkeypatch.setattr(sweep, "MAX_CHART_ENTRIES", 1000)
    monkeypatch.setattr(sweep, "WORK_PER_CALL", 1000)
    with pytest.raises(ExactError, match="ambiguous"):
        cyk.recognize(AMBIGUOUS, [np.ones(300, np.int64)])


def test_grammars_too_large_to_binarise_are_refused():
    long_rule = "S -> " + " ".join(f"'t{i}'" for i in range(4000)) + "\n"
    g = Grammar.from_text(long_rule)  # reading and sampling it are fine ...
    assert len(sample(g, 1, seed=0).strings()[0]) == 4000
    with pytest.raises(ExactError, match="binarises to"):  # ... the dense closures are not
        normal_form.normal_form(g)


@pytest.mark.parametrize("n_threads", [2, 3, 40])
@pytest.mark.parametrize("budget", [None, 7])
def test_threads_change_no_answer(n_threads, budget, monkeypatch):
    """Strings cut into one range per thread (more threads than strings included; with a tiny
    work budget, strings that resume inside a thread's range): the same answers, bit for bit,
    as one thread, and rejected strings keep their first error."""
    g = GRAMMARS["recursive"]
    xs = _strings(g, seed=3) + _strings(g, seed=4)
    monkeypatch.setattr(sweep, "threads", lambda n_tokens: 1)
    want = (*cyk.judge(g, xs), inside.log_prob(g, xs))
    assert not want[0].all() and want[0].any()
    if budget:
        monkeypatch.setattr(sweep, "WORK_PER_CALL", budget)
    used = []
    monkeypatch.setattr(sweep, "threads", lambda n_tokens: used.append(n_tokens) or n_threads)
    got = (*cyk.judge(g, xs), inside.log_prob(g, xs))
    assert used  # the threaded path ran
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(b, a)


def test_threads_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert sweep.threads(10**9) == 4
    assert sweep.threads(2 * sweep.MIN_TOKENS_PER_THREAD) == 2  # too little work for four
    assert sweep.threads(100) == 1
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert sweep.threads(10**9) == 1  # a SLURM task or taskset pinned to one core


def test_an_error_in_one_thread_stops_the_others(monkeypatch):
    """A string whose chart outgrows the limit, first in the first of two threads' ranges,
    while the second has ~100 resumable strings: the caller gets the same ExactError as with
    one thread, and the second thread quits at its next call instead of finishing its range."""
    x_big = np.ones(60, np.int64)
    xs = [x_big] + [np.ones(40, np.int64)] * 200
    monkeypatch.setattr(sweep, "WORK_PER_CALL", 300)
    monkeypatch.setattr(sweep, "MAX_CHART_ENTRIES", 1500)  # a^40 fits, a^60 does not
    calls = []
    real_run = sweep.run
    monkeypatch.setattr(sweep, "run", lambda *a, **k: calls.append(1) or real_run(*a, **k))
    monkeypatch.setattr(sweep, "threads", lambda n_tokens: 2)
    with pytest.raises(ExactError, match="string 0:"):
        cyk.recognize(AMBIGUOUS, xs)
    assert len(calls) < 100  # the second thread quit before the end of its 100 strings
