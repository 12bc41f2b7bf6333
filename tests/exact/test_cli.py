"""`cfglab parse` and `cfglab prob` on files of strings: verdicts, probabilities, errors."""

from __future__ import annotations

import numpy as np

from cfglab.cli import main
from cfglab.data.sampler import sample
from cfglab.exact import cyk, inside
from cfglab.grammar.builtin import load


def _write_strings(tmp_path, g, strings):
    path = tmp_path / "strings.txt"
    path.write_text("\n".join(" ".join(g.terminals[t - 1] for t in x) for x in strings) + "\n\n")
    return str(path)


def test_parse_and_prob_commands(tmp_path, capsys):
    g = load("cfg3f")
    good = sample(g, 3, seed=0, labels=False).strings()
    bad = [x.copy() for x in good]
    for x in bad:
        x[len(x) // 2] = x[len(x) // 2] % 3 + 1
    strings = good + bad
    path = _write_strings(tmp_path, g, strings)
    ok = cyk.recognize(g, strings)
    assert main(["parse", "cfg3f", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line == "accepted" for line in lines[:-1]] == ok.tolist()
    assert lines[-1] == f"accepted {ok.sum()} of {len(strings)}"
    assert main(["prob", "cfg3f", path]) == 0
    values = [float(v) for v in capsys.readouterr().out.split()]
    np.testing.assert_allclose(values, inside.log_prob(g, strings), rtol=1e-9)
    assert main(["prob", "cfg3f", path, "--next"]) == 0
    out = capsys.readouterr().out
    assert out.count("# line") == len(strings) and "<eos>" in out


def test_parse_names_the_line_of_an_unknown_token(tmp_path, capsys):
    path = tmp_path / "s.txt"
    path.write_text("1 2 3\n\n1 x 2\n")
    assert main(["parse", "cfg3f", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error:") and "s.txt:3:" in err and "'x'" in err
    assert main(["parse", "cfg3f", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
