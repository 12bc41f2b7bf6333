"""Attention statistics against hand-built patterns with known answers."""

import numpy as np
import pytest
import torch

from cfglab.analyze.attention_stats import AttentionStats, adjacent_ends
from cfglab.data.tree import shallowest_end

# A hand-labelled 12-token string with three levels (0 = root):
#   level 1 subtrees: [0..3] [4..8] [9..11]
#   level 2 subtrees: [0 1] [2 3] [4 5 6] [7 8] [9 10] [11]
SUBTREE = np.array(
    [
        [0] * 12,
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2],
        [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5],
    ]
)
IS_BOUNDARY = np.zeros((3, 12), dtype=bool)
for _lev in range(3):
    _s = SUBTREE[_lev]
    IS_BOUNDARY[_lev] = np.append(_s[1:] != _s[:-1], True)


def _uniform(n: int, causal: bool, window: int) -> torch.Tensor:
    """(window, window) uniform attention over each query's keys (BOS at 0, tokens at 1..n)."""
    a = torch.ones(window, window)
    if causal:
        a = a.tril()
    return a / a.sum(-1, keepdim=True)


def _adjacent_pattern(level: int, causal: bool, window: int) -> torch.Tensor:
    """Uniform everywhere, except that every level-`level` NT end attends exactly (and only) to
    the adjacent NT ends of that level."""
    a = _uniform(12, causal, window).clone()
    for q, keys in adjacent_ends(SUBTREE[level], IS_BOUNDARY[level], causal):
        a[q + 1] = 0
        a[q + 1, [k + 1 for k in keys]] = 1 / len(keys)
    return a


def _stats(patterns: list[torch.Tensor], causal: bool, window: int) -> dict:
    st = AttentionStats(1, len(patterns), 3, max_len=window, causal=causal)
    lab = st.add_labels(SUBTREE, IS_BOUNDARY, window)
    st.add_pattern(0, torch.stack(patterns), lab)
    return st.result()


def test_adjacent_ends_by_hand():
    # level 2 ends: 1 3 6 8 10 11; causal: each end -> the previous subtree's end
    assert adjacent_ends(SUBTREE[2], IS_BOUNDARY[2], True) == [
        (3, [1]),
        (6, [3]),
        (8, [6]),
        (10, [8]),
        (11, [10]),
    ]
    assert adjacent_ends(SUBTREE[1], IS_BOUNDARY[1], False) == [(3, [8]), (8, [3, 11]), (11, [8])]
    assert shallowest_end(IS_BOUNDARY).tolist() == [-1, 2, -1, 1, -1, -1, 2, -1, 1, -1, 2, 1]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("level", [1, 2])
def test_boundary_score_is_one_on_exact_pattern_and_chance_on_uniform(level, causal):
    window = 14 if causal else 20  # an encoder's row may be longer than the string
    res = _stats(
        [_adjacent_pattern(level, causal, window), _uniform(12, causal, window)], causal, window
    )
    score = res["head_scores"][f"boundary_l{level}"][0]
    assert score[0] == pytest.approx(1.0)
    # chance by hand: mean over queries of (#adjacent ends) / (#keys of the query)
    pairs = adjacent_ends(SUBTREE[level], IS_BOUNDARY[level], causal)
    chance = np.mean([len(ks) / (q + 2 if causal else window) for q, ks in pairs])
    assert res["chance"][f"boundary_l{level}"] == pytest.approx(chance)
    assert score[1] == pytest.approx(chance)
    assert score[1] < 0.5


def test_previous_and_current_token_scores():
    n, window = 12, 14
    prev = torch.zeros(window, window)
    prev[0, 0] = 1
    prev[torch.arange(1, window), torch.arange(0, window - 1)] = 1  # every row: the key before
    res = _stats([prev, torch.eye(window)], True, window)
    assert res["head_scores"]["previous_token"][0] == pytest.approx([1.0, 0.0])
    assert res["head_scores"]["current_token"][0] == pytest.approx([0.0, 1.0])
    # uniform causal chance of the current token: mean of 1/(a+2)
    assert res["chance"]["current_token"] == pytest.approx(np.mean(1 / (np.arange(n) + 2)))


def test_mean_by_distance_matches_a_loop():
    rng = np.random.default_rng(0)
    window = 14
    a = torch.tensor(rng.random((2, window, window))).tril()
    a = a / a.sum(-1, keepdim=True)
    res = _stats(list(a), True, window)
    for h in range(2):
        for i, d in enumerate(res["distances"]):
            vals = [float(a[h, q + 1, q + 1 - d]) for q in range(d, 12)]
            assert res["mean_by_distance"][0][h][i] == pytest.approx(np.mean(vals))


@pytest.mark.parametrize("causal", [True, False])
def test_residuals_vanish_for_purely_positional_attention(causal):
    # A that depends on a - b only equals its own position bias: every residual mean is 0.
    window = 14
    d = torch.arange(window)[:, None] - torch.arange(window)[None, :]
    a = torch.exp(-0.3 * d.abs().double())
    if causal:
        a = a * (d >= 0)
    res = _stats([a], causal, window)
    for key in ("end_offset", "end_to_end", "adjacent_by_rank"):
        vals = np.array(res[key], dtype=float)
        assert np.nanmax(np.abs(vals)) < 1e-12, key
        assert np.isfinite(vals).any()


def test_residual_of_an_end_attending_head_is_positive():
    # all the weight of every level-2 end on the previous level-2 end: Result 8 > 0 at level 2
    window = 14
    a = _adjacent_pattern(2, True, window)
    res = _stats([a], True, window)
    assert res["end_to_end"][0][0][2] > 0.05
    # Result 7: keys at level-2 ends (delta = 0) receive more than their position bias
    deltas = res["deltas"]
    assert res["end_offset"][0][0][2][deltas.index(0)] > 0.02
    assert res["end_offset"][0][0][2][deltas.index(0)] > res["end_offset"][0][0][2][deltas.index(1)]
