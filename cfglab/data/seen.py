"""Which strings a run trained on: its training stream replayed into a set of exact hashes.

What "seen" means. A run trains on windows of block_size + 1 tokens packed as
`BOS x EOS BOS x EOS ...` (cfglab.data.dataset; each window starts at a BOS and its last string
is cut). A string x is *seen in training before step k* iff a window of some data step s < k of
the run's training stream (the global batch: every rank's windows) holds `BOS x EOS` whole, its
BOS, every token and its EOS. Worked example, EOS = 4, one window of 8 tokens::

    window   0 2 1 4 0 3 3 1      seen: [2 1]; [3 3 1 ...] is cut (its EOS is not in the window)

A cut string is not seen (the model never saw it end; `n_cut` counts them). The data steps are
those the run trained: 0 .. S-1 (the loop's optimizer steps 1 .. S), S the step of its latest
checkpoint, across resumes; a resume that changed data settings (history.jsonl) replays each
stretch of steps with its own settings (`training_segments`). Validation windows are not
training. Every kind of training data replays: fresh samples (fast or physicslm4 sampler, with
training noise: perturbed strings are strings the run saw) and saved datasets; the one refusal
is a physicslm4 stream whose data settings changed on a resume (its state ran on across them).

The set. A seen string is kept as a 128-bit hash of `x EOS`: simple tabulation hashing over
(position, token), two independent 64-bit XOR sums (`string_hashes`). Two different strings
share it with probability 2^-128 (a random table), so a lookup against N strings errs with
probability <= N * 2^-128: 3e-27 for N = 1e9, far below every other error here, which is why
no string is stored to confirm a match. Beside each hash, the first data step that saw it, so
one replay answers for every checkpoint (`SeenSet.seen(strings, before=k)`). Sorted arrays
(hi, lo, first): 20 bytes per distinct string, looked up by binary search.

Memory bound. `SeenBuilder` holds at most `memory_bound` bytes (MEMORY_BOUND, 512 MiB: ~27M
distinct strings) of sorted entries plus one chunk of raw ones (CHUNK entries, 20 MiB); a merge
briefly needs about twice what it merges. Past the bound the entries go to disk as a part, and a
lookup searches every part, reading one at a time. The cache of a run (eval/seen/: the parts and
meta.json with the fingerprint of what they were built from) is written through cfglab.rundir.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cfglab import rundir
from cfglab.config import ExperimentConfig, config_from_dict, flat
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import CfglabError
from cfglab.grammar.cfg import Grammar

MEMORY_BOUND = 512 * 1024**2  # bytes of sorted entries a builder holds before spilling
CHUNK = 1 << 20  # raw entries gathered before they are sorted and merged
# the hash, the strings hashed and the cache format: a change invalidates every cache
SEEN_VERSION = 2  # 2: a string's metadata tokens (data.metadata) are not part of it
CACHE = f"{rundir.EVAL}/seen"  # a run's cache folder (not a result family: eval/*.json only)
_KEYS = (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03)  # the two tabulation hashes' keys

Part = tuple[np.ndarray, np.ndarray, np.ndarray]  # (hi, lo, first): sorted by (hi, lo)


# ---- hashing ---------------------------------------------------------------------------------
def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping): a bijection that scatters every input bit,
    standing in for a table of independent random entries."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def segment_hashes(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Part:
    """(hi, lo) hashes of the segments tokens[starts[i] : starts[i] + lengths[i]] (each `x
    EOS`, lengths >= 1): per key, the XOR over the segment of mix(key + (position << 32 |
    token)). (n,) uint64 each, and an empty (0,) uint32 for `first`."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = len(starts)
    if n == 0:
        empty = np.zeros(0, dtype=np.uint64)
        return empty, empty.copy(), np.zeros(0, dtype=np.uint32)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # position in segment
    at = np.repeat(starts, lengths) + within  # (N,) index into tokens
    cell = (within.astype(np.uint64) << np.uint64(32)) | tokens[at].astype(np.uint64)
    hi, lo = (np.bitwise_xor.reduceat(_mix(cell + np.uint64(k)), offsets[:-1]) for k in _KEYS)
    return hi, lo, np.zeros(0, dtype=np.uint32)


def string_hashes(strings: Sequence[np.ndarray], eos: int) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) of each string x (terminal ids, no BOS/EOS), hashed as `x EOS`."""
    parts = [np.append(np.asarray(x, dtype=np.int64), eos) for x in strings]
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    hi, lo, _ = segment_hashes(tokens, starts, lengths)
    return hi, lo


def complete_strings(windows: np.ndarray, eos: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The strings whole inside windows (B, W): (starts, lengths, n_cut), starts indexing the
    flattened windows at each string's first token after BOS and its metadata tokens (ids after
    PAD, data.metadata: not part of the string), lengths counting its EOS; n_cut the strings
    whose BOS is in a window but not their EOS (module docstring)."""
    b, w = windows.shape
    flat = windows.reshape(-1)
    bos = np.flatnonzero(flat == BOS)  # (n,) every string that starts in a window
    ends = np.append(np.flatnonzero(flat == eos), flat.size)  # EOS positions, then a sentinel
    next_eos = ends[np.searchsorted(ends, bos)]  # the first EOS after each BOS
    next_bos = np.append(bos[1:], flat.size)
    window_end = (bos // w + 1) * w
    whole = next_eos < np.minimum(next_bos, window_end)
    # the first token after each BOS that is not a metadata token (eos + 2 is PAD)
    plain = np.append(np.flatnonzero(flat <= eos + 2), flat.size)
    first = plain[np.searchsorted(plain, bos[whole] + 1)]
    return first, next_eos[whole] + 1 - first, int((~whole).sum())


# ---- the set ---------------------------------------------------------------------------------
def _dedupe(parts: Sequence[Part]) -> Part:
    """One sorted part of the entries of `parts`: each (hi, lo) once, with its least step."""
    hi, lo, first = (np.concatenate([p[i] for p in parts]) for i in range(3))
    order = np.lexsort((first, lo, hi))  # by hi, then lo, then the earliest step
    hi, lo, first = hi[order], lo[order], first[order]
    keep = np.ones(len(hi), dtype=bool)
    keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    return hi[keep], lo[keep], first[keep]


def _lookup(part: Part, qhi: np.ndarray, qlo: np.ndarray) -> np.ndarray:
    """(n,) int64: each query's first step in `part`, -1 where absent."""
    hi, lo, first = part
    left = np.searchsorted(hi, qhi, side="left")
    right = np.searchsorted(hi, qhi, side="right")
    out = np.full(len(qhi), -1, dtype=np.int64)
    for q in np.flatnonzero(right > left):  # equal high halves: almost always one entry
        k = left[q] + int(np.searchsorted(lo[left[q] : right[q]], qlo[q]))
        if k < right[q] and lo[k] == qlo[q]:
            out[q] = int(first[k])
    return out


PART_DTYPE = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("first", "<u4")])  # 20 bytes


def save_part(path: Path, part: Part) -> None:
    """One sorted part as a .npy of PART_DTYPE records (the same bytes for the same part),
    atomically through cfglab.rundir."""
    records = np.empty(len(part[0]), dtype=PART_DTYPE)
    records["hi"], records["lo"], records["first"] = part
    buf = io.BytesIO()
    np.save(buf, records, allow_pickle=False)
    rundir.write_bytes_atomic(path, buf.getvalue())


def load_part(path: Path) -> Part:
    records = np.load(io.BytesIO(rundir.read_bytes(path)), allow_pickle=False)
    if records.dtype != PART_DTYPE:
        raise ValueError(f"{path}: records of {records.dtype}, not {PART_DTYPE}")
    return tuple(np.ascontiguousarray(records[k]) for k in PART_DTYPE.names)


@dataclass
class SeenSet:
    """The strings a stream of windows held whole, as hashes with their first step (module
    docstring). `parts`: sorted (hi, lo, first) arrays in memory, or the .npy path of a part
    spilled to disk (read when looked up)."""

    parts: list[Part | Path]
    eos: int
    steps: int  # data steps replayed: 0 .. steps - 1
    n_strings: int  # complete strings in the windows, repeats counted
    n_cut: int  # strings cut at a window's end (never seen)
    sizes: list[int]  # entries per part

    @property
    def n_distinct(self) -> int:
        """Distinct seen strings (with spilled parts, an upper bound: a string may be in two)."""
        return sum(self.sizes)

    def first_seen(self, strings: Sequence[np.ndarray]) -> np.ndarray:
        """(n,) int64: the first data step whose windows held `BOS x EOS`, -1 if none."""
        qhi, qlo = string_hashes(strings, self.eos)
        best = np.full(len(qhi), -1, dtype=np.int64)
        for part in self.parts:
            found = _lookup(_load(part), qhi, qlo)
            better = (found >= 0) & ((best < 0) | (found < best))
            best[better] = found[better]
        return best

    def seen(self, strings: Sequence[np.ndarray], before: int | None = None) -> np.ndarray:
        """(n,) bool: seen in data steps 0 .. before - 1 (None: every replayed step)."""
        stop = self.steps if before is None else before
        if stop > self.steps:
            raise CfglabError(
                f"asked which strings were seen before step {stop}, but the set holds steps "
                f"0..{self.steps - 1} only; rebuild it from the run's latest checkpoint"
            )
        first = self.first_seen(strings)
        return (first >= 0) & (first < stop)


def _load(part: Part | Path) -> Part:
    return load_part(part) if isinstance(part, Path) else part


class SeenBuilder:
    """Windows in, a SeenSet out, in bounded memory (module docstring). `folder`: where parts
    spill past `memory_bound` (None: in memory only, and a CfglabError past the bound)."""

    def __init__(
        self, eos: int, *, memory_bound: int = MEMORY_BOUND, folder: Path | None = None
    ) -> None:
        self.eos, self.memory_bound, self.folder = eos, memory_bound, folder
        self.pending: list[Part] = []  # raw (hi, lo, first) of the latest steps
        self.n_pending = 0
        self.runs: list[Part] = []  # sorted parts in memory, sizes falling (a binary counter)
        self.parts: list[Part | Path] = []  # spilled parts
        self.sizes: list[int] = []  # their entries
        self.steps = self.n_strings = self.n_cut = 0

    def add(self, windows: np.ndarray, step: int) -> None:
        """The windows (B, W) of data step `step` (steps in increasing order)."""
        windows = np.asarray(windows, dtype=np.int64)
        starts, lengths, n_cut = complete_strings(windows, self.eos)
        hi, lo, _ = segment_hashes(windows.reshape(-1), starts, lengths)
        self.pending.append((hi, lo, np.full(len(hi), step, dtype=np.uint32)))
        self.n_pending += len(hi)
        self.n_strings += len(hi)
        self.n_cut += n_cut
        self.steps = max(self.steps, step + 1)
        if self.n_pending >= CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.runs.append(_dedupe(self.pending))
            self.pending, self.n_pending = [], 0
        # merge equal-sized neighbours, so each entry is re-sorted O(log N) times in all
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            self.runs[-2:] = [_dedupe(self.runs[-2:])]
        held = sum(len(r[0]) for r in self.runs) * PART_DTYPE.itemsize
        if held > self.memory_bound:
            self._spill(_dedupe(self.runs))
            self.runs = []

    def _spill(self, part: Part) -> None:
        if self.folder is None:
            raise CfglabError(
                f"the seen set outgrew its memory bound ({self.memory_bound / 1024**2:.0f} MiB) "
                "and has no folder to spill to: give SeenBuilder a folder"
            )
        path = self.folder / f"part_{len(self.parts):04d}.npy"
        save_part(path, part)
        self.parts.append(path)
        self.sizes.append(len(part[0]))

    def finish(self) -> SeenSet:
        """The set; with a folder, every part is also saved there (the run's cache)."""
        self._flush()
        last = _dedupe(self.runs) if self.runs else _dedupe([_empty()])
        if self.folder is not None:
            self._spill(last)
            self.parts[-1] = last  # the last part stays in memory as well
        else:
            self.parts.append(last)
            self.sizes.append(len(last[0]))
        return SeenSet(self.parts, self.eos, self.steps, self.n_strings, self.n_cut, self.sizes)


def _empty() -> Part:
    return np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint32)


def replay(
    batches: Iterable[tuple[int, np.ndarray]],
    eos: int,
    *,
    memory_bound: int = MEMORY_BOUND,
    folder: Path | None = None,
) -> SeenSet:
    """A SeenSet from (data step, windows (B, W)) pairs in increasing step order."""
    builder = SeenBuilder(eos, memory_bound=memory_bound, folder=folder)
    for step, windows in batches:
        builder.add(windows, step)
    return builder.finish()


# ---- a run's training stream -----------------------------------------------------------------
def _is_data_key(key: str) -> bool:
    """Whether a setting changes which windows a step trains on."""
    return (key.startswith("data.") and key != "data.prefetch") or key == "train.batch_size"


def _read_history(run_dir: Path) -> list[dict]:
    """history.jsonl's records {step, changed: {key: [old, new]}}, in file order."""
    path = Path(run_dir) / rundir.HISTORY
    if not path.is_file():
        return []
    text = rundir.read_bytes(path).decode("utf-8", errors="replace")
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [{"step": int(r["step"]), "changed": dict(r["changed"])} for r in records]
    except (ValueError, KeyError, TypeError) as exc:
        raise CfglabError(
            f"{path}: not the record of resumes cfglab writes ({type(exc).__name__}: {exc}); "
            "without it the steps before each resume cannot be replayed: restore the file"
        ) from None


def training_segments(run_dir: Path, steps: int) -> list[tuple[ExperimentConfig, int, int]]:
    """(config, start, stop): the run's data steps 0 .. steps - 1 in stretches, each under the
    data settings it trained with (config.json holds the last; history.jsonl each resume's
    changes, undone backwards). CfglabError for a physicslm4 stream whose data settings
    changed: its state ran on from one stretch into the next, which a replay cannot restore."""
    current = rundir.read_run_config(run_dir).to_dict()
    stretches: list[tuple[dict, int, int]] = []
    stop = steps
    for record in reversed(_read_history(run_dir)):
        start = min(record["step"], stop)
        stretches.append((json.loads(json.dumps(current)), start, stop))
        for key, (old, _new) in record["changed"].items():
            node = current
            *path, last = key.split(".")
            for part in path:
                node = node[part]
            node[last] = old
        stop = start
    stretches.append((current, 0, stop))
    # one segment per run of equal data settings (a resume that changed only e.g. the lr)
    merged: list[tuple[dict, int, int]] = []
    for data, start, stop in reversed(stretches):
        if stop <= start:
            continue
        if merged and _data_settings(merged[-1][0]) == _data_settings(data):
            merged[-1] = (merged[-1][0], merged[-1][1], stop)
        else:
            merged.append((data, start, stop))
    out = [(config_from_dict(d), start, stop) for d, start, stop in merged]
    if len(out) > 1 and any(c.data.sampler == "physicslm4" and not c.data.dataset for c, *_ in out):
        raise CfglabError(
            f"{run_dir} trained on the physicslm4 stream and resumed with changed data settings "
            f"({rundir.HISTORY}): that stream carries its state from one stretch into the next, "
            "which a replay cannot rebuild; seen_in_training is not available for this run"
        )
    return out


def _data_settings(data: dict) -> dict:
    return {k: v for k, v in flat(data).items() if _is_data_key(k)}


def replay_fingerprint(run_dir: Path, steps: int) -> dict:
    """What a run's seen set is built from: its training record (fingerprint.json: config,
    grammar, saved dataset), its resumes' changes, the steps replayed, the hash version."""
    path = Path(run_dir) / rundir.HISTORY
    history = rundir.read_bytes(path) if path.is_file() else b""
    return {
        "version": SEEN_VERSION,
        "record": rundir.read_fingerprint(run_dir),
        "history": rundir.sha256(history),
        "steps": steps,
    }


def read_cache(run_dir: Path, fingerprint: dict, memory_bound: int = MEMORY_BOUND):
    """The cached SeenSet of a run if it was built from `fingerprint`, else None (missing,
    stale, damaged or of another version: rebuilt by the caller)."""
    try:
        meta = rundir.read_result(run_dir, f"{CACHE}/meta")
    except CfglabError:
        return None
    if not meta or meta.get("fingerprint") != fingerprint:
        return None
    folder = Path(run_dir) / CACHE
    try:
        paths = [folder / f"part_{i:04d}.npy" for i in range(meta["n_parts"])]
        sizes = [int(n) for n in meta["entries"]]
        if not all(p.is_file() for p in paths) or len(sizes) != len(paths):
            return None
        in_memory = sum(sizes) * PART_DTYPE.itemsize <= memory_bound
        parts = [load_part(p) if in_memory else p for p in paths]
        if in_memory and [len(p[0]) for p in parts] != sizes:
            return None
        counts = [int(meta[k]) for k in ("eos", "steps", "n_strings", "n_cut")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return SeenSet(parts, *counts, sizes)


def run_seen_set(
    run_dir: str | Path,
    make_source: Callable[[ExperimentConfig, Grammar, int], object],
    *,
    memory_bound: int = MEMORY_BOUND,
) -> SeenSet:
    """The SeenSet of a run's training up to its latest checkpoint: from its cache (eval/seen/)
    when that was built from the same record, else by replaying the stream and caching it.
    `make_source(config, grammar, window)` is the training loop's own data builder (an object
    with `batch_np(step)` -> the global batch (B, window)), called once per segment."""
    run_dir = Path(run_dir)
    steps = rundir.latest_step(run_dir)
    if steps is None:
        raise CfglabError(f"{run_dir} has no checkpoint: train it before asking what it has seen")
    fingerprint = replay_fingerprint(run_dir, steps)
    cached = read_cache(run_dir, fingerprint, memory_bound)
    if cached is not None:
        return cached
    cfg = rundir.read_run_config(run_dir)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    window = cfg.model.block_size + 1
    segments = training_segments(run_dir, steps)
    rundir.write_result(run_dir, f"{CACHE}/meta", {"fingerprint": None})  # old parts: void

    def batches() -> Iterable[tuple[int, np.ndarray]]:
        for config, start, stop in segments:
            source = make_source(config, grammar, window)
            for step in range(start, stop):
                yield step, source.batch_np(step)

    eos = Vocab.from_grammar(grammar).eos
    seen = replay(batches(), eos, memory_bound=memory_bound, folder=run_dir / CACHE)
    meta = {
        "fingerprint": fingerprint,
        "n_parts": len(seen.parts),
        "entries": seen.sizes,
        "eos": eos,
        "steps": seen.steps,
        "n_strings": seen.n_strings,
        "n_cut": seen.n_cut,
        "memory_bound": memory_bound,
    }
    rundir.write_result(run_dir, f"{CACHE}/meta", meta)
    return seen
