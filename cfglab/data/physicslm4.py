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

The fast sampler's guards hold here too (`check_physicslm4`, before any draw): a weighted
grammar is refused, and so is one whose strings are astronomically long (sampler.check_length:
the authors' stream has no length cap); a string whose tree grows past the fast sampler's node
budget stops with a SamplingError; seeds are >= 0 (Python's `random.Random(-s)` is
`random.Random(s)`). `sample_physicslm4_parts` streams a long sample in parts.
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from cfglab.data import sampler as fast
from cfglab.data.noise import TrainingNoise, perturb_fraction
from cfglab.data.sampler import SampleBatch, check_length, strict_levels, strings_per_part
from cfglab.data.vocab import BOS
from cfglab.errors import SamplingError
from cfglab.grammar.cfg import Grammar

STATE_FORMAT = "physicslm4-stream/1"  # tag of getstate()'s dict, checked by setstate()
# Tree nodes per part of a streamed sample: pure Python draws ~1 node per microsecond, so a
# part takes a fraction of a second and `cfglab sample --compat physicslm4 | head` prints at once
_PART_NODES = 200_000


def check_physicslm4(grammar: Grammar) -> None:
    """SamplingError unless the authors' generator can draw `grammar`: uniform rule choices (it
    draws `randint`), and strings short enough to sample without a length cap (the fast
    sampler's check_length, since the authors' stream has none)."""
    name = grammar.name or "the grammar"
    if not isinstance(grammar, Grammar):
        raise SamplingError(
            f"the physicslm4 sampler draws a grammar's derivations, and {name!r} is a language "
            "beyond context-free: use data.sampler fast"
        )
    for a, rs in enumerate(grammar.rules_of):
        if any(abs(grammar.rules[r].prob - 1.0 / len(rs)) > 1e-12 for r in rs):
            raise SamplingError(
                f"the physicslm4 sampler draws rules uniformly, like the authors', but "
                f"nonterminal {grammar.nonterminals[a]!r} of {name} has non-uniform rule "
                "probabilities: use the fast sampler for weighted grammars"
            )
    try:
        check_length(grammar)
    except SamplingError:
        raise SamplingError(
            f"strings of {name} are too long for the physicslm4 sampler, which has no length "
            f"cap (mean length {grammar.mean_length:.3g} tokens, sd {grammar.length_sd:.3g}): "
            "use the fast sampler with a cap (cfglab sample --max-len; config data.sampler fast "
            "and data.max_len)"
        ) from None


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SamplingError(
            f"seed={seed!r}: give a whole number >= 0 (Python's random.Random(-s) is "
            "random.Random(s), so a negative seed would silently repeat another)"
        )
    return int(seed)


class _FixedSpans:
    """Precomputed span rows in the shape SampleBatch expects of a span source."""

    def __init__(self, rows: np.ndarray, counts: np.ndarray) -> None:
        self.rows, self.counts = rows, counts

    def rows_and_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, counts, depth of each row): the depth from the nesting of the pre-order rows
        (a node's ancestors are the rows before it whose span still covers its start)."""
        depth = np.zeros(len(self.rows), dtype=np.int64)
        k = 0
        for count in self.counts.tolist():
            open_ends: list[int] = []  # ends of the ancestors of the current row
            for i in range(k, k + count):
                start, end = int(self.rows[i, 1]), int(self.rows[i, 2])
                while open_ends and start >= open_ends[-1]:  # no epsilon rules: spans not empty
                    open_ends.pop()
                depth[i] = len(open_ends)
                open_ends.append(end)
            k += count
        return self.rows, self.counts, depth


class PhysicsLM4Stream:
    """The authors' string stream for `grammar` from `random.Random(seed)` (module docstring).

    `take(n)` returns the next n strings; `getstate()` / `setstate()` save and restore the
    position exactly (a JSON-able dict, for a checkpoint's state.json); `n_drawn` counts the
    strings drawn since the seed.
    """

    def __init__(self, grammar: Grammar, seed: int) -> None:
        check_physicslm4(grammar)
        self.grammar = grammar
        self.seed = _check_seed(seed)
        self._rng = random.Random(self.seed)
        self.n_drawn = 0
        n_nt = grammar.n_nt
        # per nonterminal: k - 1 and its rules' right-hand sides reversed (for the stack)
        self._last = [len(rs) - 1 for rs in grammar.rules_of]
        self._rhs_rev = [
            [tuple(reversed(grammar.rules[r].rhs)) for r in rs] for rs in grammar.rules_of
        ]
        self._n_nt = n_nt
        self._levels = strict_levels(grammar)

    # ---- one string ---------------------------------------------------------------------------
    def next_ids(self) -> list[int]:
        """The next string as token ids 1..T (no labels: the fastest path)."""
        randint, n_nt, last, rhs_rev = self._rng.randint, self._n_nt, self._last, self._rhs_rev
        out: list[int] = []
        stack = [0]  # symbols still to expand, the next one on top (no recursion limit)
        budget = fast._MAX_BATCH_NODES  # nonterminal nodes (read now: a test may lower it)
        while stack:
            s = stack.pop()
            if s >= n_nt:
                out.append(s - n_nt + 1)
            else:
                budget -= 1
                if budget < 0:
                    self._runaway()
                stack.extend(rhs_rev[s][randint(0, last[s])])
        self.n_drawn += 1
        return out

    def _runaway(self) -> None:
        name = self.grammar.name or "the grammar"
        raise SamplingError(
            f"a string of {name} grew past {fast._MAX_BATCH_NODES:,} tree nodes (its strings "
            f"are long with heavy tails; mean length {self.grammar.mean_length:.3g}): use the "
            "fast sampler with a cap (cfglab sample --max-len; data.sampler fast, data.max_len)"
        )

    def _next_with_spans(self, rows: list[list[int]]) -> list[int]:
        """The next string; appends its nodes' [nt, start, end] rows in pre-order to `rows`."""
        randint, n_nt, last, rhs_rev = self._rng.randint, self._n_nt, self._last, self._rhs_rev
        out: list[int] = []  # positions in rows are within this string: out starts empty
        stack = [0]
        budget = fast._MAX_BATCH_NODES  # nonterminal nodes, as next_ids
        while stack:
            s = stack.pop()
            if s < 0:  # end marker ~i: node i's subtree is complete
                rows[~s][2] = len(out)
            elif s >= n_nt:
                out.append(s - n_nt + 1)
            else:
                budget -= 1
                if budget < 0:
                    self._runaway()
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


def sample_physicslm4_parts(
    grammar: Grammar, n: int, seed: int, *, labels: bool = True
) -> Iterator[SampleBatch]:
    """The strings of `sample_physicslm4(grammar, n, seed)`, the same in the same order, in
    parts of about _PART_NODES tree nodes, each as soon as it is drawn: output starts at once
    and memory stays bounded for any n. Everything is checked before the first draw."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SamplingError(f"cannot sample n={n!r} strings: give a whole number n >= 0")
    stream = PhysicsLM4Stream(grammar, seed)
    per_part = strings_per_part(grammar, _PART_NODES)
    return (stream.take(min(per_part, n - i), labels=labels) for i in range(0, n, per_part))


# ---- training windows from the one stream -----------------------------------------------------
class PhysicsLM4Windows:
    """Step-indexed training windows drawn from one PhysicsLM4Stream, for dataset.FreshStream.

    Step s packs the stream's next strings as `BOS x EOS BOS x EOS ...` into `n_windows`
    windows of `length` tokens, each starting at a string's BOS (a window's last string is cut
    and its rest dropped), exactly like the fast stream's BOS-aligned windows; step s+1
    continues the stream where step s stopped. So step s depends on every step before it, and
    `windows(step)` gets there by restoring the stream state recorded at the start of a recent
    step (the last `keep` steps started, and step 0), or else by replaying from the nearest
    earlier recorded step: any call order gives the same windows, in-order calls are cheapest.
    A resumed run passes the state saved at its checkpoint (`state_at(step)`) to
    `set_state(step, state)` and continues without replaying.

    With `noise` active, string j of step s is perturbed as `perturb_fraction` decides with the
    seed `noise_seed(s, j)`; perturbed strings take their perturbed length in the windows.
    Thread-safe: a prefetching thread and the training loop may call it concurrently.
    """

    def __init__(
        self,
        grammar: Grammar,
        seed: int,
        n_windows: int,
        length: int,
        eos: int,
        noise: TrainingNoise | None = None,
        noise_seed: Callable[[int, int], int] | None = None,
        keep: int = 64,
    ) -> None:
        self.grammar, self.n_windows, self.length, self.eos = grammar, n_windows, length, eos
        self.noise = noise if noise is not None and noise.is_active else None
        if self.noise is not None:
            self.noise.check(grammar)
            if noise_seed is None:
                raise ValueError("noise needs noise_seed(step, j) for its per-string seeds")
        self._noise_seed = noise_seed
        self._stream = PhysicsLM4Stream(grammar, seed)
        self._step = 0  # the live stream stands at the start of this step
        self._keep = keep
        self._states: OrderedDict[int, dict] = OrderedDict({0: self._stream.getstate()})
        self._lock = threading.Lock()

    def windows(self, step: int) -> np.ndarray:
        """(n_windows, length) int64: step `step`'s windows."""
        with self._lock:
            self._seek(step)
            return self._fill()[0]

    def strings(self, step: int) -> tuple[SampleBatch, np.ndarray]:
        """Step `step`'s strings, whole (also the cut ones), as a SampleBatch without labels,
        and the (n,) bool mask of those that were perturbed."""
        with self._lock:
            self._seek(step)
            _, strings, hits = self._fill()
        lengths = np.array([len(x) for x in strings], dtype=np.int64)
        offsets = np.zeros(len(strings) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(strings) if strings else np.empty(0, dtype=np.int64)
        return SampleBatch(ids=ids.astype(np.int64), offsets=offsets), np.array(hits, dtype=bool)

    def state_at(self, step: int) -> dict:
        """The JSON-able stream state at the start of `step` (what a checkpoint saves)."""
        with self._lock:
            if step not in self._states:
                self._seek(step)
                self._record(step)
            return {"step": step, "stream": self._states[step]}

    def set_state(self, step: int, state: dict) -> None:
        """Continue from a `state_at(step)` dict: the next windows(step) needs no replay."""
        if not isinstance(state, dict) or state.get("step") != step or "stream" not in state:
            raise SamplingError(
                f"not the physicslm4 stream state of step {step}: pass the dict that "
                f"state_at({step}) returned (saved in the checkpoint of that step)"
            )
        with self._lock:
            self._stream.setstate(state["stream"])  # validates the stream state itself
            self._step = step
            self._record(step)

    # ---- internals ----------------------------------------------------------------------------
    def _record(self, step: int) -> None:
        self._states[step] = self._stream.getstate()
        self._states.move_to_end(step)
        while len(self._states) > self._keep + 1:  # the recent steps, and step 0 always
            oldest = next(k for k in self._states if k != 0)
            del self._states[oldest]

    def _seek(self, step: int) -> None:
        """Put the live stream at the start of `step`: restore a recorded state, or replay."""
        if step < 0:
            raise SamplingError(f"step {step}: steps count from 0")
        if step == self._step:
            return
        base = max(k for k in self._states if k <= step)  # step 0 is always recorded
        if not (base <= self._step <= step):  # else replaying on from here is shorter
            self._stream.setstate(self._states[base])
            self._step = base
        while self._step < step:  # replay whole steps (their windows are discarded)
            self._fill()

    def _next_string(self, j: int) -> tuple[list[int], bool]:
        if self.noise is None:
            return self._stream.next_ids(), False
        if self.noise.needs_labels:
            batch = self._stream.take(1, labels=True)
        else:
            ids = np.array(self._stream.next_ids(), dtype=np.int64)
            batch = SampleBatch(ids=ids, offsets=np.array([0, ids.size], dtype=np.int64))
        batch, hit = perturb_fraction(
            batch, self.grammar, self.noise, self._noise_seed(self._step, j)
        )
        return batch.ids.tolist(), bool(hit[0])

    def _fill(self) -> tuple[np.ndarray, list[np.ndarray], list[bool]]:
        """Draw the live step's strings, advance to the next step and record its state."""
        out = np.empty((self.n_windows, self.length), dtype=np.int64)
        strings: list[np.ndarray] = []
        hits: list[bool] = []
        for w in range(self.n_windows):
            buf: list[int] = []
            while len(buf) < self.length:
                ids, hit = self._next_string(len(strings))
                strings.append(np.array(ids, dtype=np.int64))
                hits.append(hit)
                buf.append(BOS)
                buf.extend(ids)
                buf.append(self.eos)
            out[w] = buf[: self.length]
        self._step += 1
        self._record(self._step)
        return out, strings, hits
