"""The tensor edge: packing, the fresh-sample stream's keys, saved datasets, objectives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cfglab.data.dataset import (
    VAL,
    FreshStream,
    SavedDataset,
    bos_aligned_windows,
    pack,
    sample_window,
    write_dataset,
)
from cfglab.data.sampler import sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import ConfigError
from cfglab.grammar import load, random_cfg
from cfglab.train.objectives import IGNORE, OBJECTIVES, MaskedLM, NextToken, get_objective
from tests.oracles import nltk_accepts, nltk_grammar

GRAMMAR = random_cfg(sizes=(1, 3, 3, 3), seed=0)
VOCAB = Vocab.from_grammar(GRAMMAR)


def _split_stream(stream: np.ndarray, eos: int) -> list[list[int]]:
    """Complete strings (between a BOS and the next EOS) of a packed stream."""
    out, cur = [], None
    for tok in stream.tolist():
        if tok == BOS:
            cur = []
        elif tok == eos:
            if cur is not None:
                out.append(cur)
            cur = None
        elif cur is not None:
            cur.append(tok)
    return out


def test_pack_worked_example() -> None:
    b = sample(GRAMMAR, 3, seed=1, labels=False)
    got = pack(b, VOCAB.eos)
    expect = []
    for s in b.strings():
        expect += [BOS, *s.tolist(), VOCAB.eos]
    assert got.tolist() == expect


def test_windows_hold_grammatical_strings() -> None:
    """Every complete string inside a window is in the language (NLTK oracle)."""
    ng = nltk_grammar(GRAMMAR)
    w = sample_window(GRAMMAR, 100, (0, 0, 5, 1), VOCAB.eos)
    assert w.shape == (100,) and w[0] == BOS
    strings = _split_stream(w, VOCAB.eos)
    assert len(strings) >= 3
    for s in strings:
        assert nltk_accepts(ng, VOCAB.decode(s))


def test_stream_windows_start_at_bos_and_hold_grammatical_strings() -> None:
    ng = nltk_grammar(GRAMMAR)
    w = bos_aligned_windows(GRAMMAR, 5, 40, (0, 0, 3), VOCAB.eos)
    assert w.shape == (5, 40) and np.all(w[:, 0] == BOS)
    for row in w:
        strings = _split_stream(row, VOCAB.eos)
        assert strings
        for s in strings:
            assert nltk_accepts(ng, VOCAB.decode(s))
    # windows longer than every string, and strings longer than the window, both work
    assert np.all(bos_aligned_windows(GRAMMAR, 3, 4, (1,), VOCAB.eos)[:, 0] == BOS)
    long = load("cfg3b")
    w = bos_aligned_windows(long, 4, 64, (2,), Vocab.from_grammar(long).eos)
    assert w.shape == (4, 64) and np.all(w[:, 0] == BOS)


def test_window_is_a_function_of_its_key() -> None:
    a = sample_window(GRAMMAR, 300, (0, 0, 7, 3), VOCAB.eos)
    assert np.array_equal(a, sample_window(GRAMMAR, 300, (0, 0, 7, 3), VOCAB.eos))
    assert not np.array_equal(a, sample_window(GRAMMAR, 300, (0, 0, 8, 3), VOCAB.eos))
    assert not np.array_equal(a, sample_window(GRAMMAR, 300, (1, 0, 7, 3), VOCAB.eos))


def test_max_len_respected() -> None:
    w = sample_window(GRAMMAR, 2000, (0, 0, 1, 0), VOCAB.eos, max_len=12)
    assert max(len(s) for s in _split_stream(w, VOCAB.eos)) <= 12


def test_stream_is_world_size_invariant() -> None:
    one = FreshStream(GRAMMAR, 65, 6, seed=3).batch(4)
    parts = [FreshStream(GRAMMAR, 65, 6, seed=3, rank=r, world_size=3).batch(4) for r in range(3)]
    assert one.shape == (6, 65) and one.dtype == torch.int64
    assert torch.equal(one, torch.cat(parts))
    val = FreshStream(GRAMMAR, 65, 6, seed=3, split=VAL).batch(4)
    assert not torch.equal(one, val)
    with pytest.raises(ConfigError, match="not divisible by the world size"):
        FreshStream(GRAMMAR, 65, 6, world_size=4)


def test_prefetch_gives_the_same_batches() -> None:
    s = FreshStream(GRAMMAR, 33, 4, seed=1)
    inline = list(s.iterate(2, 7, prefetch=0))
    ahead = list(s.iterate(2, 7, prefetch=2))
    assert len(ahead) == 5
    for a, b in zip(inline, ahead, strict=True):
        assert torch.equal(a, b)


def test_saved_dataset_round_trip(tmp_path: Path) -> None:
    g = load("cfg3b")
    v = Vocab.from_grammar(g)
    out = write_dataset(g, tmp_path / "ds", n=30, seed=4, chunk=12)
    tokens = np.load(out / "tokens.npy")
    offsets = np.load(out / "offsets.npy")
    assert len(offsets) == 30 and np.all(tokens[offsets] == BOS)
    # the labels line up with the sampler's own (same seeds, chunk by chunk)
    anc = np.load(out / "ancestors.npy", mmap_mode="r")
    assert anc.shape[1] == len(tokens)
    is_tok = (tokens != BOS) & (tokens != v.eos)
    assert np.all(anc[:, ~is_tok] == -1) and np.all(anc[:, is_tok] >= 0)
    bnd = np.load(out / "is_boundary.npy")
    eos_pos = np.flatnonzero(tokens == v.eos)
    assert np.all(bnd[:, eos_pos - 1])  # a string's last token ends every level's subtree
    ds = SavedDataset(out, g, 64, 4, seed=1)
    assert isinstance(ds.tokens, np.memmap)
    w = ds.batch(0).numpy()
    assert w.shape == (4, 64) and np.all(w[:, 0] == BOS)
    stream = tokens.tobytes()
    for row in w.astype(np.uint16):
        assert row.tobytes() in stream  # every window is a slice of the stream
    assert np.array_equal(w, ds.batch(0).numpy())
    halves = [SavedDataset(out, g, 64, 4, seed=1, rank=r, world_size=2).batch(0) for r in (0, 1)]
    assert np.array_equal(w, torch.cat(halves).numpy())
    with pytest.raises(ConfigError, match="another grammar"):
        SavedDataset(out, load("cfg3e1"), 64, 4)
    with pytest.raises(ConfigError, match="not a saved dataset"):
        SavedDataset(tmp_path / "nope", g, 64, 4)


def test_next_token_shift() -> None:
    w = torch.tensor([[0, 2, 1, 4, 0, 3, 3]])
    x, y = NextToken().make_batch(w, eos_id=4, mask_id=5)
    assert x.tolist() == [[0, 2, 1, 4, 0, 3]] and y.tolist() == [[2, 1, 4, 0, 3, 3]]


def test_mlm_masking_rates() -> None:
    """15% of positions become targets; of those 80% MASK, 10% random terminal, 10% kept.
    Binomial bounds at ~6 standard deviations."""
    torch.manual_seed(0)
    w = torch.randint(1, 4, (64, 1025))  # terminals 1..3
    gen = torch.Generator().manual_seed(0)
    x, y = MaskedLM(0.15).make_batch(w, eos_id=4, mask_id=5, generator=gen)
    tokens = w[:, :-1]
    chosen = y != IGNORE
    n = tokens.numel()
    assert abs(chosen.sum().item() / n - 0.15) < 6 * (0.15 * 0.85 / n) ** 0.5
    assert torch.equal(y[chosen], tokens[chosen])
    assert torch.equal(x[~chosen], tokens[~chosen])  # unchosen positions untouched
    k = chosen.sum().item()
    masked = (x[chosen] == 5).float().mean().item()
    assert abs(masked - 0.8) < 6 * (0.8 * 0.2 / k) ** 0.5
    assert x.max() <= 5 and x[chosen & (x != 5)].max() <= 3  # replacements are terminals
    again = MaskedLM(0.15).make_batch(w, 4, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_objective_registry_matches_config() -> None:
    from cfglab.config import OBJECTIVES as NAMES

    assert set(OBJECTIVES) == set(NAMES)
    for name, causal in NAMES.items():
        assert get_objective(name).causal is causal
    with pytest.raises(ConfigError, match="unknown objective"):
        get_objective("clm")
