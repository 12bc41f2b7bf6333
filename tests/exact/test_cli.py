"""`cfglab parse` and `cfglab prob` on files of strings: verdicts, probabilities, errors."""

from __future__ import annotations

import json

import numpy as np

from cfglab.cli import main
from cfglab.data.sampler import sample
from cfglab.exact import cyk, inside
from cfglab.grammar.builtin import load


def _write_strings(tmp_path, g, strings):
    path = tmp_path / "strings.txt"
    path.write_text("\n".join(" ".join(g.terminals[t - 1] for t in x) for x in strings) + "\n")
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


def test_blank_lines_are_empty_strings_so_outputs_stay_aligned(tmp_path, capsys):
    """Output line k answers input line k: a blank line is the empty string (never a
    sentence, log P = -inf), not skipped."""
    g = load("cfg3f")
    x = " ".join(g.terminals[t - 1] for t in sample(g, 1, seed=0, labels=False).strings()[0])
    path = tmp_path / "s.txt"
    path.write_text(f"\n{x}\n   \n{x}\n")
    assert main(["parse", "cfg3f", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == [
        "rejected",
        "accepted",
        "rejected",
        "accepted",
    ]
    assert "blank line" in lines[0] and lines[-1] == "accepted 2 of 4"
    assert main(["parse", "cfg3f", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows[:4]] == [1, 2, 3, 4] and rows[0]["length"] == 0
    assert main(["prob", "cfg3f", str(path)]) == 0
    values = capsys.readouterr().out.split()
    assert values[0] == values[2] == "-inf" and float(values[1]) < 0


def test_prob_next_rows_split_into_fields(tmp_path, capsys):
    """Every row of --next splits on whitespace into k, the next token and T+1 numbers, also
    from position 100 on (where the index once ran into '<eos>')."""
    g = load("cfg3f")
    x = sample(g, 1, seed=0, labels=False).strings()[0]
    path = tmp_path / "s.txt"
    path.write_text(" ".join(g.terminals[t - 1] for t in x) + "\n")
    assert main(["prob", "cfg3f", str(path), "--next"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:3] == ["k", "next", "<eos>"] and len(header) == g.n_t + 3
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == len(x) + 1 and len(x) > 100
    for k, row in enumerate(rows):
        assert len(row) == len(header) and int(row[0]) == k
        assert row[1] == (g.terminals[x[k] - 1] if k < len(x) else "<eos>")
        assert abs(sum(float(v) for v in row[2:]) - 1) < 1e-5  # printed to 6 digits


def test_prob_next_prints_what_a_format_per_number_prints(tmp_path, capsys):
    """The --next tables (one %-format per string) hold the text that formatting every field
    on its own gives, on valid, corrupted, blank and one-token lines of two grammars."""
    for name in ("cfg3f", "cfg3e1"):
        g = load(name)
        good = sample(g, 2, seed=3, labels=False).strings()
        bad = [x.copy() for x in good]
        for x in bad:
            x[len(x) // 3] = x[len(x) // 3] % g.n_t + 1
        strings = good + bad + [np.zeros(0, np.int64), good[0][:1]]
        path = _write_strings(tmp_path, g, strings)
        assert main(["prob", name, path, "--next"]) == 0
        want = []
        header = "k    next  " + " ".join(f"{c:>10}" for c in ["<eos>", *g.terminals])
        lps, dists = inside.log_prob(g, strings), inside.next_token_dist(g, strings)
        for line_no, (x, lp, rows) in enumerate(zip(strings, lps, dists, strict=True), 1):
            want += [f"# line {line_no}: log P = {lp:.10g}", header]
            for k, row in enumerate(rows):
                nxt = g.terminals[x[k] - 1] if k < len(x) else "<eos>"
                want.append(f"{k:<4} {nxt:>5}  " + " ".join(f"{q:>10.6g}" for q in row))
        assert capsys.readouterr().out == "\n".join(want) + "\n"
