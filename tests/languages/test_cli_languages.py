"""The exact commands on a language: `cfglab parse SPEC FILE` and `cfglab prob SPEC FILE [--next]`
take a language spec where a grammar goes, and answer as the independent oracles do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cfglab.cli import main
from cfglab.grammar import load
from cfglab.languages import LANGUAGES
from tests.languages.oracles import ORACLES

SPECS = {  # small parameters: every string of the file is scored by the oracle too
    "anbncn": ("anbncn n_max=5 ratio=0.8", {"n_max": 5, "ratio": 0.8}),
    "copy": ("copy m_max=4 alphabet=3", {"m_max": 4, "alphabet": 3}),
    "cross_serial": ("cross_serial n_max=3 m_max=2", {"n_max": 3, "m_max": 2}),
}


def lines_for(lang, seed: int) -> list[str]:
    """Sampled sentences, each also with one letter changed, and an empty line."""
    rng = np.random.default_rng(seed)
    out = []
    for x in lang.sample(15, seed).strings():
        words = [lang.terminals[t - 1] for t in x]
        out.append(" ".join(words))
        k = rng.integers(len(words))
        words[k] = lang.terminals[(lang.terminals.index(words[k]) + 1) % lang.n_t]
        out.append(" ".join(words))
    return [*out, ""]


@pytest.mark.parametrize("name", list(LANGUAGES))
def test_parse_and_prob_on_a_language_answer_as_the_oracle(name, tmp_path, capsys):
    spec, params = SPECS[name]
    lang, oracle = load(spec), ORACLES[name](**params)
    lines = lines_for(lang, seed=len(name))
    path = tmp_path / "strings.txt"
    path.write_text("\n".join(lines) + "\n")
    letters = ["".join(line.split()) for line in lines]

    assert main(["parse", spec, str(path)]) == 0
    verdicts = capsys.readouterr().out.splitlines()
    members = [bool(s) and oracle.member(s) for s in letters]
    assert [v == "accepted" for v in verdicts[:-1]] == members
    assert verdicts[-1] == f"accepted {sum(members)} of {len(lines)}"
    assert 0 < sum(members) < len(lines)  # both verdicts occur

    assert main(["prob", spec, str(path)]) == 0
    got = [float(v) for v in capsys.readouterr().out.split()]
    for s, lp in zip(letters, got, strict=True):
        p = oracle.prob(s) if s else 0.0
        assert (lp == -math.inf) if p == 0 else lp == pytest.approx(math.log(p), rel=1e-9)


def test_next_token_rows_of_a_language_sum_the_oracles_prefix_masses(tmp_path, capsys):
    """`prob --next` on a^n b^n c^n: the row after each prefix of a sentence is the ratio of
    the oracle's prefix masses (P(prefix + t) / P(prefix), EOS: P(prefix) as a sentence)."""
    spec, params = SPECS["anbncn"]
    oracle = ORACLES["anbncn"](**params)
    (tmp_path / "s.txt").write_text("a a b b c c\n")
    assert main(["prob", spec, str(tmp_path / "s.txt"), "--next"]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    sentences = [
        "a" * n + "b" * n + "c" * n for n in range(1, params["n_max"] + 1)
    ]  # every member with positive probability
    mass = {}
    for s in sentences:
        for k in range(len(s) + 1):
            mass[s[:k]] = mass.get(s[:k], 0.0) + oracle.prob(s)
    for k, row in enumerate(table):
        prefix = "aabbcc"[:k]
        eos = oracle.prob(prefix) / mass[prefix] if prefix else 0.0
        nxt = [mass.get(prefix + t, 0.0) / mass[prefix] for t in "abc"]
        np.testing.assert_allclose([float(v) for v in row[2:]], [eos, *nxt], atol=1e-6)


def test_the_grammar_commands_take_a_language_or_refuse_it_in_one_line(capsys):
    assert main(["grammar", "check", "copy m_max=4"]) == 0
    out = capsys.readouterr().out
    assert "a language beyond context-free" in out and "length mean 5 " in out  # (1+4)/2 * 2
    assert main(["grammar", "implicit", "copy", "--tokens", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "language beyond context-free" in err[0]
