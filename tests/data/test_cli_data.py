"""`cfglab sample` and `cfglab corrupt`: output formats, agreement with the library, exit codes."""

import json

from cfglab.cli import main
from cfglab.data.sampler import sample
from cfglab.grammar import Grammar, load
from tests.oracles import nltk_chart_accepts, nltk_grammar


def test_sample_prints_grammatical_strings(capsys):
    assert main(["sample", "cfg3b", "-n", "3", "--seed", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    g = load("cfg3b")
    want = [" ".join(g.terminals[t - 1] for t in s) for s in sample(g, 3, 4).strings()]
    assert lines == want  # the same strings as the library, terminals separated by one space
    ng = nltk_grammar(g)
    assert nltk_chart_accepts(ng, lines[0].split())


def test_sample_labels_json_layered(capsys):
    assert main(["sample", "cfg3f", "-n", "2", "--seed", "1", "--labels", "--max-len", "300"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    g = load("cfg3f")
    batch = sample(g, 2, 1, max_len=300)
    assert len(rows) == 2
    for row, toks, i in zip(rows, batch.strings(), range(2), strict=True):
        assert row["tokens"] == [g.terminals[t - 1] for t in toks] and len(toks) <= 300
        a, b = batch.offsets[i], batch.offsets[i + 1]
        assert len(row["ancestors"]) == len(g.levels) == len(row["boundaries"])
        for lev, names in enumerate(row["ancestors"]):
            ids = batch.ancestors[lev, a:b]
            assert names == [g.nonterminals[g.levels[lev][k]] for k in ids]
            assert row["boundaries"][lev] == batch.is_boundary[lev, a:b].astype(int).tolist()
        assert row["ancestors"][0] == [g.nonterminals[0]] * len(toks)
        assert row["boundaries"][-1][-1] == 1


def test_sample_labels_json_spans_for_general_grammars(tmp_path, capsys):
    path = tmp_path / "g.cfg"
    path.write_text("S -> A S [0.3] | A [0.7]\nA -> 'x' [0.5] | 'y' 'x' [0.5]\n")
    out = tmp_path / "s.jsonl"
    assert main(["sample", str(path), "-n", "5", "--labels", "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    g = Grammar.from_text(path.read_text())
    for row, spans in zip(rows, sample(g, 5, 0).spans, strict=True):
        assert row["spans"] == [[g.nonterminals[nt], s, e] for nt, s, e in spans.tolist()]
        assert row["spans"][0] == ["S", 0, len(row["tokens"])]


def test_sample_errors_exit_2(capsys):
    assert main(["sample", "no-such-grammar"]) == 2
    assert "unknown grammar" in capsys.readouterr().err
    assert main(["sample", "cfg3b", "--max-len", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: max_len=5") and "Traceback" not in err


def test_corrupt_round_trip(tmp_path, capsys):
    src = tmp_path / "s.txt"
    assert main(["sample", "cfg3b", "-n", "20", "--seed", "2", "-o", str(src)]) == 0
    clean = [line.split() for line in src.read_text().splitlines()]
    assert main(["corrupt", str(src), "--rate", "0.2", "--seed", "3", "--grammar", "cfg3b"]) == 0
    noisy = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert len(noisy) == 20 and all(len(a) == len(b) for a, b in zip(noisy, clean, strict=True))
    pairs = zip(noisy, clean, strict=True)
    flips = sum(x != y for a, b in pairs for x, y in zip(a, b, strict=True))
    total = sum(len(a) for a in clean)
    assert abs(flips / total - 0.2) < 0.03 and {t for a in noisy for t in a} <= {"1", "2", "3"}
    # without --grammar the terminal set is the tokens seen; same ids, so the same output
    assert main(["corrupt", str(src), "--rate", "0.2", "--seed", "3"]) == 0
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == noisy
    assert main(["corrupt", str(src), "--rate", "0.5", "--kinds", "insert", "delete"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20


def test_corrupt_errors_exit_2(tmp_path, capsys):
    src = tmp_path / "s.txt"
    src.write_text("1 2 3\n3 x 1\n")
    assert main(["corrupt", str(src), "--rate", "0.1", "--grammar", "cfg3b"]) == 2
    assert "s.txt:2: unknown token 'x'" in capsys.readouterr().err
    assert main(["corrupt", str(src), "--rate", "1.5"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert main(["corrupt", str(tmp_path / "missing.txt"), "--rate", "0.1"]) == 2
    assert "no such file" in capsys.readouterr().err
    one = tmp_path / "one.txt"
    one.write_text("a a a\n")
    assert main(["corrupt", str(one), "--rate", "0.1"]) == 2
    assert "at least 2 terminals" in capsys.readouterr().err
