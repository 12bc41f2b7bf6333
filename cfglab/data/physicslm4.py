"""The authors' generator's strings, seed for seed (facebookresearch/PhysicsLM4, `Lano-cfg`).

cfglab's fast sampler (sampler.py) draws rules with NumPy, a whole batch at once. The authors'
generator draws them one node at a time from a Python `random.Random(seed)`, and reproducing
its strings exactly lets a user share datasets with the paper's code. Its rule, exactly:

- one `random.Random(seed)` drives the whole stream, and the stream continues from one string
  to the next (string k depends on every draw before it);
- per string, from the root, each nonterminal node calls `randint(0, k - 1)` once (k = its
  number of rules, in the grammar file's order) to choose its rule, in pre-order: the node's
  own choice first, then its children expanded left to right; terminals draw nothing.

Golden values (the authors' demo): with seed 7711 the first cfg3f string has 305 tokens and
starts `3 3 3 3 1 1 2 1 3 1 2 3`; the first cfg3k string has 625 tokens and starts
`1 3 1 1 3 1 2 1 3 1 1 1`::

    stream = PhysicsLM4Stream(load("cfg3f"), seed=7711)
    first = stream.take(1)                 # SampleBatch, labels as cfglab's own sampler's
    state = stream.getstate()              # JSON-able: json.dumps(state) works
    more = stream.take(100)                # strings 2..101
    again = PhysicsLM4Stream(load("cfg3f"), seed=0)
    again.setstate(state)                  # continues exactly: again.take(100) == more

Labels are computed from the derivation performed (no re-parse): `spans` for every grammar, and
per-level `ancestors`, `subtree`, `is_boundary` for strictly layered ones, equal to what
sampler.py gives for the same tree. Uniform grammars only (the authors' draw is uniform); pure
Python, about as fast as the authors' own code. The fast sampler stays cfglab's default.
"""

from __future__ import annotations

import random

import numpy as np

from cfglab.data.sampler import SampleBatch, _strict_levels
from cfglab.errors import SamplingError
from cfglab.grammar.cfg import Grammar

STATE_FORMAT = "physicslm4-stream/1"  # tag of getstate()'s dict, checked by setstate()


class _FixedSpans:
    """Precomputed span rows in the shape SampleBatch expects of a span source."""

    def __init__(self, rows: np.ndarray, counts: np.ndarray) -> None:
        self.rows, self.counts = rows, counts

    def rows_and_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.rows, self.counts


class PhysicsLM4Stream:
    """The authors' string stream for `grammar` from `random.Random(seed)` (module docstring).

    `take(n)` returns the next n strings; `getstate()` / `setstate()` save and restore the
    position exactly (a JSON-able dict, for a checkpoint's state.json); `n_drawn` counts the
    strings drawn since the seed.
    """

    def __init__(self, grammar: Grammar, seed: int) -> None:
        for a, rs in enumerate(grammar.rules_of):
            if any(abs(grammar.rules[r].prob - 1.0 / len(rs)) > 1e-12 for r in rs):
                raise SamplingError(
                    f"the physicslm4 sampler draws rules uniformly, like the authors', but "
                    f"nonterminal {grammar.nonterminals[a]!r} of {grammar.name or 'the grammar'} "
                    "has non-uniform rule probabilities: use the fast sampler for weighted grammars"
                )
        self.grammar = grammar
        self.seed = int(seed)
        self._rng = random.Random(self.seed)
        self.n_drawn = 0
        n_nt = grammar.n_nt
        # per nonterminal: k - 1 and its rules' right-hand sides reversed (for the stack)
        self._last = [len(rs) - 1 for rs in grammar.rules_of]
        self._rhs_rev = [
            [tuple(reversed(grammar.rules[r].rhs)) for r in rs] for rs in grammar.rules_of
        ]
        self._n_nt = n_nt
        self._levels = _strict_levels(grammar)

    # ---- one string ---------------------------------------------------------------------------
    def next_ids(self) -> list[int]:
        """The next string as token ids 1..T (no labels: the fastest path)."""
        randint, n_nt, last, rhs_rev = self._rng.randint, self._n_nt, self._last, self._rhs_rev
        out: list[int] = []
        stack = [0]  # symbols still to expand, the next one on top (no recursion limit)
        while stack:
            s = stack.pop()
            if s >= n_nt:
                out.append(s - n_nt + 1)
            else:
                stack.extend(rhs_rev[s][randint(0, last[s])])
        self.n_drawn += 1
        return out

    def _next_with_spans(self, rows: list[list[int]]) -> list[int]:
        """The next string; appends its nodes' [nt, start, end] rows in pre-order to `rows`."""
        randint, n_nt, last, rhs_rev = self._rng.randint, self._n_nt, self._last, self._rhs_rev
        out: list[int] = []  # positions in rows are within this string: out starts empty
        stack = [0]
        while stack:
            s = stack.pop()
            if s < 0:  # end marker ~i: node i's subtree is complete
                rows[~s][2] = len(out)
            elif s >= n_nt:
                out.append(s - n_nt + 1)
            else:
                rows.append([s, len(out), 0])
                stack.append(~(len(rows) - 1))  # below the children: popped after them
                stack.extend(rhs_rev[s][randint(0, last[s])])
        self.n_drawn += 1
        return out

    # ---- batches ------------------------------------------------------------------------------
    def take(self, n: int, labels: bool = True) -> SampleBatch:
        """The next `n` strings as a SampleBatch (see sampler.py for the label arrays)."""
        if n < 0:
            raise SamplingError(f"cannot take n={n} strings: give n >= 0")
        strings: list[list[int]] = []
        rows: list[list[int]] = []
        counts = np.zeros(n, dtype=np.int64)
        for i in range(n):
            before = len(rows)
            strings.append(self._next_with_spans(rows) if labels else self.next_ids())
            counts[i] = len(rows) - before
        lengths = np.array([len(s) for s in strings], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((t for s in strings for t in s), dtype=np.int64, count=int(offsets[-1]))
        batch = SampleBatch(ids=ids, offsets=offsets)
        if labels:
            table = np.array(rows, dtype=np.int64).reshape(-1, 3)  # (K_total, 3)
            batch._span_parts = [_FixedSpans(table, counts)]
            if self._levels is not None:
                self._level_labels(batch, table, counts)
        return batch

    def _level_labels(self, batch: SampleBatch, table: np.ndarray, counts: np.ndarray) -> None:
        """Per-level labels from the pre-order span rows, as sampler.py defines them: in a
        strictly layered tree the level-l nodes, in pre-order, tile the string left to right."""
        levels = self._levels
        n_lev, n_tok = len(levels), batch.ids.size
        level_of = np.full(self._n_nt, -1, dtype=np.int64)
        index = np.zeros(self._n_nt, dtype=np.int16)  # nt -> index within its level
        for lev, nts in enumerate(levels):
            level_of[list(nts)] = lev
            index[list(nts)] = np.arange(len(nts))
        owner = np.repeat(np.arange(len(counts)), counts)  # (K_total,) string of each node
        node_lev = level_of[table[:, 0]]
        sizes = table[:, 2] - table[:, 1]
        batch.ancestors = np.empty((n_lev, n_tok), dtype=np.int16)
        batch.subtree = np.empty((n_lev, n_tok), dtype=np.int32)
        batch.is_boundary = np.zeros((n_lev, n_tok), dtype=bool)
        for lev in range(n_lev):
            sel = np.flatnonzero(node_lev == lev)  # this level's nodes, all strings, in order
            per_string = np.bincount(owner[sel], minlength=len(counts))
            ordinal = np.arange(sel.size) - np.repeat(
                np.cumsum(per_string) - per_string, per_string
            )
            batch.ancestors[lev] = np.repeat(index[table[sel, 0]], sizes[sel])
            batch.subtree[lev] = np.repeat(ordinal.astype(np.int32), sizes[sel])
            batch.is_boundary[lev, np.cumsum(sizes[sel]) - 1] = True  # each node's last token

    # ---- position -----------------------------------------------------------------------------
    def getstate(self) -> dict:
        """The stream's position as a JSON-able dict (Python's Mersenne Twister state)."""
        version, internal, gauss = self._rng.getstate()
        return {
            "format": STATE_FORMAT,
            "seed": self.seed,
            "n_drawn": self.n_drawn,
            "rng": [version, list(internal), gauss],
        }

    def setstate(self, state: dict) -> None:
        """Continue from a `getstate()` dict (also after a JSON round trip)."""
        try:
            if state["format"] != STATE_FORMAT:
                raise ValueError(f"format {state['format']!r}")
            version, internal, gauss = state["rng"]
            self._rng.setstate((int(version), tuple(int(x) for x in internal), gauss))
            n_drawn = int(state["n_drawn"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SamplingError(
                f"not a physicslm4 stream state ({exc}): pass a dict from "
                "PhysicsLM4Stream.getstate(), e.g. read back from a checkpoint's state.json"
            ) from None
        self.n_drawn = n_drawn


def sample_physicslm4(grammar: Grammar, n: int, seed: int, *, labels: bool = True) -> SampleBatch:
    """The first `n` strings of the authors' stream for `seed` (PhysicsLM4Stream(...).take(n))."""
    return PhysicsLM4Stream(grammar, seed).take(n, labels=labels)
