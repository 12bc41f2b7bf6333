"""Held-out rule combinations (cfglab.data.exclude) against independent oracles: every
derivation tree enumerated by brute force (masses, part shares, the conditioned distribution of
an ambiguous grammar), trees rebuilt from the sampler's spans (no sampled tree holds an excluded
combination; the rejected share matches the exact mass), and CYK parse trees of a whole
training stream (cfglab.exact.cyk)."""

import hashlib

import numpy as np
import pytest

from cfglab.data import exclude as ex
from cfglab.data.dataset import FreshStream
from cfglab.data.sampler import sample
from cfglab.errors import ConfigError, SamplingError
from cfglab.exact import cyk, inside
from cfglab.grammar import Grammar, load

# every rule starts with its own terminal (Polish notation), so every string has one parse;
# recursive (A -> 'p' A B, B -> 'r' A) and subcritical
POLISH = Grammar.from_text(
    """
S -> 'x' A B [0.5] | 'y' B A [0.5]
A -> 'a' [0.5] | 'p' A B [0.3] | 'q' B [0.2]
B -> 'b' [0.6] | 'r' A [0.4]
""",
    name="polish",
)
# finite and ambiguous: 'a' 'a' 'a' is A A two ways and 'a' B one way
AMBIGUOUS = Grammar.from_text(
    """
S -> A A [0.6] | 'a' B [0.4]
A -> 'a' [0.5] | 'a' 'a' [0.5]
B -> 'a' [0.7] | 'a' 'a' [0.3]
""",
    name="ambiguous",
)
QUICKSTART = load("configs/grammars/quickstart.cfg")
QS_COMBO = "7 -> '3' '2' under 10 -> 8 7"


# ---- oracles: trees as (rule, children) with plain recursion -----------------------------------
def trees(g: Grammar, sym: int = 0, budget: int = 10**9):
    """Every derivation tree of `sym` whose yield has at most `budget` tokens: (tree, yield,
    probability), tree = (rule, [child trees of the nonterminal children])."""
    if budget < 1:  # every symbol yields at least one token
        return
    if g.is_terminal(sym):
        yield None, (sym,), 1.0
        return
    for r in g.rules_of[sym]:
        rhs = g.rules[r].rhs
        partial = [([], (), g.rules[r].prob)]
        for k, s in enumerate(rhs):
            rest = sum(1 for t in rhs[k + 1 :])  # each later symbol yields >= 1 token
            grown = []
            for kids, y, p in partial:
                for sub, sy, sp in trees(g, s, budget - len(y) - rest):
                    grown.append((kids + ([sub] if sub is not None else []), y + sy, p * sp))
            partial = grown
        for kids, y, p in partial:
            if len(y) <= budget:
                yield (r, kids), y, p


def contains(tree, combo: ex.Combination, above: frozenset = frozenset(), parent=-1) -> bool:
    rule, kids = tree
    if rule == combo.rule and (
        (combo.kind == "under" and parent == combo.parent)
        or (combo.kind == "below" and combo.parent in above)
    ):
        return True
    return any(contains(k, combo, above | {rule}, rule) for k in kids)


def uses(tree, rule: int) -> bool:
    return tree[0] == rule or any(uses(k, rule) for k in tree[1])


def enumerate_all(g: Grammar, budget: int):
    return list(trees(g, 0, budget))


# ---- names --------------------------------------------------------------------------------
def test_every_rule_reads_back_by_its_printed_name() -> None:
    for g in (QUICKSTART, POLISH, load("cfg3b")):
        for r in range(len(g.rules)):
            name = ex.rule_name(g, r)
            c = ex.parse_combination(g, f"{name} below {name}")
            assert (c.kind, c.rule, c.parent) == ("below", r, r)
    assert ex.parse_combination(QUICKSTART, "  7 ->  '3'   \"2\"  under 10 -> 8 7").text == QS_COMBO


@pytest.mark.parametrize(
    "text, says",
    [
        ("7 -> '3' '9' under 10 -> 8 7", "the rules of 7 are: 7 -> '3' '1' '1'; 7 -> '3' '2'"),
        ("7 -> 3 2 under 10 -> 8 7", "terminals quoted"),
        ("99 -> 8 7 under 13 -> 10 12", "'99' is not a nonterminal"),
        ("7 -> '3' '2' inside 10 -> 8 7", "joined by 'under'"),
        ("7 -> '3' '2'", "joined by 'under'"),
        ("7 -> '3' '2' under 10 -> 8 7 | 9", "joined by 'under'"),
    ],
)
def test_bad_names_say_what_exists(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="data.exclude") as err:
        ex.check_combinations(QUICKSTART, [text])
    assert says in str(err.value)


# ---- exact quantities against enumeration ---------------------------------------------------
COMBOS = [
    ("POLISH", ["B -> 'b' under A -> 'p' A B"], 7),
    ("POLISH", ["A -> 'a' below B -> 'r' A"], 7),
    ("POLISH", ["B -> 'b' under A -> 'p' A B", "A -> 'a' below S -> 'y' B A"], 8),
    ("AMBIGUOUS", ["A -> 'a' 'a' under S -> A A"], 4),
]


@pytest.mark.parametrize("name, texts, cap", COMBOS)
def test_mass_and_part_shares_match_enumerated_trees(name, texts, cap) -> None:
    g = globals()[name]
    combos = ex.parse_combinations(g, texts)
    all_trees = enumerate_all(g, cap)
    total = sum(p for _, _, p in all_trees)
    bad = sum(p for t, _, p in all_trees if any(contains(t, c) for c in combos))
    assert bad > 0
    assert ex.heldout_mass(g, combos, max_len=cap) == pytest.approx(bad / total, abs=1e-12)
    kept = [(t, p) for t, _, p in all_trees if not any(contains(t, c) for c in combos)]
    z = sum(p for _, p in kept)
    assert ex.avoid_prob(g, combos, max_len=cap) == pytest.approx(z, abs=1e-12)
    for rule_text, share in ex.part_shares(g, combos, max_len=cap).items():
        r = next(i for i in range(len(g.rules)) if ex.rule_name(g, i) == rule_text)
        assert share == pytest.approx(sum(p for t, p in kept if uses(t, r)) / z, abs=1e-12)


def test_uncapped_mass_of_a_finite_grammar_is_its_enumerated_mass() -> None:
    combos = ex.parse_combinations(QUICKSTART, [QS_COMBO])
    # by hand: 10 -> 8 7 then 7 -> '3' '2' has probability 1/6 per 10 node; the root has one 10
    # node (rule 13 -> 10 12), two (13 -> 10 11 10) or none, each with probability 1/3
    by_hand = (1 / 6 + (1 - (5 / 6) ** 2)) / 3
    assert ex.heldout_mass(QUICKSTART, combos) == pytest.approx(by_hand, abs=1e-15)


def test_conditioned_grammar_is_the_avoiding_trees_renormalised() -> None:
    """Ambiguous strings: P_train(x) sums only the parses without the combination."""
    combos = ex.parse_combinations(AMBIGUOUS, ["A -> 'a' 'a' under S -> A A"])
    kept: dict[tuple, float] = {}
    for t, y, p in enumerate_all(AMBIGUOUS, 10):
        if not contains(t, combos[0]):
            kept[y] = kept.get(y, 0.0) + p
    z = sum(kept.values())
    cond = ex.conditioned_grammar(AMBIGUOUS, combos)
    strings = [np.array([s - AMBIGUOUS.n_nt + 1 for s in y]) for y in kept]
    got = np.exp(inside.log_prob(cond, strings))
    want = np.array([kept[y] / z for y in kept])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert sum(r.prob for r in cond.rules if r.lhs == 0) == pytest.approx(1.0)
    # 'a' 'a' 'a' 'a' has only A A parses with A -> 'a' 'a': gone from the training distribution
    assert inside.log_prob(cond, [np.array([1, 1, 1, 1])])[0] == -np.inf


def test_uncapped_recursive_grammar_conditioned_exactly() -> None:
    """POLISH is recursive and uncapped: every parse of a string of <= 8 tokens is enumerated,
    so P_train(x) * P(avoid) must be exactly its avoiding trees' probability, and P(avoid)
    lies between the enumerated avoiding mass and that plus the unenumerated tail."""
    combos = ex.parse_combinations(POLISH, ["A -> 'a' below B -> 'r' A"])
    all_trees = enumerate_all(POLISH, 8)
    kept: dict[tuple, float] = {}
    for t, y, p in all_trees:
        if not contains(t, combos[0]):
            kept[y] = kept.get(y, 0.0) + p
    z = ex.avoid_prob(POLISH, combos)
    tail = 1.0 - sum(p for _, _, p in all_trees)
    assert sum(kept.values()) <= z <= sum(kept.values()) + tail
    cond = ex.conditioned_grammar(POLISH, combos)
    strings = [np.array([s - POLISH.n_nt + 1 for s in y]) for y in kept]
    got = np.exp(inside.log_prob(cond, strings)) * z
    np.testing.assert_allclose(got, [kept[y] for y in kept], rtol=1e-9)


def test_refusals_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="never occurs"):
        ex.check_combinations(QUICKSTART, ["7 -> '3' '2' under 10 -> 9 8 9"])
    with pytest.raises(ConfigError, match="seen on its own"):  # A -> 'q' B has no other B
        ex.check_combinations(POLISH, ["B -> 'b' under A -> 'q' B", "B -> 'r' A under A -> 'q' B"])
    with pytest.raises(ConfigError, match="almost every string"):
        common = Grammar.from_text("S -> A [1.0]\nA -> 'a' [0.995] | 'b' [0.005]")
        ex.check_combinations(common, ["A -> 'a' under S -> A"])


# ---- the sampler --------------------------------------------------------------------------
def rebuilt_trees(g: Grammar, batch):
    """Each string's tree as (rule, children), rebuilt from the spans, their depths and the
    tokens alone (no rule ids from the sampler)."""
    by_rhs = {(r.lhs, r.rhs): i for i, r in enumerate(g.rules)}
    out = []
    for i, x in enumerate(batch.strings()):
        lo, hi = batch.span_offsets[i], batch.span_offsets[i + 1]
        out.append(_build(g, by_rhs, x, batch.span_rows[lo:hi], batch.span_depth[lo:hi], 0))
    return out


def _build(g: Grammar, by_rhs: dict, x, rows, depth, j: int):
    """Span row j's subtree: its children are the later rows one level deeper, up to the next
    row at its own depth or above; the tokens between them are its terminals."""
    nt, start, end = rows[j]
    kids, k = [], j + 1
    while k < len(rows) and depth[k] > depth[j]:
        if depth[k] == depth[j] + 1:
            kids.append(k)
        k += 1
    rhs, children, pos = [], [], start
    for kid in kids:
        rhs += [g.n_nt + x[p] - 1 for p in range(pos, rows[kid][1])]
        rhs.append(int(rows[kid][0]))
        children.append(_build(g, by_rhs, x, rows, depth, kid))
        pos = rows[kid][2]
    rhs += [g.n_nt + x[p] - 1 for p in range(pos, end)]
    return by_rhs[(int(nt), tuple(int(s) for s in rhs))], children


def test_sampled_trees_follow_the_filter_and_the_exact_mass() -> None:
    combos = ex.parse_combinations(QUICKSTART, [QS_COMBO])
    full = rebuilt_trees(QUICKSTART, sample(QUICKSTART, 6000, seed=5))
    share = np.mean([contains(t, combos[0]) for t in full])
    mass = ex.heldout_mass(QUICKSTART, combos)
    assert abs(share - mass) < 4.5 * np.sqrt(mass * (1 - mass) / len(full))  # seeded: fixed
    kept = rebuilt_trees(QUICKSTART, sample(QUICKSTART, 3000, seed=6, exclude=combos))
    held = rebuilt_trees(QUICKSTART, sample(QUICKSTART, 3000, seed=6, require=combos))
    assert not any(contains(t, combos[0]) for t in kept)
    assert all(contains(t, combos[0]) for t in held)
    parts = [c for c in (combos[0].rule, combos[0].parent)]
    assert all(any(uses(t, r) for t in kept) for r in parts)  # each part still seen alone


def test_filters_with_a_length_cap_and_recursion() -> None:
    combos = ex.parse_combinations(POLISH, ["A -> 'a' below B -> 'r' A"])
    batch = sample(POLISH, 2000, seed=2, max_len=12, exclude=combos)
    assert batch.lengths.max() <= 12
    assert not any(contains(t, combos[0]) for t in rebuilt_trees(POLISH, batch))
    a = sample(POLISH, 500, seed=9, exclude=combos, labels=False)
    b = sample(POLISH, 500, seed=9, exclude=combos, labels=False)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
    with pytest.raises(SamplingError, match="not both"):
        sample(POLISH, 5, seed=0, exclude=combos, require=combos)


# ---- the training stream ------------------------------------------------------------------
def test_no_string_of_a_whole_training_stream_holds_the_combination() -> None:
    """Every string of every step of a tiny run's stream (8 windows of 33 tokens, 40 steps),
    parsed by CYK (POLISH has one parse per string): none holds the combination, while the
    same stream without exclusion does."""
    text = "B -> 'b' under A -> 'p' A B"
    combo = ex.parse_combinations(POLISH, [text])[0]

    def held(stream: FreshStream) -> tuple[int, int]:
        n = hits = 0
        for step in range(40):
            strings = stream.step_strings(step)[0].strings()
            for tree in cyk.parse(POLISH, strings):
                n += 1
                hits += contains(as_rules(POLISH, tree), combo)
        return n, hits

    n, hits = held(FreshStream(POLISH, 33, 8, seed=4, exclude=[text]))
    assert n > 500 and hits == 0
    assert held(FreshStream(POLISH, 33, 8, seed=4))[1] > 50


def as_rules(g: Grammar, tree: cyk.Tree):
    """A cyk.Tree as (rule, children), the rule found from the children's symbols."""
    rhs = tuple(c.nt if isinstance(c, cyk.Tree) else g.n_nt + c - 1 for c in tree.children)
    rule = next(r for r in g.rules_of[tree.nt] if g.rules[r].rhs == rhs)
    return rule, [as_rules(g, c) for c in tree.children if isinstance(c, cyk.Tree)]


def test_empty_exclude_keeps_the_stream_and_exclusion_is_keyed_by_step() -> None:
    def digest(**kw) -> str:
        h = hashlib.sha256()
        s = FreshStream(QUICKSTART, 65, 6, seed=3, **kw)
        for step in (0, 4, 9):
            h.update(s.batch_np(step).tobytes())
        return h.hexdigest()

    assert digest(exclude=[]) == digest() == digest(exclude=())
    assert digest(exclude=[QS_COMBO]) == digest(exclude=[QS_COMBO]) != digest()
    s = FreshStream(QUICKSTART, 65, 6, seed=3, exclude=[QS_COMBO])
    assert np.array_equal(s.batch_np(7), FreshStream(
        QUICKSTART, 65, 6, seed=3, exclude=[QS_COMBO]).batch_np(7))  # fmt: skip


def test_the_authors_sampler_is_refused() -> None:
    with pytest.raises(ConfigError, match="fast sampler"):
        FreshStream(QUICKSTART, 65, 6, sampler="physicslm4", exclude=[QS_COMBO])


# ---- the config keys ------------------------------------------------------------------------
def test_config_keys_reach_config_json_and_refuse_other_samplers(tmp_path) -> None:
    import json

    from cfglab import rundir
    from cfglab.config import load_config

    items = [f"data.exclude={json.dumps([QS_COMBO])}"]
    cfg = load_config(None, items)
    assert cfg.data.exclude == [QS_COMBO] and cfg.eval.compositions == [QS_COMBO]  # derived
    rundir.write_config(tmp_path, cfg)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["exclude"] == saved["eval"]["compositions"] == [QS_COMBO]
    assert load_config(None).eval.compositions is None  # nothing held out, nothing scored
    full = load_config(None, [f"eval.compositions={json.dumps([QS_COMBO])}"])
    assert full.data.exclude == [] and full.eval.compositions == [QS_COMBO]
    for bad, says in (
        (["data.sampler=physicslm4"], "data.sampler physicslm4"),
        (["data.dataset=some/folder"], "data.dataset some/folder"),
    ):
        with pytest.raises(ConfigError, match=says):
            load_config(None, items + bad)
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, [f"data.exclude={json.dumps([QS_COMBO, QS_COMBO])}"])


def test_the_training_loops_data_holds_out_the_combination_and_validation_does_not() -> None:
    """train.steps.make_data, what the loop (and the memorisation replay) draws from: the
    training split is the excluding stream, step for step; validation is the full grammar's."""
    import torch

    from cfglab.config import load_config
    from cfglab.data.dataset import TRAIN, VAL
    from cfglab.train.dist import DistInfo
    from cfglab.train.steps import make_data

    cfg = load_config(
        None,
        [
            "grammar.name=configs/grammars/quickstart.cfg",
            f"data.exclude={[QS_COMBO]}",
            "data.seed=5",
            "train.batch_size=4",
        ],
    )
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    train, val = (make_data(cfg, QUICKSTART, 65, info, split) for split in (TRAIN, VAL))
    excluding = FreshStream(QUICKSTART, 65, 4, seed=5, exclude=[QS_COMBO])
    full = FreshStream(QUICKSTART, 65, 4, seed=5, split=VAL)
    for step in (0, 1, 9):
        assert np.array_equal(train.batch_np(step), excluding.batch_np(step))
        assert np.array_equal(val.batch_np(step), full.batch_np(step))
    assert not np.array_equal(
        train.batch_np(0), FreshStream(QUICKSTART, 65, 4, seed=5).batch_np(0)
    )  # the combination (15.7% of strings) was drawn and rejected in step 0's windows


@pytest.mark.parametrize(
    "argv,says",
    [
        (["run", "{cfg}", "--set", "data.exclude=[\"8 -> '9' '9'\"]"], "8 ->"),
        (["run", "{cfg}", "--set", "eval.compositions=[\"7 -> '3' under 13 -> 10 12\"]"], "7 ->"),
        (["data", "{cfg}", "-n", "5", "--set", f"data.exclude={[QS_COMBO]}"], "plain strings"),
    ],
)
def test_bad_combinations_and_unfiltered_datasets_are_refused_before_any_work(
    argv, says, tmp_path, capsys
) -> None:
    from cfglab.cli import main

    out = tmp_path / "out"
    cfg = "configs/quickstart.yaml"
    argv = [a.format(cfg=cfg) for a in argv] + ["--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfglab: error:") and says in err[0], err
    assert not out.exists()
