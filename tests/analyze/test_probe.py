"""The multi-head linear probe: planted features, shuffled labels, padding, model inputs."""

import numpy as np
import pytest
import torch

from cfglab.analyze.probe import (
    WINDOWS,
    MultiHeadProbe,
    fit_probe,
    majority_rate,
    score_probe,
)
from cfglab.analyze.states import HiddenStore, string_windows
from cfglab.config import ProbeConfig, load_config
from cfglab.errors import ConfigError

C = 16


def _strings(n: int, seed: int, lo: int = 10, hi: int = 40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(lo, hi, n)
    return np.concatenate([[0], np.cumsum(lengths)])


def _planted(offsets: np.ndarray, seed: int, shift: int = 0):
    """Hidden states with a 3-class and a 2-class feature planted linearly (class mean + unit
    noise). The label of token i is the class planted at token i + shift of its string."""
    rng = np.random.default_rng(seed)
    n = offsets[-1]
    y3, y2 = rng.integers(0, 3, n), rng.integers(0, 2, n)
    means3, means2 = 4 * rng.standard_normal((3, C)), 4 * rng.standard_normal((2, C))
    x = rng.standard_normal((n, C)) + means3[y3] + means2[y2]
    labels = np.stack([y3, y2])
    if shift:  # read the class planted `shift` tokens later (within the string; else its own)
        idx = np.arange(n)
        string = np.searchsorted(offsets, idx, side="right") - 1
        later = idx + shift
        ok = later < offsets[string + 1]
        src = np.where(ok, later, idx)
        labels = labels[:, src]
    return x.astype(np.float16), labels


SETTINGS = ProbeConfig(steps=60, batch_size=16)


@pytest.mark.parametrize("window", ["all", "diagonal"])
def test_probe_recovers_a_planted_linear_feature(window):
    off_tr, off_te = _strings(100, 0), _strings(40, 1)
    # same class means in train and test: plant once, then split
    x, y = _planted(np.concatenate([off_tr, off_tr[-1] + off_te[1:]]), 4)
    n_tr = off_tr[-1]
    x_tr, y_tr, x_te, y_te = x[:n_tr], y[:, :n_tr], x[n_tr:], y[:, n_tr:]
    probe = fit_probe(x_tr, off_tr, y_tr, [3, 2], settings=SETTINGS, window=window)
    acc = score_probe(probe, x_te, off_te, y_te)["accuracy"]
    assert (acc >= 0.99).all(), acc


def test_probe_is_at_chance_on_shuffled_labels():
    off_tr, off_te = _strings(100, 0), _strings(80, 1)
    x, y = _planted(np.concatenate([off_tr, off_tr[-1] + off_te[1:]]), 4)
    y = y[:, np.random.default_rng(5).permutation(y.shape[1])]  # labels no longer in the states
    n_tr = off_tr[-1]
    probe = fit_probe(x[:n_tr], off_tr, y[:, :n_tr], [3, 2], settings=SETTINGS)
    scores = score_probe(probe, x[n_tr:], off_te, y[:, n_tr:])
    majority = majority_rate(y[:, :n_tr], y[:, n_tr:])
    assert np.abs(scores["accuracy"] - majority).max() < 0.04, (scores, majority)
    assert np.abs(scores["balanced_accuracy"] - [1 / 3, 1 / 2]).max() < 0.04


@pytest.mark.slow
def test_all_window_reads_a_feature_stored_at_the_next_token():
    # the label of token i lives at token i+1: the position attention must learn to look right;
    # the diagonal probe cannot, and stays near chance on the 3-class feature
    off_tr, off_te = _strings(160, 0), _strings(60, 1)
    x, y = _planted(np.concatenate([off_tr, off_tr[-1] + off_te[1:]]), 4, shift=1)
    n_tr = off_tr[-1]
    acc = {}
    for window in ("all", "diagonal"):
        s = ProbeConfig(steps=500, batch_size=16)
        probe = fit_probe(x[:n_tr], off_tr, y[:, :n_tr], [3, 2], settings=s, window=window)
        acc[window] = score_probe(probe, x[n_tr:], off_te, y[:, n_tr:])["accuracy"]
    assert acc["all"].min() > 0.75, acc  # chance: 1/3 and 1/2
    assert acc["diagonal"].max() < 0.55, acc


@pytest.mark.parametrize("window", list(WINDOWS))
def test_probe_output_does_not_depend_on_the_batch(window):
    # the shared-normaliser softmax must equal a per-string softmax over that string's keys
    torch.manual_seed(0)
    probe = MultiHeadProbe(C, [3, 2], n_heads=2, d_probe=8, max_len=30, window=window)
    with torch.no_grad():
        probe.pos.mul_(0.3)  # spread the weights so padding mistakes would show
    h = torch.randn(3, 30, C)
    lengths = torch.tensor([30, 12, 5])
    batched = probe(h, lengths)
    queries = torch.tensor([0, 3, 4, 11, 29])  # predicting a subset of positions: same numbers
    torch.testing.assert_close(probe(h, lengths, queries), batched[:, :, queries])
    for j, n in enumerate(lengths.tolist()):
        alone = probe(h[j : j + 1, :n], lengths[j : j + 1])
        torch.testing.assert_close(batched[:, j, :n], alone[:, 0], rtol=1e-4, atol=1e-5)
        # brute force: explicit softmax over the string's keys
        pos = probe.pos[:, :n].transpose(1, 2)  # (G, H, n, D)
        scores = pos @ pos.transpose(-1, -2) / 8**0.5
        mask = WINDOWS[window](n)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = scores.softmax(-1)  # (G, H, n, n)
        feats = torch.einsum("tc,gchk->ghtk", h[j, :n], probe.read)
        ref = torch.einsum("ghik,ghkc->gic", w, feats) + probe.bias[:, None, :]
        ref = ref.masked_fill(~probe.is_class[:, None, :], float("-inf"))
        torch.testing.assert_close(alone[:, 0], ref, rtol=1e-4, atol=1e-5)


def test_string_windows_place_each_string_at_positions_1_to_n():
    strings = [np.array([1, 2, 3]), np.array([3]), np.array([2, 2])]
    gpt = string_windows(strings, eos=4, pad=6, block_size=8, causal=True)
    assert gpt.tolist() == [[0, 1, 2, 3, 4], [0, 3, 4, 6, 6], [0, 2, 2, 4, 6]]
    enc = string_windows(strings, eos=4, pad=6, block_size=8, causal=False)
    # an encoder sees packed strings after its own, as in training (batch read cyclically)
    assert enc.tolist() == [
        [0, 1, 2, 3, 4, 0, 3, 4],
        [0, 3, 4, 0, 2, 2, 4, 0],
        [0, 2, 2, 4, 0, 1, 2, 3],
    ]
    with pytest.raises(ConfigError, match="block_size"):
        string_windows([np.ones(7, dtype=np.int64)], eos=4, pad=6, block_size=8, causal=True)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="probe.windows: unknown value 'wide'"):
        load_config(None, ["probe.windows=[wide]"])
    with pytest.raises(ConfigError, match="probe.steps must be >= 1"):
        load_config(None, ["probe.steps=0"])
    with pytest.raises(ConfigError, match="window"):
        MultiHeadProbe(C, [3], window="wide")


def test_hidden_store_rows_equal_a_direct_forward_pass(tmp_path):
    from cfglab import model as model_mod
    from cfglab.model.hooks import run_with_cache

    torch.manual_seed(0)
    cfg = model_mod.GPTConfig(vocab_size=7, block_size=16, **model_mod.PRESETS["tiny"])
    for causal in (True, False):
        cfg.causal = causal
        model = model_mod.build_model(cfg).eval()
        strings = [np.array([1, 2, 3, 1]), np.array([3, 3]), np.array([2, 1, 1])]
        store = HiddenStore(tmp_path)
        names = ["blocks.1.hook_resid_post"]
        store.collect(model, "x", strings, names, eos=4, pad=6, batch_size=2)
        got = store.load("x", names[0]).astype(np.float32)

        rows = []
        for c0 in (0, 2):  # the store's batches: strings 0-1, then 2
            chunk = strings[c0 : c0 + 2]
            windows = string_windows(chunk, eos=4, pad=6, block_size=16, causal=causal)
            for j, x in enumerate(chunk):
                row = windows[j : j + 1]
                if causal:  # BOS x EOS alone, without the padding of the batch
                    row = row[:, : len(x) + 2]
                _, cache = run_with_cache(model, row, names)  # one row alone
                rows.append(cache[names[0]][0, 1 : len(x) + 1])
        np.testing.assert_allclose(got, torch.cat(rows).numpy(), rtol=2e-3, atol=2e-3)
