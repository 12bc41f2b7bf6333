"""The one left-to-right chart sweep behind recognition, inside and prefix probabilities.

A CYK-class DP on the binarised grammar (`normal_form.py`) that visits the chart by span end
j = 1..n and, at each end, by start k = j-1 .. 0, so every cell (k, j) is complete before it is
combined with the cells (i, k) to its left. Two things make it fast and safe:

- **Top-down filtering** (as in Earley's predictor): alongside the chart it keeps the
  *pending left-corner* weights out[k, A] = P(the first k tokens are derived and A is the next
  symbol to expand) -- the second step of the authors' two-step DP (RESEARCH.md §4.3), closed
  over left corners with LC = (I - P_L)^-1 (Jelinek & Lafferty 1991; Stolcke 1995), which also
  handles left recursion. A cell entry (i, j, A) is kept only if A is pending at i, so only
  constituents that can sit in some sentence starting with the prefix are ever built.
- **Scaling instead of logs**: the lexical leaf of token m is divided by the conditional
  probability c_m = P(x_m | x_<m) (known before token m is combined), so every stored value is a
  conditional probability. out[k] sums (with the EOS weight) to 1 and inside values stay near 1:
  no underflow on strings of any length, and log P = sum log c_m + log inside(0, n, S).

In *boolean* mode (recognition, parsing) every weight is 1 and every sum is clipped to 1: exact
membership with no floating-point question at all. The prefix dies at the first token m with
c_m = 0: that is `first_error`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cfglab.exact.normal_form import NormalForm


@njit(cache=True)
def _grow(a, need):
    # one body serves int64 and float64 arrays: numba compiles a specialisation per dtype
    if need <= a.shape[0]:
        return a
    b = np.empty(max(need, 2 * a.shape[0]), a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def sweep_one(
    x,
    is_prob,
    want_rows,
    n_sym,
    n_t,
    lex_off,
    lex_sym,
    lex_p,
    bin_off,
    bin_parent,
    bin_right,
    bin_p,
    up_off,
    up_sym,
    up_p,
    lc_off,
    lc_sym,
    lc_p,
):
    """Sweep one string x (n,) of token ids 1..T.

    Returns (log_c (n,), eos (n+1,), rows (n+1 or 0, T+1), first_error, cell_start, end_off,
    ent_off, ent_sym, ent_val). log_c[m] = log c_m (0 in boolean mode; -inf from the first
    error on); eos[k] = scaled P(string ends after k tokens); rows[k] = unnormalised next-symbol
    weights [EOS, t=1..T] after k tokens (their sum is 1 up to rounding in probability mode).
    The chart: cells (cell_start[c], j) for c in end_off[j] .. end_off[j+1]-1, with entries
    ent_off[c] .. ent_off[c+1]-1 of (ent_sym, ent_val).
    """
    n = x.shape[0]
    nn = n_sym
    has_unary = up_sym.shape[0] > 0
    log_c = np.full(n, -np.inf)
    eos = np.zeros(n + 1)
    rows = np.zeros((n + 1 if want_rows else 0, n_t + 1))
    out = np.zeros((n + 1, nn))  # pending left-corner weights, (n+1, N)
    acc = np.zeros((max(n, 1), nn))  # pre-unary sums for the cells (k, j) of the current end j
    has_acc = np.zeros(max(n, 1), np.bool_)
    fin = np.zeros(nn)
    rv = np.zeros(nn)  # the cell (k, j) scattered densely while it is combined
    base = np.zeros(nn)
    cell_start = np.empty(64, np.int64)
    ent_off = np.zeros(65, np.int64)
    ent_sym = np.empty(256, np.int64)
    ent_val = np.empty(256)
    end_off = np.zeros(n + 2, np.int64)
    n_cells = 0
    n_ent = 0
    first_error = -1

    # k = 0: only the start symbol is pending, closed over its left corners
    for q in range(lc_off[0], lc_off[1]):
        out[0, lc_sym[q]] = lc_p[q] if is_prob else 1.0
    for j in range(n + 1):
        if j > 0:
            # ---- cells ending at j: seed the lexical cell (j-1, j), divided by c_{j-1}
            tok = x[j - 1]
            scale = np.exp(-log_c[j - 1]) if is_prob else 1.0
            for q in range(lex_off[tok], lex_off[tok + 1]):
                a = lex_sym[q]
                if out[j - 1, a] > 0.0:
                    acc[j - 1, a] += lex_p[q] * scale if is_prob else 1.0
                    has_acc[j - 1] = True
            end_off[j] = n_cells
            for k in range(j - 1, -1, -1):
                if not has_acc[k]:
                    continue
                has_acc[k] = False
                # unary closure fin = U* pre, kept only where the symbol is pending at k
                for a in range(nn):
                    fin[a] = acc[k, a]
                if has_unary:
                    for b in range(nn):
                        v = acc[k, b]
                        if v != 0.0:
                            for q in range(up_off[b], up_off[b + 1]):
                                a = up_sym[q]
                                if out[k, a] > 0.0:
                                    fin[a] += up_p[q] * v if is_prob else 1.0
                # store the cell (k, j)
                cell_start = _grow(cell_start, n_cells + 1)
                ent_off = _grow(ent_off, n_cells + 2)
                ent_sym = _grow(ent_sym, n_ent + nn)
                ent_val = _grow(ent_val, n_ent + nn)
                first = n_ent
                for a in range(nn):
                    acc[k, a] = 0.0
                    v = fin[a]
                    if v != 0.0:
                        if not is_prob:
                            v = 1.0
                        ent_sym[n_ent] = a
                        ent_val[n_ent] = v
                        rv[a] = v
                        n_ent += 1
                if n_ent == first:
                    continue
                cell_start[n_cells] = k
                ent_off[n_cells] = first
                ent_off[n_cells + 1] = n_ent
                n_cells += 1
                # combine (i, k) x (k, j) -> (i, j) for every cell (i, k) ending at k
                for c2 in range(end_off[k], end_off[k + 1]):  # end_off[j] is set: k + 1 <= j
                    i = cell_start[c2]
                    for e in range(ent_off[c2], ent_off[c2 + 1]):
                        b = ent_sym[e]
                        vb = ent_val[e]
                        for r in range(bin_off[b], bin_off[b + 1]):
                            vc = rv[bin_right[r]]
                            if vc != 0.0:
                                a = bin_parent[r]
                                if out[i, a] > 0.0:
                                    acc[i, a] += bin_p[r] * vb * vc if is_prob else 1.0
                                    has_acc[i] = True
                for e in range(first, n_ent):
                    rv[ent_sym[e]] = 0.0
            end_off[j + 1] = n_cells
            # ---- pending symbols after j tokens: A -> B C pending at i, B spans (i, j) => C
            for a in range(nn):
                base[a] = 0.0
            for c in range(end_off[j], n_cells):
                i = cell_start[c]
                for e in range(ent_off[c], ent_off[c + 1]):
                    b = ent_sym[e]
                    vb = ent_val[e]
                    if i == 0 and b == 0:
                        eos[j] = vb
                    for r in range(bin_off[b], bin_off[b + 1]):
                        w = out[i, bin_parent[r]]
                        if w > 0.0:
                            base[bin_right[r]] += w * bin_p[r] * vb if is_prob else 1.0
            for cc in range(nn):
                w = base[cc]
                if w != 0.0:
                    for q in range(lc_off[cc], lc_off[cc + 1]):
                        out[j, lc_sym[q]] += w * lc_p[q] if is_prob else 1.0
            if not is_prob:
                for a in range(nn):
                    if out[j, a] > 0.0:
                        out[j, a] = 1.0
        # ---- the next-symbol weights after j tokens; c_j = the weight of the actual token
        if want_rows:
            rows[j, 0] = eos[j]
            for t in range(1, n_t + 1):
                s = 0.0
                for q in range(lex_off[t], lex_off[t + 1]):
                    s += out[j, lex_sym[q]] * lex_p[q]
                rows[j, t] = s
        if j < n:
            tok = x[j]
            s = 0.0
            for q in range(lex_off[tok], lex_off[tok + 1]):
                s += out[j, lex_sym[q]] * lex_p[q]
            if s <= 0.0:
                first_error = j
                break
            log_c[j] = np.log(s) if is_prob else 0.0
    return (
        log_c,
        eos,
        rows,
        first_error,
        cell_start[:n_cells],
        end_off,
        ent_off[: n_cells + 1],
        ent_sym[:n_ent],
        ent_val[:n_ent],
    )


def run(nf: NormalForm, x: np.ndarray, *, is_prob: bool, want_rows: bool = False) -> tuple:
    """`sweep_one` with the grammar arrays of `nf` filled in."""
    return sweep_one(
        np.ascontiguousarray(x, dtype=np.int64),
        is_prob,
        want_rows,
        nf.n_sym,
        nf.n_t,
        nf.lex_off,
        nf.lex_sym,
        nf.lex_p,
        nf.bin_off,
        nf.bin_parent,
        nf.bin_right,
        nf.bin_p,
        nf.up_off,
        nf.up_sym,
        nf.up_p,
        nf.lc_off,
        nf.lc_sym,
        nf.lc_p,
    )
