"""Grammars learned in context (cfglab.data.in_context): every window its own grammar, a pure
function of (seed, split, step, window); windows hold strings of their own grammar only (NLTK's
parser as the oracle); the config checks; and without the block, the stream of today."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cfglab.config import load_config
from cfglab.config.schema import InContextConfig
from cfglab.data.in_context import (
    InContextSpec,
    window_batch,
    window_grammar,
    window_strings,
    window_tokens,
)
from cfglab.data.vocab import BOS
from cfglab.errors import ConfigError
from cfglab.grammar import load
from cfglab.grammar.cfg import Grammar
from tests.oracles import nltk_accepts, nltk_grammar

BASE = load("cfg3b")  # terminals '1' '2' '3': the random family's with levels[-1] = 3
SPEC = InContextSpec("random", (1, 3, 3, 3), (2, 3), (2, 3), 8, 26)
# a small layered base for permute: 2 nonterminals on level 1, so rule sets can be dealt anew
SMALL = Grammar.from_text(
    """
    S -> A B | B B
    A -> 'a' 'b' | 'c'
    B -> 'b' 'b' 'a' | 'a' 'c'
    """
)
PERMUTE = InContextSpec("permute", (), (1, 1), (1, 1), 4, 12)


def test_window_grammars_differ_across_windows_and_repeat_for_one_seed() -> None:
    texts = {
        (step, j): window_grammar(SPEC, BASE, 7, 0, step, j).to_text()
        for step in range(3)
        for j in range(6)
    }
    bodies = {t.split("\n", 1)[1] for t in texts.values()}  # rules only (names carry the seed)
    assert len(bodies) == len(texts)  # 18 windows, 18 different grammars
    for (step, j), text in texts.items():  # the same key: the same grammar, rebuilt from scratch
        assert window_grammar(SPEC, BASE, 7, 0, step, j).to_text() == text
    other_seed = window_grammar(SPEC, BASE, 8, 0, 0, 0).to_text()
    other_split = window_grammar(SPEC, BASE, 7, 1, 0, 0).to_text()
    assert other_seed != texts[(0, 0)] and other_split != texts[(0, 0)]
    a = window_batch(SPEC, BASE, 7, 0, 3, 0, 4, 257)
    assert np.array_equal(a, window_batch(SPEC, BASE, 7, 0, 3, 0, 4, 257))
    assert not np.array_equal(a, window_batch(SPEC, BASE, 8, 0, 3, 0, 4, 257))


def _segments(window: np.ndarray, eos: int) -> list[tuple[np.ndarray, bool]]:
    """The strings of a packed window (BOS x EOS ...) and whether each is whole."""
    assert window[0] == BOS
    starts = list(np.flatnonzero(window == BOS)) + [len(window)]
    out = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        seg = window[a + 1 : b]
        whole = len(seg) > 0 and seg[-1] == eos
        out.append((seg[:-1] if whole else seg, whole))
    return out


@pytest.mark.parametrize("spec,base", [(SPEC, BASE), (PERMUTE, SMALL)], ids=["random", "permute"])
def test_a_window_holds_strings_of_its_own_grammar_only(spec, base) -> None:
    eos = base.n_t + 1
    for j in range(3):
        g, first = window_strings(spec, base, 3, 0, 5, j)
        other = window_grammar(spec, base, 3, 0, 5, j + 10)
        tokens = window_tokens(spec, base, 3, 0, 5, j, 200)
        assert tokens.shape == (200,) and tokens[0] == BOS
        segments = _segments(tokens, eos)
        whole = [s for s, ok in segments if ok]
        assert len(whole) >= spec.strings_per_window
        # the window opens with the K + 1 strings the evaluation reads
        for x, y in zip(whole, first, strict=False):
            assert np.array_equal(x, y)
        parser, names = nltk_grammar(g), np.array(base.terminals)
        for x in whole:
            assert 1 <= len(x) <= spec.max_len
            assert nltk_accepts(parser, list(names[x - 1]))
        if g.to_text().split("\n", 1)[1] != other.to_text().split("\n", 1)[1]:
            rejected = [not nltk_accepts(nltk_grammar(other), list(names[x - 1])) for x in whole]
            assert any(rejected)  # another window's grammar is another language


def test_permute_keeps_the_base_shapes_and_deals_new_grammars() -> None:
    grammars = [window_grammar(PERMUTE, SMALL, 0, 0, 0, j) for j in range(12)]
    assert len({g.to_text().split("\n", 1)[1] for g in grammars}) > 3
    for g in grammars:
        assert g.terminals == SMALL.terminals and g.nonterminals == SMALL.nonterminals
        shapes = sorted((len(r.rhs), r.prob) for r in g.rules)
        assert shapes == sorted((len(r.rhs), r.prob) for r in SMALL.rules)


def test_a_rank_builds_its_own_share_of_the_global_batch() -> None:
    from cfglab.data.dataset import InContextStream

    whole = InContextStream(SPEC, BASE, 257, 4, seed=2).batch_np(9)
    half = InContextStream(SPEC, BASE, 257, 4, seed=2, rank=1, world_size=2).batch_np(9)
    assert np.array_equal(half, whole[2:])


def _config(*overrides: str):
    return load_config(
        "configs/quickstart.yaml",
        [
            "grammar.name=cfg3b",
            "model.block_size=256",
            "data.max_len=26",
            "data.in_context={family: random, strings_per_window: 8}",
            "stages=[train, eval]",
            *overrides,
        ],
    )


def test_make_data_dispatches_and_without_the_block_is_todays_stream() -> None:
    pytest.importorskip("torch")
    from cfglab.data.dataset import FreshStream, InContextStream
    from cfglab.train.dist import DistInfo
    from cfglab.train.steps import make_data

    info = DistInfo(0, 0, 1, None)
    cfg = _config()
    assert cfg.data.in_context == InContextConfig(strings_per_window=8)
    source = make_data(cfg, BASE, 257, info, 0)
    assert isinstance(source, InContextStream)
    assert np.array_equal(source.batch_np(4), window_batch(SPEC, BASE, 0, 0, 4, 0, 16, 257))
    # cfg3b's strings are long (138+ tokens): the plain stream without the cap
    plain = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, in_context=None, max_len=None)
    )
    fresh = make_data(plain, BASE, 257, info, 0)
    assert isinstance(fresh, FreshStream)
    expect = FreshStream(BASE, 257, 16, seed=0).batch_np(4)
    assert np.array_equal(fresh.batch_np(4), expect)


def test_an_old_config_without_the_block_loads_with_it_off() -> None:
    from cfglab.config.load import config_from_dict, config_json

    cfg = load_config("configs/quickstart.yaml")
    data = cfg.to_dict()
    assert data["data"]["in_context"] is None
    del data["data"]["in_context"]  # a config.json written before the block existed
    assert config_from_dict(data).data.in_context is None
    on = _config()
    assert config_from_dict(__import__("json").loads(config_json(on))) == on


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["stages=[train, analyze]"], "the analyze stage"),
        (["stages=[train, dynamics]"], "the dynamics stage"),
        (["data.noise.fraction=0.1"], "data.noise"),
        (["grammar.name=cfg3e2"], "over the same terminals"),
        (["data.max_len=27"], "lower data.max_len to 26"),
        (["data.max_len=null"], "needs data.max_len"),
        (["data.max_len=6"], "shortest string has 8"),
        (["data.in_context.rules=[3, 2]"], "min <= max"),
        (["data.in_context.family=shuffle"], "choose from random, permute"),
    ],
)
def test_the_config_check_refuses_what_cannot_run(overrides, message) -> None:
    from cfglab.stages import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(_config(*overrides))


def test_the_experiment_block_passes_the_check() -> None:
    from cfglab.stages import check_config

    check_config(_config())


# sha256 of the quickstart's training batches of steps 0-2 and its first validation batch, as
# make_data gave them at commit cdea4f8 (before data.in_context existed)
QUICKSTART_TRAIN = "f7c12965a938ef23dd8fcb9c0fd6bdf4ba95027567c1ba399b5c02e58de57769"
QUICKSTART_VAL = "1bfa4bda096913f8a1498b801928063b6d87a5803a8423e02c1707330f6015e2"


def test_without_the_block_the_quickstart_stream_is_the_one_before_it_existed() -> None:
    pytest.importorskip("torch")
    import hashlib

    from cfglab.train.dist import DistInfo
    from cfglab.train.steps import make_data

    cfg = load_config("configs/quickstart.yaml")
    assert cfg.data.in_context is None
    grammar, window, info = cfg.grammar.load(), cfg.model.block_size + 1, DistInfo(0, 0, 1, None)
    train = make_data(cfg, grammar, window, info, 0)
    got = hashlib.sha256(b"".join(train.batch_np(s).tobytes() for s in range(3))).hexdigest()
    assert got == QUICKSTART_TRAIN
    val = make_data(cfg, grammar, window, info, 1).batch_np(0)
    assert hashlib.sha256(val.tobytes()).hexdigest() == QUICKSTART_VAL
