"""Metadata conditioning's data side (cfglab.data.metadata) against independent oracles: the rule
choices read off the sampler's spans equal those of the CYK parse tree of an unambiguous grammar
(cfglab.grammar.condition.choices_of); every metadata block in the training stream names rules
the string's tree made (CYK on condition(g, m), itself checked by brute force in
tests/grammar/test_condition.py); the carriers' share; the clean strings and the stream without
the block unchanged; the loss mask; the exact distribution given metadata with unnamed depths
against every tree enumerated; the probe target."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from cfglab.data import metadata as md
from cfglab.data.dataset import FreshStream, pack
from cfglab.data.sampler import sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import ConfigError
from cfglab.exact import cyk, inside
from cfglab.grammar import Grammar, load
from cfglab.grammar.condition import choices_of, condition
from cfglab.train.objectives import IGNORE, NextToken
from tests.grammar.test_condition import LAYERED, MIXED, trees

# every rule starts with its own terminal, so every string has one parse (the sampled tree)
POLISH = Grammar.from_text(
    """
S -> 'x' A B [0.5] | 'y' B A [0.5]
A -> 'a' [0.5] | 'p' A B [0.3] | 'q' B [0.2]
B -> 'b' [0.6] | 'r' A [0.4]
""",
    name="polish",
)
QUICKSTART = load("configs/grammars/quickstart.cfg")


def _tree_depth(tree) -> int:
    kids = [c for c in tree.children if not isinstance(c, int)]
    return 1 + max((_tree_depth(c) for c in kids), default=0)


def test_rule_choices_equal_the_parse_tree_of_an_unambiguous_grammar() -> None:
    batch = sample(POLISH, 300, 4, labels=True)
    got = md.rule_choices(POLISH, batch, 3)
    parsed = cyk.parse(POLISH, batch.strings())
    deep = 0
    for choices, tree in zip(got, parsed, strict=True):
        want = choices_of(POLISH, tree, 3)  # [] for the depths below a shallow tree
        assert choices == want
        deep += _tree_depth(tree) >= 3
    assert deep > 50  # the depths read are really there in many strings


@pytest.mark.parametrize("g", [LAYERED, MIXED, QUICKSTART], ids=["layered", "mixed", "qs"])
def test_each_strings_choices_make_a_tree_of_it(g) -> None:
    """On ambiguous grammars the tree is not recoverable from the string, but the string must be
    in the language of g given its choices."""
    batch = sample(g, 200, 7, labels=True)
    for x, choices in zip(batch.strings(), md.rule_choices(g, batch, 2), strict=True):
        assert cyk.recognize(condition(g, choices), [x])[0]


def _segments(stream: np.ndarray, eos: int) -> list[np.ndarray]:
    """The BOS ... EOS segments of a window stream (the last, cut one dropped)."""
    out, start = [], None
    for i, tok in enumerate(stream):
        if tok == BOS:
            start = i
        elif tok == eos and start is not None:
            out.append(stream[start + 1 : i])
            start = None
    return out


def _decode(meta: md.Metadata, block: np.ndarray) -> dict[int, list[int]]:
    named: dict[int, list[int]] = defaultdict(list)
    for tok in block:
        depth, j = divmod(int(tok) - meta.first_id, meta.n_rules)
        named[depth].append(j)
    return named


def test_every_metadata_block_names_the_rules_of_its_strings_tree() -> None:
    meta = md.Metadata(QUICKSTART, (0, 1), 0.5)
    vocab = Vocab.from_grammar(QUICKSTART)
    fs = FreshStream(QUICKSTART, 129, 8, seed=3, metadata=meta)
    carried = plain = 0
    for step in range(4):
        for window in fs.batch_np(step):
            for seg in _segments(window, vocab.eos):
                is_meta = seg >= meta.first_id
                k = int(is_meta.sum())
                assert is_meta[:k].all() and not is_meta[k:].any()  # a block right after BOS
                x = seg[k:]
                assert ((x >= 1) & (x <= QUICKSTART.n_t)).all()
                if k == 0:
                    plain += 1
                    continue
                carried += 1
                named = _decode(meta, seg[:k])
                assert sorted(named) == [0, 1] and len(named[0]) == 1
                # depth 1 names one rule per nonterminal the root's rule put there
                root_rule = QUICKSTART.rules[QUICKSTART.rules_of[0][named[0][0]]]
                assert len(named[1]) == len(root_rule.rhs)
                assert cyk.recognize(condition(QUICKSTART, [named[0], named[1]]), [x])[0]
    assert carried > 50 and plain > 50


def test_the_clean_strings_are_the_streams_without_metadata() -> None:
    """The same draws in the same order: metadata only inserts tokens (so fewer strings fit)."""
    meta = md.Metadata(QUICKSTART, (1,), 0.9)
    with_meta = FreshStream(QUICKSTART, 129, 8, seed=11, metadata=meta).step_strings(2)[0]
    without = FreshStream(QUICKSTART, 129, 8, seed=11).step_strings(2)[0]
    a, b = with_meta.strings(), without.strings()
    assert 0 < len(a) < len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b[: len(a)], strict=True))


def test_without_metadata_the_stream_is_todays() -> None:
    batch = sample(QUICKSTART, 50, 1, labels=False)
    eos = Vocab.from_grammar(QUICKSTART).eos
    assert np.array_equal(md.pack_with_metadata(batch, eos, [None] * 50), pack(batch, eos))
    a = FreshStream(QUICKSTART, 65, 4, seed=5).batch_np(3)
    b = FreshStream(QUICKSTART, 65, 4, seed=5, metadata=None).batch_np(3)
    assert np.array_equal(a, b) and a.max() <= eos
    # the model's vocabulary and the targets are today's too (the stream's own hash at the commit
    # before the block existed: tests/data/test_in_context.py, with neither block set)
    assert md.model_vocab_size(QUICKSTART, []) == Vocab.from_grammar(QUICKSTART).size
    vocab = Vocab.from_grammar(QUICKSTART)
    x, y = NextToken().make_batch(torch.from_numpy(a), vocab.eos, vocab.mask)
    assert torch.equal(x, torch.from_numpy(a[:, :-1])) and torch.equal(
        y, torch.from_numpy(a[:, 1:])
    )


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_the_share_of_carriers_is_the_fraction(fraction) -> None:
    carry = np.concatenate([md.carriers(1000, fraction, seed) for seed in range(5)])
    sd = math.sqrt(fraction * (1 - fraction) / carry.size)
    assert abs(carry.mean() - fraction) <= 4 * sd + 1e-12
    # and in the stream: strings with a block among all strings of some steps
    meta = md.Metadata(QUICKSTART, (0,), fraction)
    eos = Vocab.from_grammar(QUICKSTART).eos
    fs = FreshStream(QUICKSTART, 129, 16, seed=2, metadata=meta)
    segs = [s for step in range(5) for w in fs.batch_np(step) for s in _segments(w, eos)]
    share = np.mean([s[0] >= meta.first_id for s in segs])
    assert abs(share - fraction) <= 4 * math.sqrt(fraction * (1 - fraction) / len(segs)) + 1e-12


def test_the_loss_is_never_taken_on_a_metadata_token() -> None:
    meta = md.Metadata(QUICKSTART, (0, 1), 0.7)
    vocab = Vocab.from_grammar(QUICKSTART)
    windows = torch.from_numpy(FreshStream(QUICKSTART, 65, 6, seed=1, metadata=meta).batch_np(0))
    x, y = NextToken().make_batch(windows, vocab.eos, vocab.mask)
    n_meta = 0
    for b in range(windows.shape[0]):
        for t in range(windows.shape[1] - 1):
            nxt = int(windows[b, t + 1])
            assert int(x[b, t]) == int(windows[b, t])  # the model reads every token
            if nxt >= meta.first_id:
                n_meta += 1
                assert int(y[b, t]) == IGNORE
            else:
                assert int(y[b, t]) == nxt
    assert n_meta > 5


def _brute_given(g: Grammar, named: dict[int, list[int]], max_len: int) -> dict:
    """{string: P(string | named)} over every tree with at most max_len tokens."""
    out: dict = defaultdict(float)
    for p, tokens, ch in trees(g, 0, 0, max_len):
        if all(d < len(ch) and ch[d] == list(js) for d, js in named.items()):
            out[tokens] += p
    total = sum(out.values())
    return {x: p / total for x, p in out.items()}


@pytest.mark.parametrize(
    "g,named,max_len,tol",
    [
        (LAYERED, {1: [0, 1]}, 30, 1e-9),  # the root's rule unnamed: a mixture
        (LAYERED, {2: [1, 0, 1, 1]}, 30, 1e-9),
        (LAYERED, {0: [1], 1: [1, 0]}, 30, 1e-9),  # every depth above named: condition itself
        (MIXED, {1: [0, 1]}, 18, 1e-5),  # ambiguous, infinite (enumerated to 18 tokens)
    ],
)
def test_the_distribution_given_metadata_equals_enumeration(g, named, max_len, tol) -> None:
    brute = _brute_given(g, named, max_len)
    assert brute, "the test's metadata must fit some tree"
    given = md.conditioned(g, named)
    # the most likely strings short enough that the enumeration's cut-off tail is negligible
    # after them (MIXED: B -> 'b' B, 0.3 a token)
    short = [x for x in brute if len(x) <= max_len - 12]
    strings = sorted(short, key=lambda x: -brute[x])[:12]
    xs = [np.array(x, dtype=np.int64) for x in strings]
    for x, lp in zip(strings, inside.log_prob(given, xs), strict=True):
        assert math.isclose(math.exp(lp), brute[x], rel_tol=tol * 10, abs_tol=tol)
    for x, rows in zip(strings, inside.next_token_dist(given, xs), strict=True):
        for k in range(len(x) + 1):
            mass = defaultdict(float)
            for y, p in brute.items():
                if y[:k] == x[:k]:
                    mass[0 if len(y) == k else y[k]] += p
            total = sum(mass.values())
            want = np.array([mass[c] / total for c in range(g.n_t + 1)])
            assert np.allclose(rows[k], want, atol=tol * 10), (x, k)


def test_metadata_at_a_depth_too_far_below_unnamed_depths_is_refused() -> None:
    with pytest.raises(ConfigError, match="name them too"):
        md.check_grammar(load("cfg3f"), [5], 0.5)
    md.check_grammar(QUICKSTART, [2], 0.5)  # 27 combinations: fine
    with pytest.raises(ConfigError, match="fraction"):
        md.check_grammar(QUICKSTART, [0], 0.0)


def _paint_rules(node, depth: int, start: int, want: np.ndarray) -> int:
    """Write the node's rule index over its tokens at its depth (and recurse); its end."""
    j = choices_of(POLISH, node, 1)[0][0]
    pos = start
    for c in node.children:
        pos = pos + 1 if isinstance(c, int) else _paint_rules(c, depth + 1, pos, want)
    if depth < want.shape[0]:
        want[depth, start:pos] = j
    return pos


def test_rule_labels_are_the_rule_of_each_tokens_ancestor() -> None:
    """Per token and depth, the rule index of its ancestor, from the unambiguous parse tree."""
    from cfglab.data.tree import tree_labels

    batch = sample(POLISH, 100, 2, labels=True)
    tl = tree_labels(POLISH, batch)
    labels = md.rule_labels(POLISH, batch, tl.subtree[:3])
    for i, tree in enumerate(cyk.parse(POLISH, batch.strings())):
        want = np.full((3, len(batch.strings()[i])), -1)
        _paint_rules(tree, 0, 0, want)
        lo, hi = batch.offsets[i], batch.offsets[i + 1]
        assert np.array_equal(labels[:, lo:hi], want)


@pytest.mark.parametrize(
    "sets,says",
    [
        (["data.metadata.levels=[0, 0]"], "give each depth once"),
        (["data.metadata.levels=[-1]"], "data.metadata.levels must be >= 0"),
        (["data.metadata.levels=[0]", "data.metadata.fraction=0"], "fraction"),
        (["data.metadata.levels=[0]", "data.sampler=physicslm4"], "data.sampler physicslm4"),
        (["data.metadata.levels=[0]", "data.noise.fraction=0.1"], "data.noise.fraction"),
        (["data.metadata.levels=[0]", "train.objective=mlm"], "train.objective mlm"),
        (["eval.metadata=[0]"], "eval.metadata [0] names depths the model has no"),
        (["data.metadata.levels=[0]", "eval.metadata=[1]"], "no metadata tokens"),
        (["data.metadata.levels=[5]", "grammar.name=cfg3f"], "name them too"),
        (["data.metadata.levels=[0]", "grammar.name=copy m_max=6 alphabet=2"], "beyond"),
    ],
)
def test_bad_metadata_settings_are_one_line_before_any_work(sets, says, tmp_path, capsys) -> None:
    from cfglab.cli import main

    out = tmp_path / "out"
    argv = ["run", "configs/quickstart.yaml", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfglab: error:") and says in err[0], err
    assert not out.exists()


def test_the_rule_probe_target_reads_each_levels_rule() -> None:
    from cfglab.analyze.targets import TARGETS, build_targets
    from cfglab.data.tree import tree_labels

    batch = sample(QUICKSTART, 20, 9, labels=True)
    got = build_targets(QUICKSTART, batch, ["rule"])
    tl = tree_labels(QUICKSTART, batch)
    want = md.rule_labels(QUICKSTART, batch, tl.subtree)
    assert [t.column for t in got] == [{"level": lev} for lev in range(3)]
    for t in got:
        assert t.n_classes == 3 and np.array_equal(t.y, want[t.column["level"]])
        assert (t.y >= 0).all() and np.array_equal(t.at_ends, tl.is_boundary[t.column["level"]])
    assert TARGETS["rule"].supports(QUICKSTART) and not TARGETS["rule"].supports(POLISH)
    assert not TARGETS["rule"].default(QUICKSTART)  # opt-in: probe.targets
