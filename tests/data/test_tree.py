"""Per-token tree tables by depth (cfglab.data.tree): the docstring's worked example by hand, the
sampler's per-level labels of layered grammars, a recursive walk of the spans of any grammar,
and the authors' sampler's span depths."""

from __future__ import annotations

import numpy as np
import pytest

from cfglab.data.physicslm4 import PhysicsLM4Stream
from cfglab.data.sampler import sample
from cfglab.data.tree import shallowest_end, tree_labels
from cfglab.grammar import Grammar, load

TOY = """
S -> NP VP
NP -> 'the' N
N -> 'dog'
VP -> 'ran'
"""
ENGLISH = "configs/grammars/english.cfg"


def test_the_worked_example_by_hand():
    g = Grammar.from_text(TOY)
    batch = sample(g, 1, 0, labels=True)
    tl = tree_labels(g, batch)
    S, NP, N, VP = (g.nonterminals.index(x) for x in ("S", "NP", "N", "VP"))
    assert tl.ancestor.tolist()[:3] == [[S, S, S], [NP, NP, VP], [-1, N, -1]]
    assert tl.is_boundary.tolist()[:3] == [[0, 0, 1], [0, 1, 1], [0, 1, 0]]
    assert tl.subtree.tolist()[1] == [0, 0, 1] and tl.subtree.tolist()[2] == [-1, 0, -1]
    assert tl.token_depth.tolist() == [2, 3, 2]
    assert tl.end_label.tolist() == [g.n_nt, N, VP]  # 'the' ends nothing; 'dog' ends N and NP
    assert tl.ends[NP].tolist() == [0, 1, 0] and tl.ends[S].tolist() == [0, 0, 1]


@pytest.mark.parametrize("name", ["cfg3b", "cfg3f", "configs/grammars/quickstart.cfg"])
def test_layered_grammars_get_the_sampler_s_levels(name):
    g = load(name)
    batch = sample(g, 60, 5, labels=True)
    tl = tree_labels(g, batch)
    anc = np.stack([np.array(lev)[batch.ancestors[i]] for i, lev in enumerate(g.levels)])
    assert np.array_equal(tl.ancestor, anc)
    assert np.array_equal(tl.subtree, batch.subtree)
    assert np.array_equal(tl.is_boundary, batch.is_boundary)
    assert (tl.token_depth == len(g.levels)).all()


def _walk(spans: np.ndarray, n_tokens: int, n_nt: int, max_depth: int):
    """The tables of one string by a plain recursive reading of its pre-order spans."""
    ancestor = np.full((max_depth, n_tokens), -1)
    ends = np.zeros((n_nt, n_tokens), dtype=bool)
    end_label = np.full(n_tokens, n_nt)
    depth_of_end = np.full(n_tokens, -1)
    stack: list[int] = []  # ends of the open ancestors
    for nt, start, end in spans.tolist():
        while stack and start >= stack[-1]:
            stack.pop()
        depth = len(stack)
        stack.append(end)
        if depth < max_depth:
            ancestor[depth, start:end] = nt
        ends[nt, end - 1] = True
        if depth > depth_of_end[end - 1]:
            depth_of_end[end - 1], end_label[end - 1] = depth, nt
    return ancestor, ends, end_label


def test_any_grammar_equals_a_recursive_walk_of_its_spans():
    g = load(ENGLISH)
    batch = sample(g, 200, 3, labels=True, max_len=40)
    tl = tree_labels(g, batch)
    off = batch.offsets
    for i, spans in enumerate(batch.spans):
        lo, hi = off[i], off[i + 1]
        ancestor, ends, end_label = _walk(spans, hi - lo, g.n_nt, tl.n_levels)
        assert np.array_equal(tl.ancestor[:, lo:hi], ancestor)
        assert np.array_equal(tl.ends[:, lo:hi], ends)
        assert np.array_equal(tl.end_label[lo:hi], end_label)
        covering = [((spans[:, 1] <= t) & (t < spans[:, 2])).sum() for t in range(hi - lo)]
        assert tl.token_depth[lo:hi].tolist() == covering


@pytest.mark.parametrize("name", ["cfg3b", "configs/grammars/quickstart.cfg"])
def test_a_layered_grammar_s_levels_equal_its_spans(name):
    """The per-level fast path and the spans give the same tables (the spans' path is forced
    by hiding the per-level labels)."""
    import dataclasses

    g = load(name)
    batch = sample(g, 40, 9, labels=True)
    fast = tree_labels(g, batch)
    bare = dataclasses.replace(batch, ancestors=None, subtree=None, is_boundary=None)
    slow = tree_labels(g, bare)
    for field in ("ancestor", "subtree", "is_boundary", "token_depth", "end_label", "ends"):
        assert np.array_equal(getattr(fast, field), getattr(slow, field)), field


def test_the_authors_sampler_gives_the_same_span_depths():
    g = load("cfg3b")
    batch = PhysicsLM4Stream(g, 7).take(5, labels=True)
    tl = tree_labels(g, batch)
    anc = np.stack([np.array(lev)[batch.ancestors[i]] for i, lev in enumerate(g.levels)])
    assert np.array_equal(tl.ancestor, anc) and np.array_equal(tl.is_boundary, batch.is_boundary)


def test_shallowest_end():
    is_boundary = np.array([[0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 1]], dtype=bool)
    assert shallowest_end(is_boundary).tolist() == [-1, 2, -1, 1]
