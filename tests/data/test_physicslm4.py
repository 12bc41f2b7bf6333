"""The authors' stream, seed for seed: golden strings, a plain-recursion oracle, labels equal to
cfglab's tree labelling of the same derivation, and exact resumption from a saved state."""

from __future__ import annotations

import functools
import json
import random

import numpy as np
import pytest

from cfglab.data.physicslm4 import PhysicsLM4Stream, sample_physicslm4
from cfglab.errors import SamplingError
from cfglab.exact.cyk import Tree
from cfglab.grammar import Grammar, load

RECURSIVE = Grammar.from_text("S -> 'a' S 'b' | 'c' | A 'd'\nA -> 'e' | S 'e'")  # not layered


def authors_tree(g: Grammar, rng: random.Random, sym: int = 0, start: int = 0) -> Tree | int:
    """The authors' CFG_Node.generate as plain recursion that records the tree: one
    randint(0, k-1) per nonterminal node in pre-order, children left to right."""
    if g.is_terminal(sym):
        return sym - g.n_nt + 1
    rules = g.rules_of[sym]
    rhs = g.rules[rules[rng.randint(0, len(rules) - 1)]].rhs
    children, pos = [], start
    for s in rhs:
        child = authors_tree(g, rng, s, pos)
        children.append(child)
        pos = child.end if isinstance(child, Tree) else pos + 1
    return Tree(sym, start, pos, tuple(children))


def leaves(tree: Tree) -> list[int]:
    return [t for c in tree.children for t in (leaves(c) if isinstance(c, Tree) else [c])]


@pytest.mark.parametrize(
    "name,length,head",
    [("cfg3f", 305, "3 3 3 3 1 1 2 1 3 1 2 3"), ("cfg3k", 625, "1 3 1 1 3 1 2 1 3 1 1 1")],
)
def test_golden_first_strings_of_seed_7711(name, length, head):
    for labels in (True, False):
        b = sample_physicslm4(load(name), 1, 7711, labels=labels)
        assert len(b.ids) == length
        assert " ".join(map(str, b.ids[:12].tolist())) == head


@pytest.mark.parametrize("name", ["cfg3b", "cfg3k", "recursive"])
def test_stream_and_labels_equal_the_recursive_oracle(name):
    """20 consecutive strings of one stream: tokens, spans and per-level labels all equal the
    recorded tree's (Tree.labels is cfglab's definition of the labels of a tree)."""
    g = RECURSIVE if name == "recursive" else load(name)
    rng = random.Random(11)
    trees = [authors_tree(g, rng) for _ in range(20)]
    b = PhysicsLM4Stream(g, 11).take(20)
    assert b.lengths.tolist() == [t.end for t in trees]
    for i, (tree, spans) in enumerate(zip(trees, b.spans, strict=True)):
        lo, hi = b.offsets[i], b.offsets[i + 1]
        assert b.ids[lo:hi].tolist() == leaves(tree)
        assert np.array_equal(spans, tree.spans())
        if g.levels is not None:
            anc, sub, bnd = tree.labels(g)
            assert np.array_equal(b.ancestors[:, lo:hi], anc)
            assert np.array_equal(b.subtree[:, lo:hi], sub)
            assert np.array_equal(b.is_boundary[:, lo:hi], bnd)
    if g.levels is None:
        assert b.ancestors is None
    else:
        assert b.ancestors.dtype == np.int16 and b.subtree.dtype == np.int32
    unlabelled = PhysicsLM4Stream(g, 11).take(20, labels=False)
    assert np.array_equal(unlabelled.ids, b.ids) and unlabelled.spans is None


def test_the_10000th_string_is_the_same_after_a_resume():
    g = load("cfg3f")
    whole = PhysicsLM4Stream(g, 7711)
    whole.take(9_999, labels=False)
    want = whole.take(1).ids
    assert whole.n_drawn == 10_000

    first = PhysicsLM4Stream(g, 7711)
    first.take(4_321, labels=False)
    state = json.loads(json.dumps(first.getstate()))  # as a checkpoint's state.json holds it
    resumed = PhysicsLM4Stream(g, 0)  # any seed: the state replaces it
    resumed.setstate(state)
    resumed.take(10_000 - 4_321 - 1, labels=False)
    assert resumed.n_drawn == 9_999
    assert np.array_equal(resumed.take(1).ids, want)
    # and in the original process, state restored mid-stream gives the same continuation
    again = first.take(5, labels=True)
    first.setstate(state)
    assert np.array_equal(first.take(5).ids, again.ids)


def test_errors_name_the_fix():
    weighted = Grammar.from_text("S -> 'a' [0.3] | 'b' S [0.7]")
    with pytest.raises(SamplingError, match="fast sampler"):
        PhysicsLM4Stream(weighted, 0)
    s = PhysicsLM4Stream(load("cfg3b"), 0)
    with pytest.raises(SamplingError, match="getstate"):
        s.setstate({"rng": [3, [1, 2], None]})
    with pytest.raises(SamplingError, match="getstate"):
        s.setstate({**s.getstate(), "rng": [3, [1, 2], None]})
    with pytest.raises(SamplingError, match="n >= 0"):
        s.take(-1)
    assert len(s.take(0)) == 0


# ---- cfglab sample --compat physicslm4 -------------------------------------------------------
def test_cli_prints_the_golden_strings(capsys):
    from cfglab.cli import main

    assert main(["sample", "cfg3f", "--compat", "physicslm4", "--seed", "7711", "-n", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and len(lines[0].split()) == 305
    assert lines[0].startswith("3 3 3 3 1 1 2 1 3 1 2 3 ")
    assert lines[1] == " ".join(map(str, sample_physicslm4(load("cfg3f"), 2, 7711).strings()[1]))
    assert main(["sample", "cfg3k", "--compat", "physicslm4", "--seed", "7711", "-n", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.split()) == 625 and line.startswith("1 3 1 1 3 1 2 1 3 1 1 1 ")


def test_cli_labels_and_errors(capsys, tmp_path):
    from cfglab.cli import main

    assert main(["sample", "cfg3b", "--compat", "physicslm4", "-n", "2", "--labels"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    g = load("cfg3b")
    b = sample_physicslm4(g, 2, 0)
    last = rows[1]
    assert last["tokens"] == [g.terminals[t - 1] for t in b.strings()[1]]
    assert last["boundaries"][-1] == b.is_boundary[-1, b.offsets[1] :].astype(int).tolist()
    assert last["ancestors"][1][0] == g.nonterminals[g.levels[1][b.ancestors[1, b.offsets[1]]]]
    path = tmp_path / "r.cfg"
    path.write_text(RECURSIVE.to_text())
    assert main(["sample", str(path), "--compat", "physicslm4", "-n", "1", "--labels"]) == 0
    assert json.loads(capsys.readouterr().out)["spans"][0][0] == "S"
    assert main(["sample", "cfg3b", "--compat", "physicslm4", "--max-len", "9"]) == 2
    assert "drop one of them" in capsys.readouterr().err


# ---- the fast sampler's guards (issue 27, class 10) --------------------------------------------
@functools.cache
def deep_grammar() -> Grammar:
    """The paper's recipe with 300 levels: mean length ~1e120 tokens, yet a valid grammar."""
    from cfglab.grammar import random_cfg

    return random_cfg(sizes=(1, *[3] * 299), seed=0)


def test_negative_seeds_are_refused_not_folded():
    """random.Random(-5) is random.Random(5): a negative seed would silently repeat another."""
    assert random.Random(-5).random() == random.Random(5).random()  # why it matters
    for seed in (-5, -1, 1.5, True):
        with pytest.raises(SamplingError, match=">= 0"):
            PhysicsLM4Stream(load("cfg3b"), seed)
    assert len(PhysicsLM4Stream(load("cfg3b"), 0).take(1)) == 1


def test_astronomically_long_grammars_and_runaway_strings_stop(monkeypatch):
    with pytest.raises(SamplingError, match="too long for the physicslm4 sampler"):
        PhysicsLM4Stream(deep_grammar(), 0)
    import cfglab.data.sampler as fast

    monkeypatch.setattr(fast, "_MAX_BATCH_NODES", 50)  # the fast sampler's budget, lowered
    for labels in (False, True):
        with pytest.raises(SamplingError, match="grew past 50 tree nodes"):
            PhysicsLM4Stream(load("cfg3f"), 0).take(3, labels=labels)  # ~300 nodes a string


def test_parts_are_the_sample_in_order(monkeypatch):
    from cfglab.data import physicslm4 as P

    monkeypatch.setattr(P, "_PART_NODES", 3000)  # ~5 cfg3f strings a part
    g = load("cfg3f")
    parts = list(P.sample_physicslm4_parts(g, 23, 7711))
    whole = sample_physicslm4(g, 23, 7711)
    assert len(parts) > 3 and sum(len(p) for p in parts) == 23
    got = [s.tolist() for p in parts for s in p.strings()]
    assert got == [s.tolist() for s in whole.strings()]
    anc = np.concatenate([p.ancestors for p in parts], axis=1)
    np.testing.assert_array_equal(anc, whole.ancestors)
    with pytest.raises(SamplingError, match="n >= 0"):
        P.sample_physicslm4_parts(g, -1, 0)  # checked before the first draw, not lazily


def test_cli_streams_and_refuses_in_one_line(tmp_path, capsys):
    """`-n 100000000 | head` prints at once (in parts) and ends quietly when head closes the
    pipe; a grammar the authors' sampler cannot draw is one line, before any output."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cfglab.cli import main

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfglab", "sample", "cfg3f", "--compat", "physicslm4"]
        + ["-n", "100000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    first = [proc.stdout.readline() for _ in range(3)]
    proc.stdout.close()  # as head does
    _, err = proc.communicate(timeout=120)  # unstreamed, 10^8 strings would take hours
    assert all(len(line.split()) > 10 for line in first) and err == b""
    deep = tmp_path / "deep.cfg"
    deep.write_text(deep_grammar().to_text())
    weighted = tmp_path / "w.cfg"
    weighted.write_text("S -> 'a' [0.3] | 'b' S [0.7]\n")
    out = tmp_path / "out.txt"
    for grammar, phrase in ((deep, "too long"), (weighted, "non-uniform")):
        argv = ["sample", str(grammar), "--compat", "physicslm4", "-n", "5", "-o", str(out)]
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and phrase in captured.err
        assert not out.exists()
    assert main(["sample", "cfg3b", "--compat", "physicslm4", "--seed", "-1"]) == 2
    assert "argument --seed: -1" in capsys.readouterr().err


def test_weighted_grammar_refused_when_the_config_loads(tmp_path, capsys):
    """data.sampler physicslm4 with a PCFG: one line from train, run and data before any
    work (no run folder, no dataset), not a failure at training start."""
    from pathlib import Path

    from cfglab.cli import main

    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    weighted = tmp_path / "w.cfg"
    weighted.write_text("S -> 'a' [0.3] | 'b' S [0.7]\n")
    sets = ["--set", "data.sampler=physicslm4", f"grammar.name={weighted}"]
    for argv in (
        ["train", str(quickstart), "--out", str(tmp_path / "run"), *sets],
        ["run", str(quickstart), "--out", str(tmp_path / "run"), *sets],
        ["data", str(quickstart), "--out", str(tmp_path / "ds"), "-n", "5", *sets],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "data.sampler physicslm4" in err, err
        assert "non-uniform" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["w.cfg"]
