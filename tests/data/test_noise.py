"""Corruption noise: identity at rate 0, exact semantics per kind, empirical rates within
binomial sampling error, uniform replacement terminals, seeding, and clear errors."""

import math

import numpy as np
import pytest

from cfglab.data.noise import KINDS, corrupt, corrupt_fraction
from cfglab.errors import ConfigError, VocabError

T = 5


def random_strings(n: int = 400, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, T + 1, size=int(rng.integers(1, 60))) for _ in range(n)]


def within(observed: int, trials: int, p: float, sigmas: float = 4.0) -> bool:
    """Binomial count within `sigmas` standard deviations of its mean."""
    return abs(observed - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p)) + 1e-9


@pytest.mark.parametrize("kind", KINDS)
def test_rate_zero_is_the_identity(kind):
    strings = random_strings()
    out = corrupt(strings, T, 0.0, seed=1, kinds=(kind,))
    assert len(out) == len(strings)
    assert all(np.array_equal(a, b) for a, b in zip(out, strings, strict=True))


def test_substitution_changes_exactly_the_hit_tokens_at_the_rate():
    strings = random_strings(2000)
    rate = 0.15
    out = corrupt(strings, T, rate, seed=2)
    old, new = np.concatenate(strings), np.concatenate(out)
    assert old.shape == new.shape  # substitution keeps every length
    changed = old != new
    assert within(int(changed.sum()), old.size, rate)
    # every replacement is a different terminal, uniform over the other T-1 (chi-square)
    diff = (new[changed] - old[changed]) % T  # 1..T-1
    counts = np.bincount(diff, minlength=T)[1:]
    exp = changed.sum() / (T - 1)
    assert ((counts - exp) ** 2 / exp).sum() < 18.5  # chi2(3) 0.9997 quantile
    assert new.min() >= 1 and new.max() <= T


def test_rate_one_substitutes_every_token():
    two = [s % 2 + 1 for s in random_strings()]  # a 2-terminal alphabet: the other token is forced
    out = corrupt(two, 2, 1.0, seed=3)
    assert all(np.array_equal(o, 3 - s) for o, s in zip(out, two, strict=True))


def test_insert_and_delete_rates_and_shapes():
    strings = random_strings(2000)
    n_tok = sum(len(s) for s in strings)
    ins = corrupt(strings, T, 0.2, seed=4, kinds=("insert",))
    added = sum(len(o) - len(s) for o, s in zip(ins, strings, strict=True))
    assert within(added, n_tok, 0.2)
    for o, s in zip(ins, strings, strict=True):  # the original is a subsequence, in order
        it = iter(o.tolist())
        assert all(tok in it for tok in s.tolist())
    dele = corrupt(strings, T, 0.2, seed=5, kinds=("delete",))
    removed = sum(len(s) - len(o) for o, s in zip(dele, strings, strict=True))
    assert within(removed, n_tok, 0.2, sigmas=5)  # (the never-empty rule shifts it slightly)
    for o, s in zip(dele, strings, strict=True):
        it = iter(s.tolist())
        assert len(o) >= 1 and all(tok in it for tok in o.tolist())
    everything = corrupt(strings, T, 1.0, seed=6, kinds=("delete",))
    assert all(np.array_equal(o, s[:1]) for o, s in zip(everything, strings, strict=True))


def test_kinds_compose_in_order_and_seeding_is_reproducible():
    strings = random_strings()
    a = corrupt(strings, T, 0.3, seed=7, kinds=("substitute", "insert", "delete"))
    b = corrupt(strings, T, 0.3, seed=7, kinds=("substitute", "insert", "delete"))
    c = corrupt(strings, T, 0.3, seed=8, kinds=("substitute", "insert", "delete"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert corrupt([], T, 0.5, seed=0) == []


def test_corrupt_fraction_chooses_rho_of_the_strings():
    strings = random_strings(3000)
    out, chosen = corrupt_fraction(strings, T, fraction=0.1, seed=9, rate=0.5)
    assert within(int(chosen.sum()), len(strings), 0.1)
    for o, s, c in zip(out, strings, chosen, strict=True):
        if not c:
            assert o is s
    changed = sum(not np.array_equal(o, s) for o, s in zip(out, strings, strict=True))
    assert changed <= chosen.sum() and changed > 0.9 * chosen.sum()


def test_bad_arguments_name_the_fix():
    s = random_strings(3)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        corrupt(s, T, 1.5, seed=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        corrupt(s, T, -0.1, seed=0)
    with pytest.raises(ConfigError, match="choose from substitute, insert, delete"):
        corrupt(s, T, 0.1, seed=0, kinds=("swap",))
    with pytest.raises(ConfigError, match="list of kinds"):
        corrupt(s, T, 0.1, seed=0, kinds="insert")
    with pytest.raises(ConfigError, match="at least 2 terminals"):
        corrupt([np.array([1, 1])], 1, 0.1, seed=0)
    with pytest.raises(VocabError, match="not a terminal id"):
        corrupt([np.array([1, 6])], T, 0.1, seed=0)
    with pytest.raises(ConfigError, match="fraction"):
        corrupt_fraction(s, T, fraction=2.0, seed=0)
