"""The tensor edge: packing, the fresh-sample stream's keys, saved datasets, objectives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cfglab.data.dataset import VAL, FreshStream, bos_aligned_windows, pack, sample_window
from cfglab.data.noise import TrainingNoise
from cfglab.data.physicslm4 import PhysicsLM4Stream
from cfglab.data.sampler import sample
from cfglab.data.saved import SavedDataset, write_dataset
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import ConfigError, SamplingError
from cfglab.grammar import Grammar, load, random_cfg
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


# ---- issue 15: noise in the stream, the authors' sampler --------------------------------------
def test_rho_zero_leaves_the_stream_bit_identical(tmp_path: Path) -> None:
    """Pinned: the stream and a saved dataset as the code before noise and physicslm4 made them
    (commit 81bcdb9); with no noise, or noise of fraction 0, nothing changes."""
    import hashlib

    for noise in (None, TrainingNoise(0.0), TrainingNoise(0.0, "rule")):
        h = hashlib.sha256()
        for split in (0, VAL):
            s = FreshStream(GRAMMAR, 65, 6, seed=3, split=split, noise=noise)
            for step in (0, 4, 9):
                h.update(s.batch_np(step).tobytes())
        s = FreshStream(load("cfg3b"), 257, 4, seed=1, max_len=300, noise=noise)
        h.update(s.batch_np(2).tobytes())
        out = write_dataset(load("cfg3b"), tmp_path / str(noise), 30, seed=4, chunk=12, noise=noise)
        for name in ("tokens", "offsets", "ancestors", "subtree", "is_boundary"):
            h.update(np.load(out / f"{name}.npy").tobytes())
        assert h.hexdigest() == "27f9620d00a0b7680432401960506fcce8e0a49d8b1a1c5717b7a2c54dd4e29b"
        assert not (out / "perturbed.npy").exists()


@pytest.mark.parametrize("kind", ["token", "rule"])
def test_noisy_stream_keeps_the_clean_strings(kind: str) -> None:
    noise = TrainingNoise(0.3, kind, 0.2, ("substitute", "delete"))
    clean = FreshStream(GRAMMAR, 129, 8, seed=2)
    noisy = FreshStream(GRAMMAR, 129, 8, seed=2, noise=noise)
    for step in (0, 3):
        a, _ = clean.step_strings(step)
        b, hit = noisy.step_strings(step)
        assert len(hit) == len(b) and 0 < hit.sum() < len(b)
        k = min(len(a), len(b))  # both are prefixes of the same drawn strings
        for x, y, h in zip(a.strings()[:k], b.strings()[:k], hit[:k], strict=True):
            assert h or np.array_equal(x, y)
        w = noisy.batch_np(step)  # the windows hold the (perturbed) strings, BOS-aligned
        assert np.all(w[:, 0] == BOS)
        row = _split_stream(w[0], VOCAB.eos)
        assert row == [s.tolist() for s in b.strings()[: len(row)]]
    assert not np.array_equal(clean.batch_np(1), noisy.batch_np(1))


@pytest.mark.parametrize(
    "noise",
    [TrainingNoise(0.1, "token", 0.05), TrainingNoise(0.1, "rule")],
    ids=["token", "rule"],
)
def test_out_of_language_share_is_rho_times_the_perturbed_share(noise) -> None:
    """Acceptance (issue 15): the share of 10,000 training strings outside the language (exact
    recognizer) equals rho x (the share of perturbed strings outside it, measured separately
    on 4,000 strings all perturbed), within 4 standard errors of both estimates."""
    from dataclasses import replace

    from cfglab.data.noise import perturb_fraction
    from cfglab.exact.cyk import recognize

    stream = FreshStream(GRAMMAR, 257, 16, seed=5, noise=noise)
    strings, hits, step = [], [], 0
    while len(strings) < 10_000:
        b, hit = stream.step_strings(step)
        strings += b.strings()
        hits.append(hit)
        step += 1
    strings, hit = strings[:10_000], np.concatenate(hits)[:10_000]
    out_share = 1 - recognize(GRAMMAR, strings).mean()
    clean = sample(GRAMMAR, 4_000, seed=99, labels=True)
    allp, _ = perturb_fraction(clean, GRAMMAR, replace(noise, fraction=1.0), seed=7)
    q = 1 - recognize(GRAMMAR, allp.strings()).mean()
    rho = noise.fraction
    assert abs(hit.mean() - rho) < 4 * (rho * (1 - rho) / 10_000) ** 0.5
    sigma = ((rho * q * (1 - rho * q)) / 10_000 + rho**2 * q * (1 - q) / 4_000) ** 0.5
    assert 0.2 < q < 1 and abs(out_share - rho * q) < 4 * sigma


def test_physicslm4_stream_packs_the_authors_strings_in_order() -> None:
    g = load("cfg3b")
    s = FreshStream(g, 300, 4, seed=7711, sampler="physicslm4")
    want = PhysicsLM4Stream(g, 7711).take(40, labels=False).strings()
    got = []
    for step in range(3):
        b, hit = s.step_strings(step)
        assert not hit.any()
        got += b.strings()
        w = s.batch_np(step)
        assert w.shape == (4, 300) and np.all(w[:, 0] == BOS)
    assert all(np.array_equal(x, y) for x, y in zip(got, want, strict=False))
    first = s.batch_np(0)[0].tolist()  # BOS x EOS BOS y ... cut at 300
    assert first[: len(want[0]) + 2] == [BOS, *want[0].tolist(), Vocab.from_grammar(g).eos]
    ranks = [
        FreshStream(g, 300, 4, seed=1, sampler="physicslm4", rank=r, world_size=2) for r in (0, 1)
    ]
    whole = FreshStream(g, 300, 4, seed=1, sampler="physicslm4")
    assert torch.equal(whole.batch(2), torch.cat([r.batch(2) for r in ranks]))
    val = FreshStream(g, 300, 4, seed=7711, sampler="physicslm4", split=VAL)
    v0 = val.batch(0)
    val.batch(1)
    assert torch.equal(val.batch(0), v0) and not torch.equal(v0, s.batch(0))


def test_physicslm4_stream_resumes_from_a_saved_state() -> None:
    import json

    g = load("cfg3b")
    a = FreshStream(g, 200, 4, seed=3, sampler="physicslm4")
    seen = list(a.iterate(0, 8, prefetch=3))  # the prefetch thread ran ahead of step 5
    state = json.loads(json.dumps(a.stream_state(5)))  # as state.json holds it
    b = FreshStream(g, 200, 4, seed=3, sampler="physicslm4")
    b.restore_stream_state(5, state)
    assert all(torch.equal(x, y) for x, y in zip(list(b.iterate(5, 8)), seen[5:], strict=True))
    c = FreshStream(g, 200, 4, seed=3, sampler="physicslm4")  # no state: replays, same windows
    assert torch.equal(c.batch(6), seen[6])
    assert torch.equal(a.batch(2), seen[2])  # random access stays a function of the step
    assert FreshStream(GRAMMAR, 65, 4).stream_state(5) is None
    with pytest.raises(SamplingError, match="state_at"):
        b.restore_stream_state(6, state)
    with pytest.raises(ConfigError, match="physicslm4"):
        FreshStream(GRAMMAR, 65, 4).restore_stream_state(5, state)


def test_physicslm4_noise_perturbs_the_authors_strings() -> None:
    g = load("cfg3b")
    noise = TrainingNoise(0.5, "rule")
    s = FreshStream(g, 300, 4, seed=7711, sampler="physicslm4", noise=noise)
    got, hits = [], []
    for step in range(3):
        b, hit = s.step_strings(step)
        got += b.strings()
        hits.append(hit)
    hit = np.concatenate(hits)
    want = PhysicsLM4Stream(g, 7711).take(len(got), labels=False).strings()
    assert 0 < hit.sum() < len(hit)
    for x, y, h in zip(got, want, hit, strict=True):
        assert np.array_equal(x, y) != h  # rule noise on cfg3b always changes the string
    assert torch.equal(
        s.batch(1), FreshStream(g, 300, 4, seed=7711, sampler="physicslm4", noise=noise).batch(1)
    )


def test_write_dataset_physicslm4_and_noise(tmp_path: Path) -> None:
    g = load("cfg3b")
    out = write_dataset(g, tmp_path / "p", 25, seed=7711, chunk=10, sampler="physicslm4")
    tokens, offsets = np.load(out / "tokens.npy"), np.load(out / "offsets.npy")
    want = PhysicsLM4Stream(g, 7711).take(25)
    assert _split_stream(tokens, Vocab.from_grammar(g).eos) == [x.tolist() for x in want.strings()]
    is_tok = (tokens != BOS) & (tokens != Vocab.from_grammar(g).eos)
    assert np.array_equal(np.load(out / "subtree.npy")[:, is_tok], want.subtree)
    assert np.array_equal(np.load(out / "ancestors.npy")[:, is_tok], want.ancestors)
    assert len(offsets) == 25 and json_meta(out)["sampler"] == "physicslm4"
    noisy = write_dataset(
        g, tmp_path / "n", 200, seed=1, chunk=64, noise=TrainingNoise(0.2, "rule")
    )
    hit = np.load(noisy / "perturbed.npy")
    assert hit.shape == (200,) and within_binomial(int(hit.sum()), 200, 0.2)
    assert json_meta(noisy)["noise"]["kind"] == "rule"
    with pytest.raises(ConfigError, match="max_len"):
        write_dataset(g, tmp_path / "x", 5, max_len=100, sampler="physicslm4")
    with pytest.raises(ConfigError, match="choose from fast, physicslm4"):
        FreshStream(g, 65, 4, sampler="authors")
    with pytest.raises(ConfigError, match="max_len"):
        FreshStream(g, 65, 4, sampler="physicslm4", max_len=100)
    with pytest.raises(ConfigError, match="not layered"):
        FreshStream(Grammar.from_text("S -> 'a' S | 'b'"), 65, 4, noise=TrainingNoise(0.1, "rule"))


def json_meta(path: Path) -> dict:
    import json

    return json.loads((path / "meta.json").read_text())


def within_binomial(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 4 * (n * p * (1 - p)) ** 0.5
