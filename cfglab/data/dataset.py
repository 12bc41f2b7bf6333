"""Training data as tensors: the fresh-sample stream, saved datasets, and window packing.

This is the one module of `cfglab.data` that makes torch tensors (the tensor edge). Strings are
packed as the paper does, `BOS x EOS BOS x EOS ...`, and cut into windows. Worked example with
terminals 1..3 (BOS=0, EOS=4), strings [2 1] and [3 3 1], window length 6::

    stream   0 2 1 4 0 3 3 1 4 ...
    window   0 2 1 4 0 3          (the rest of the second string is dropped)

Fresh samples (the paper's setting): the B windows of step s come from one packed stream of
strings drawn with a seed derived from (seed, split, step); each window starts at a string's BOS
(a window's last string is cut, its rest dropped), so every position sees its string's start,
which measurably helps small models (see bos_aligned_windows). The stream never depends on the
world size: every rank draws it (one vectorised sampler call, cheap next to a model step) and
rank r of W keeps windows r*B/W .. (r+1)*B/W - 1. So a resumed run, or the same run on a
different number of processes, sees the same tokens.

Two fresh samplers (`FRESH_SAMPLERS`): ``"fast"`` (the default, above) and ``"physicslm4"``, the
authors' own generator (physicslm4.py): successive steps continue one `random.Random(seed)`
stream, packed into the same BOS-aligned windows, so a resumed run restores the stream state
saved with its checkpoint (`FreshStream.stream_state` / `restore_stream_state`). Perturbed
pretraining (`noise`, a TrainingNoise of noise.py) perturbs a fraction rho of the strings before
packing, with seeds keyed by (seed, split, step, ..., NOISE_PURPOSE), so the clean strings'
randomness never changes and rho = 0 is today's stream bit for bit. Held-out compositions
(`exclude`, data.exclude; fast sampler only): strings whose sampled tree contains a named rule
combination are rejected and redrawn inside the sampler (cfglab.data.exclude), so a step's
windows stay a function of (seed, split, step) and an empty list is today's stream bit for bit.

Saved datasets (`write_dataset`, the `cfglab data` command): a folder with `tokens.npy` (the
packed stream, uint16), `offsets.npy` (where each string's BOS sits), the sampler's labels
aligned to the packed stream (`ancestors.npy`, `is_boundary.npy`, `subtree.npy` for layered
grammars, -1/False at BOS and EOS), `perturbed.npy` (with noise) and `meta.json`. `SavedDataset`
opens them with `mmap_mode="r"`, so only the windows read are loaded; window j of step s starts
at the BOS of a string drawn from (seed, split, step, j).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cfglab.config import SAMPLER_NAMES
from cfglab.config.schema import registry
from cfglab.data.exclude import check_combinations
from cfglab.data.in_context import InContextSpec, window_batch
from cfglab.data.metadata import METADATA_PURPOSE, metadata_prefixes, pack_with_metadata
from cfglab.data.noise import NOISE_PURPOSE, TrainingNoise, perturb_fraction
from cfglab.data.physicslm4 import PhysicsLM4Windows
from cfglab.data.sampler import SampleBatch, sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import ConfigError
from cfglab.grammar.cfg import Grammar
from cfglab.seeds import key_seed

TRAIN, VAL = 0, 1  # split ids in the seed key
PHYSICSLM4_PURPOSE = 0x706C6D34  # "plm4": keys the validation split's authors' stream


def pack(batch: SampleBatch, eos: int) -> np.ndarray:
    """Strings of a SampleBatch as one stream `BOS x EOS BOS x EOS ...` (int64)."""
    n = len(batch)
    lengths = batch.lengths
    out = np.empty(len(batch.ids) + 2 * n, dtype=np.int64)
    shift = 2 * np.arange(n)  # each earlier string adds a BOS and an EOS
    out[batch.offsets[:-1] + shift] = BOS
    out[batch.offsets[1:] + shift + 1] = eos
    string_of = np.repeat(np.arange(n), lengths)  # (N_total,) string index of each token
    out[np.arange(len(batch.ids)) + 2 * string_of + 1] = batch.ids
    return out


def sample_window(
    grammar: Grammar, length: int, key: tuple[int, ...], eos: int, max_len: int | None = None
) -> np.ndarray:
    """`length` tokens of packed fresh strings, determined by `key` alone. (length,) int64."""
    parts, have, i = [], 0, 0
    per_string = grammar.mean_length + 2
    while have < length:
        # enough strings for the expected need plus a margin; topped up if the draw ran short
        n = math.ceil((length - have) / per_string * 1.25) + 1
        packed = pack(sample(grammar, n, key_seed(*key, i), max_len=max_len, labels=False), eos)
        parts.append(packed)
        have += len(packed)
        i += 1
    return np.concatenate(parts)[:length]


def bos_aligned_windows(
    grammar: Grammar,
    n_windows: int,
    length: int,
    key: tuple[int, ...],
    eos: int,
    max_len: int | None = None,
    noise: TrainingNoise | None = None,
) -> np.ndarray:
    """`n_windows` windows of `length` tokens, each starting at a BOS, from one packed stream of
    fresh strings determined by `key`. A window's last string is cut at the window's end and
    its rest dropped; the next window starts at the next string. (n_windows, length) int64.

    Why BOS-aligned: with windows cut at arbitrary offsets, each window opens inside a string
    whose start it cannot see; on the quickstart that raised the trained model's next-token KL
    (0.0078, vs 0.0017 and 0.0038 in two BOS-aligned runs at the same budget).

    `noise` (active): the strings of draw i are perturbed by `perturb_fraction` seeded with
    (*key, i, NOISE_PURPOSE), a key the clean draws never use, so the clean strings stay those
    of the noiseless stream (their positions shift when perturbed strings change length)."""
    return _bos_aligned(grammar, n_windows, length, key, eos, max_len, noise)[0]


def _bos_aligned(
    grammar,
    n_windows,
    length,
    key,
    eos,
    max_len,
    noise,
    want_strings=False,
    exclude=(),
    metadata=None,
):
    """bos_aligned_windows, and with `want_strings` what it drew: (windows, the strings whose
    BOS falls in a window as a SampleBatch without labels, their (n,) perturbed mask).
    `exclude`: combinations (cfglab.data.exclude) no drawn string's tree contains. `metadata`
    (cfglab.data.metadata.Metadata): carriers drawn with (*key, i, METADATA_PURPOSE) get their
    tree's metadata after their BOS; the clean strings are the same draws."""
    active = noise is not None and noise.is_active
    per_string = grammar.mean_length + 2
    n = math.ceil(n_windows * (length + per_string) / per_string * 1.1) + 2
    parts: list[np.ndarray] = []
    drawn: list[SampleBatch] = []
    hits: list[np.ndarray] = []
    i = 0
    while True:
        b = sample(
            grammar,
            n,
            key_seed(*key, i),
            max_len=max_len,
            labels=(active and noise.needs_labels) or metadata is not None,
            exclude=exclude,
        )
        hit = np.zeros(len(b), dtype=bool)
        if active:
            b, hit = perturb_fraction(b, grammar, noise, key_seed(*key, i, NOISE_PURPOSE))
        if metadata is not None:
            prefixes = metadata_prefixes(metadata, b, key_seed(*key, i, METADATA_PURPOSE))
            parts.append(pack_with_metadata(b, eos, prefixes))
        else:
            parts.append(pack(b, eos))
        drawn.append(b)
        hits.append(hit)
        i += 1
        stream = np.concatenate(parts)
        bos_at = np.flatnonzero(stream == BOS)  # (n_strings,) where each string starts
        starts = [0]
        while len(starts) < n_windows:
            j = np.searchsorted(bos_at, starts[-1] + length)  # first string after the window
            if j == len(bos_at):
                break
            starts.append(int(bos_at[j]))
        if len(starts) == n_windows and starts[-1] + length <= len(stream):
            windows = np.stack([stream[s : s + length] for s in starts])
            if not want_strings:
                return windows, None, None
            # strings whose BOS lies inside a window: those the step trains on
            start_arr = np.array(starts)
            w = np.searchsorted(start_arr, bos_at, side="right") - 1
            used = bos_at < start_arr[w] + length
            strings = [x for b in drawn for x in b.strings()]
            chosen = [strings[k] for k in np.flatnonzero(used)]
            lengths = np.array([len(x) for x in chosen], dtype=np.int64)
            offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            batch = SampleBatch(ids=np.concatenate(chosen), offsets=offsets)
            return windows, batch, np.concatenate(hits)[used]
        n = max(16, n // 4)  # ran short (long strings drawn): top up and retry


class _Batches:
    """What FreshStream and SavedDataset share: the rank's share of a batch, and tensors and step
    ranges on top of `batch_np`."""

    def _shard(self, global_batch: int, rank: int, world_size: int) -> None:
        """This rank's share of each global batch: windows first .. first + local - 1."""
        if global_batch % world_size:
            raise ConfigError(
                f"train.batch_size {global_batch} is not divisible by the world "
                f"size {world_size}; pick a multiple of the number of processes"
            )
        self.local = global_batch // world_size
        self.first = rank * self.local  # first global window index of this rank

    def batch_np(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def batch(self, step: int) -> torch.Tensor:
        return torch.from_numpy(self.batch_np(step))

    def iterate(self, start: int, stop: int, prefetch: int = 0) -> Iterator[torch.Tensor]:
        """Batches for steps start..stop-1, optionally sampled ahead in a thread."""
        if prefetch <= 0:
            for step in range(start, stop):
                yield self.batch(step)
            return
        yield from _prefetched(self.batch, start, stop, prefetch)


class FreshStream(_Batches):
    """Batches of fresh windows: `batch(step)` -> LongTensor (B_local, window) for this rank.

    `prefetch` > 0 samples the next steps in a background thread (NumPy releases the GIL in its
    kernels, and the model step releases it in torch ops), so sampling overlaps compute.

    `sampler` (a name in FRESH_SAMPLERS): ``"fast"`` (default) makes step s's windows a function
    of (seed, split, s) alone; ``"physicslm4"`` draws successive steps' strings from the authors'
    one stream (`random.Random(seed)` for the train split, an independent stream keyed by
    (seed, split) for the others), so a resumed run must restore the stream: save
    `stream_state(step)` with the checkpoint of `step` and pass it to
    `restore_stream_state(step, state)` on resume (without it the stream replays from step 0:
    the same windows, slower). `noise` (a TrainingNoise): perturbed pretraining strings, keyed by
    (seed, split, step, ..., NOISE_PURPOSE); None or fraction 0 leaves the stream bit-identical.
    `step_strings(step)` gives the strings a step trains on and which were perturbed.
    `exclude` (data.exclude, fast sampler only): rule combinations (cfglab.data.exclude) no
    training string's tree contains; such trees are rejected and redrawn, so the stream stays a
    function of (seed, split, step), and `()` leaves it bit-identical.
    `metadata` (data.metadata, fast sampler only; cfglab.data.metadata.Metadata): a share of the
    strings carry their tree's metadata tokens after their BOS; None leaves it bit-identical.
    """

    def __init__(
        self,
        grammar: Grammar,
        window: int,
        global_batch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_len: int | None = None,
        split: int = TRAIN,
        sampler: str = "fast",
        noise: TrainingNoise | None = None,
        exclude: Sequence[str] = (),
        metadata=None,
    ) -> None:
        self._shard(global_batch, rank, world_size)
        self.grammar, self.window, self.seed, self.split = grammar, window, seed, split
        self.metadata = metadata  # a cfglab.data.metadata.Metadata: strings carry it (fast only)
        if metadata is not None and sampler != "fast":
            raise ConfigError(
                f"data.metadata needs the fast sampler's trees (data.sampler {sampler}): set "
                "data.sampler=fast or data.metadata.levels=[]"
            )
        self.global_batch = global_batch
        self.max_len = max_len
        self.eos = Vocab.from_grammar(grammar).eos
        if sampler not in FRESH_SAMPLERS:
            raise ConfigError(
                f"data.sampler {sampler!r} is unknown: choose from {', '.join(FRESH_SAMPLERS)}"
            )
        if noise is not None:
            noise.check(grammar)
        if exclude and sampler != "fast":
            raise ConfigError(
                f"data.exclude needs the fast sampler (data.sampler {sampler} replays the authors'"
                " strings, which cannot be filtered by their trees): set data.sampler=fast or "
                "data.exclude=[]"
            )
        # the held-out combinations, checked here too (names, each rule still used on its own)
        self.exclude = check_combinations(grammar, exclude, max_len) if exclude else ()
        self.sampler = sampler
        self._steps = FRESH_SAMPLERS[sampler](self, noise)

    def batch_np(self, step: int) -> np.ndarray:
        # one draw for the whole global batch (every rank draws the same strings and keeps its
        # slice): far cheaper than a draw per window, and independent of the world size
        return self._steps.windows(step)[self.first : self.first + self.local]  # (B_local, window)

    def step_strings(self, step: int) -> tuple[SampleBatch, np.ndarray]:
        """The strings step `step`'s global batch trains on (whole, also those its windows cut;
        no labels) and the (n,) bool mask of the perturbed ones, e.g. to measure the share of
        training strings outside the language with cfglab.exact.cyk.recognize."""
        return self._steps.strings(step)

    def stream_state(self, step: int) -> dict | None:
        """JSON-able state a resumed run needs to continue at `step` (None: nothing needed)."""
        return self._steps.state_at(step)

    def restore_stream_state(self, step: int, state: dict | None) -> None:
        """Continue at `step` from a `stream_state(step)` of an earlier process (None: no-op)."""
        if state is not None:
            self._steps.set_state(step, state)


class _FastSteps:
    """The fast sampler's steps: step s's windows are a function of (seed, split, s) alone."""

    def __init__(self, fs: FreshStream, noise: TrainingNoise | None) -> None:
        self.fs, self.noise = fs, noise

    def _draw(self, step: int, want_strings: bool):
        fs = self.fs
        key = (fs.seed, fs.split, step)
        return _bos_aligned(
            fs.grammar,
            fs.global_batch,
            fs.window,
            key,
            fs.eos,
            fs.max_len,
            self.noise,
            want_strings,
            fs.exclude,
            fs.metadata,
        )

    def windows(self, step: int) -> np.ndarray:
        return self._draw(step, False)[0]

    def strings(self, step: int) -> tuple[SampleBatch, np.ndarray]:
        return self._draw(step, True)[1:]

    def state_at(self, step: int) -> None:
        return None

    def set_state(self, step: int, state: dict) -> None:
        raise ConfigError(
            "this run's data stream is the fast sampler's, which needs no saved state, but the "
            "checkpoint holds a physicslm4 stream state: resume with data.sampler=physicslm4"
        )


def _physicslm4_steps(fs: FreshStream, noise: TrainingNoise | None) -> PhysicsLM4Windows:
    if fs.max_len is not None:
        raise ConfigError(
            "data.max_len does not combine with data.sampler=physicslm4 (the authors' stream "
            "has no length cap): set data.max_len to null, or use the fast sampler"
        )
    seed, split = fs.seed, fs.split
    stream_seed = seed if split == TRAIN else key_seed(seed, split, PHYSICSLM4_PURPOSE)
    return PhysicsLM4Windows(
        fs.grammar,
        stream_seed,
        fs.global_batch,
        fs.window,
        fs.eos,
        noise,
        lambda step, j: key_seed(seed, split, step, j, NOISE_PURPOSE),
    )


class InContextStream(_Batches):
    """Batches of in-context windows (data.in_context, cfglab.data.in_context): window j of step
    s draws its own grammar and strings from (seed, split, s, j), so a rank builds only its
    own windows and the stream never depends on the world size. (B_local, window) per step."""

    def __init__(
        self,
        spec: InContextSpec,
        grammar: Grammar,
        window: int,
        global_batch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: int = TRAIN,
    ) -> None:
        self._shard(global_batch, rank, world_size)
        self.spec, self.grammar, self.window, self.seed, self.split = (
            spec, grammar, window, seed, split
        )  # fmt: skip

    def batch_np(self, step: int) -> np.ndarray:
        args = (self.spec, self.grammar, self.seed, self.split, step)
        return window_batch(*args, self.first, self.local, self.window)  # (B_local, window)


# data.sampler name -> the source of a FreshStream's steps
FRESH_SAMPLERS = registry(
    SAMPLER_NAMES, {"fast": _FastSteps, "physicslm4": _physicslm4_steps}, "FRESH_SAMPLERS"
)


def _prefetched(make, start: int, stop: int, depth: int) -> Iterator[torch.Tensor]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    halt = threading.Event()

    def worker() -> None:
        try:
            for step in range(start, stop):
                item = make(step)
                while not halt.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if halt.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001  (re-raised in the consumer)
            q.put(exc)

    thread = threading.Thread(target=worker, daemon=True, name="cfglab-prefetch")
    thread.start()
    try:
        for _ in range(start, stop):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()


# ---- saved datasets --------------------------------------------------------------------------
