"""What every language beyond CFGs shares: count distributions, the sampled batch, the protocol.

A `Language` is described by a finite table of *shapes* (the counts that fix a string's form:
n for aⁿbⁿcⁿ, |w| for ww, (n, m) for aⁿbᵐcⁿdᵐ), each with its probability and its string
length; a subclass builds strings from drawn shapes (`_build`) and gives, per string, the exact
state machine of its prefixes (`_judge_one`, `_prefix_table`, `_labels_of`). This base turns
those into the sampler's and cfglab.exact's interfaces:

    batch = lang.sample(n, seed, max_len=None)   # LanguageBatch: ids, offsets, labels
    ok = lang.recognize(strings)                 # (B,) bool, the formal language (any count)
    ok, err = lang.judge(strings)                # and the first token no sentence has there
    lp = lang.log_prob(strings)                  # (B,) log P(x) under the sampling distribution
    lpp = lang.log_prefix_prob(strings)          # per string (n+1,): log P(starts with x_<=k)
    rows = lang.next_token_dist(strings)         # per string (n+1, T+1): col 0 EOS, col j token j

Strings are 1-D int arrays of token ids 1..T (cfglab.data.vocab's layout: BOS 0, terminals
1..T in `terminals` order, EOS T+1), without BOS/EOS, as for a grammar.

Membership is the formal language (a¹⁰⁰b¹⁰⁰c¹⁰⁰ is a sentence whatever the count distribution);
probabilities are those of the sampling distribution, so a sentence longer than any shape has
log P = -inf, and the rows after a prefix of zero mass are NaN (as cfglab.exact.inside leaves
the rows after a first error).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from typing import ClassVar

import numpy as np

from cfglab.errors import GrammarError, SamplingError, VocabError

BOS = 0  # cfglab.data.vocab.BOS (that module is a later stage; a test keeps the two equal)
TEXT_PREFIX = "%language"  # the first word of a language's run file text (to_text)
MAX_SHAPES = 10_000_000  # shape tables beyond this are refused (memory: 8 bytes per cell)
PART_TOKENS = 2_000_000  # tokens per part of a streamed sample (about; bounds its memory)


@dataclass(frozen=True)
class CountPmf:
    """A count N on n_min..n_max with P(N = n+1) / P(N = n) = ratio: the truncated geometric
    (ratio < 1: short strings more likely; ratio = 1: uniform; ratio > 1: long ones)."""

    n_min: int
    n_max: int
    ratio: float
    name: str = "n"  # the parameter's name in error messages

    def __post_init__(self) -> None:
        for key in ("n_min", "n_max"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise GrammarError(f"{self.name} {key}={v!r}: give a whole number >= 1")
        if self.n_max < self.n_min:
            raise GrammarError(f"{self.name}: n_max={self.n_max} < n_min={self.n_min}; raise n_max")
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf:
            raise GrammarError(f"{self.name} ratio={r!r}: give a number > 0 (1: uniform)")

    @cached_property
    def pmf(self) -> np.ndarray:
        """(n_max + 2,) float64: P(N = n) at index n, zero outside n_min..n_max (the last
        entry is a zero for counts past n_max; `at` clips there)."""
        k = np.arange(self.n_max - self.n_min + 1)
        # normalised in log space so a large ratio**k cannot overflow
        logw = k * math.log(self.ratio)
        w = np.exp(logw - logw.max())
        out = np.zeros(self.n_max + 2)
        out[self.n_min : self.n_max + 1] = w / w.sum()
        return out

    @cached_property
    def tail(self) -> np.ndarray:
        """(n_max + 2,) float64: P(N >= n) at index n (1 for n <= n_min, 0 past n_max)."""
        p = self.pmf
        return np.concatenate([np.cumsum(p[::-1])[::-1][:-1], [0.0]])

    def at(self, table: np.ndarray, n: np.ndarray | int) -> np.ndarray:
        """table[n] for counts n >= 0, counts past n_max read the final zero."""
        return table[np.minimum(n, self.n_max + 1)]


@dataclass
class LanguageBatch:
    """`n` strings concatenated, with their structure labels (the analogue of SampleBatch).

    labels[name] is (N_total,) int64, aligned with `ids`; every built-in language defines
    - "block": the index of the token's segment (aⁿbⁿcⁿ: 0 for a, 1 for b, 2 for c; ww: 0 in
      the first w, 1 in the second; aⁿbᵐcⁿdᵐ: 0..3),
    - "offset": the token's position within its segment (0-based),
    - "dependent": the position, within the string, of the earlier token it must agree with
      (ww: the token it copies; aⁿbⁿcⁿ: the same offset in the previous segment; aⁿbᵐcⁿdᵐ: c
      to a and d to b at the same offset), -1 for a token that depends on none.
    """

    ids: np.ndarray  # (N_total,) int64 token ids 1..T, strings concatenated
    offsets: np.ndarray  # (n+1,) int64: string i is ids[offsets[i]:offsets[i+1]]
    labels: dict[str, np.ndarray] | None = None  # name -> (N_total,) int64; None: labels=False

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def strings(self) -> list[np.ndarray]:
        return np.split(self.ids, self.offsets[1:-1])


def token_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For strings of the given (n,) lengths: (offsets (n+1,), owner (N_total,) the string of
    each token, pos (N_total,) each token's position within its string), all int64."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(offsets[-1]) - offsets[owner]
    return offsets, owner, pos


def _check_sample_args(n, seed, max_len) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SamplingError(f"cannot sample n={n!r} strings: give a whole number n >= 0")
    if isinstance(seed, (int, np.integer)) and seed < 0:
        raise SamplingError(f"seed={seed} is negative: give a seed >= 0")
    if max_len is not None and (
        isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1
    ):
        raise SamplingError(f"max_len={max_len!r}: give a whole number of tokens >= 1, or None")


@dataclass(frozen=True, eq=True)
class Language:
    """Base of the built-in languages: sampling and the exact interface from a subclass's
    shape table and per-string prefix machine. Subclasses are frozen dataclasses whose fields
    are their parameters (so `spec` round-trips through `cfglab.languages.load_language`)."""

    name: ClassVar[str] = ""  # the registry name (each subclass sets it)

    # ---- what a subclass provides ------------------------------------------------------------
    @property
    def terminals(self) -> tuple[str, ...]:  # token id j is terminals[j - 1]
        raise NotImplementedError

    def _shapes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params (K, d) int64, probs (K,) float64 summing to 1, lengths (K,) int64)."""
        raise NotImplementedError

    def _build(self, params: np.ndarray, rng: np.random.Generator, labels: bool) -> LanguageBatch:
        """The strings of drawn shapes (n, d), further randomness from `rng`."""
        raise NotImplementedError

    def _judge_one(self, x: np.ndarray) -> tuple[bool, int]:
        """(x is a sentence, first index e such that x[:e+1] is no sentence's prefix, or -1)."""
        raise NotImplementedError

    def _log_prob_one(self, x: np.ndarray) -> float:
        """log P(x) under the sampling distribution, -inf outside its support."""
        raise NotImplementedError

    def _prefix_table(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lpp (n+1,) log prefix masses, rows (n+1, T+1) next-symbol distributions, NaN after
        a prefix of zero mass)."""
        raise NotImplementedError

    def _labels_of(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The sampler's labels of a sentence x (its structure is unique)."""
        raise NotImplementedError

    # ---- the facts the pipeline reads off a grammar -------------------------------------------
    @property
    def n_t(self) -> int:
        return len(self.terminals)

    @property
    def eos(self) -> int:
        return self.n_t + 1

    @property
    def levels(self) -> None:
        """No derivation-tree levels: the layered-grammar code paths skip a language."""
        return None

    @property
    def mean_length(self) -> float:
        _, probs, lengths = self._shape_table
        return float((probs * lengths).sum())

    @property
    def length_sd(self) -> float:
        _, probs, lengths = self._shape_table
        mean = (probs * lengths).sum()
        return float(math.sqrt(max((probs * (lengths - mean) ** 2).sum(), 0.0)))

    @property
    def label_classes(self) -> dict[str, int]:
        """Classes of each categorical label ("block", "offset"), fixed by the parameters so
        that train and test strings agree (a probe's output size)."""
        raise NotImplementedError

    def to_text(self) -> str:
        """The run file's text (grammar.cfg of a run trained on the language)."""
        return f"{TEXT_PREFIX} {self.spec}\n"

    @property
    def spec(self) -> str:
        """'name key=value ...': every parameter, the text `load_language` reads back."""
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)]
        return " ".join([self.name, *parts])

    @cached_property
    def _shape_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._shapes()  # built on first use and kept

    # ---- sampling --------------------------------------------------------------------------
    def sample(
        self, n: int, seed: int, *, max_len: int | None = None, labels: bool = True
    ) -> LanguageBatch:
        """`n` strings: the parts of `sample_parts` joined (the same strings). The same
        (language, n, seed, max_len) gives the same batch (strings depend on n, as the grammar
        sampler's do). With max_len, the distribution conditioned on length <= max_len (exactly:
        longer shapes get probability 0), as the grammar sampler's rejection gives."""
        parts = list(self.sample_parts(n, seed, max_len=max_len, labels=labels))
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        joined = None
        if labels:
            joined = {k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels}
        return LanguageBatch(np.concatenate([p.ids for p in parts]), offsets, joined)

    def sample_parts(
        self, n: int, seed: int, *, max_len: int | None = None, labels: bool = True
    ) -> Iterator[LanguageBatch]:
        """The batch of `sample` in parts of about PART_TOKENS tokens (at least one part, so
        n = 0 gives one empty part), in constant memory whatever n: part i of a seed is drawn
        with np.random.default_rng([seed, i]). Arguments are checked before the first draw."""
        _check_sample_args(n, seed, max_len)
        params, probs, lengths = self._shape_table
        if max_len is not None:
            probs = np.where(lengths <= max_len, probs, 0.0)
            if probs.sum() <= 0:
                raise SamplingError(
                    f"max_len={max_len} is below the shortest string of {self.name} "
                    f"({int(lengths[self._shape_table[1] > 0].min())} tokens): raise max_len"
                )
        cdf = np.cumsum(probs / probs.sum())
        last = int(np.flatnonzero(probs > 0)[-1])
        per_part = max(1, int(PART_TOKENS / max(self.mean_length, 1.0)))
        return self._draw_parts(n, seed, labels, params, cdf, last, per_part)

    def _draw_parts(self, n, seed, labels, params, cdf, last, per_part) -> Iterator[LanguageBatch]:
        for i, start in enumerate(range(0, max(n, 1), per_part)):
            rng = np.random.default_rng([int(seed), i])
            # inverse CDF; a zero-probability shape is never picked, rounding at 1 the last one
            u = rng.random(min(per_part, n - start))
            pick = np.minimum(np.searchsorted(cdf, u, side="right"), last)
            yield self._build(params[pick], rng, labels)

    # ---- exact: the interface of cfglab.exact.cyk and cfglab.exact.inside --------------------
    def check_strings(self, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each string as an int64 array; a VocabError names the first bad string and token."""
        out = []
        for s, x in enumerate(strings):
            arr = np.asarray(x)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise VocabError(
                    f"string {s}: expected a 1-D array of token ids 1..{self.n_t}, got shape "
                    f"{arr.shape} dtype {arr.dtype}; encode names with Vocab.encode"
                )
            arr = arr.astype(np.int64)
            bad = np.flatnonzero((arr < 1) | (arr > self.n_t))
            if bad.size:
                raise VocabError(
                    f"string {s}: token id {arr[bad[0]]} at position {bad[0]} is not a "
                    f"terminal of {self.name} (ids 1..{self.n_t}; strings carry no BOS/EOS/PAD)"
                )
            out.append(arr)
        return out

    def judge(self, strings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """((B,) bool membership, (B,) int64 first error or -1), as cfglab.exact.cyk.judge."""
        verdicts = [self._judge_one(x) for x in self.check_strings(strings)]
        ok = np.array([v[0] for v in verdicts], dtype=bool)
        err = np.array([v[1] for v in verdicts], dtype=np.int64)
        return ok, err

    def recognize(self, strings: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) bool: each string is a sentence of the formal language."""
        return self.judge(strings)[0]

    def first_error(self, strings: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) int64: the first token after which no sentence starts so, else -1."""
        return self.judge(strings)[1]

    def log_prob(self, strings: Sequence[np.ndarray]) -> np.ndarray:
        """(B,) float64: log P(x) under the sampling distribution, -inf outside its support."""
        return np.array([self._log_prob_one(x) for x in self.check_strings(strings)])

    def log_prob_and_next(
        self, strings: Sequence[np.ndarray]
    ) -> Iterator[tuple[float, np.ndarray]]:
        """Per string (log P(x), (n+1, T+1) next-symbol rows), as inside.log_prob_and_next."""
        for x in self.check_strings(strings):
            yield self._log_prob_one(x), self._prefix_table(x)[1]

    def log_prefix_prob(self, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per string (n+1,) float64: log P(a sampled string starts with x_1..x_k), k = 0..n."""
        return [self._prefix_table(x)[0] for x in self.check_strings(strings)]

    def next_token_dist(self, strings: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per string (n+1, T+1): row k = P(next | x_1..x_k), column 0 EOS, column j token j;
        rows after a prefix of zero mass are NaN."""
        return [self._prefix_table(x)[1] for x in self.check_strings(strings)]

    def parse(self, strings: Sequence[np.ndarray]) -> list[dict[str, np.ndarray] | None]:
        """Per string, the labels the sampler gives it (LanguageBatch's) if it is a sentence,
        else None: a language's analogue of a parse tree."""
        xs = self.check_strings(strings)
        ok, _ = self.judge(xs)
        return [self._labels_of(x) if good else None for x, good in zip(xs, ok, strict=True)]


def normalised_rows(weights: np.ndarray, log_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of non-negative weights (R, C), each scaled by exp(-log_scale[r]) -> (log of the
    true row sums (R,), rows normalised to sum 1, NaN where the sum is 0)."""
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = weights / total[:, None]
        lpp = np.where(total > 0, log_scale + np.log(total), -np.inf)
    rows[total <= 0] = np.nan
    return lpp, rows
