"""Saved datasets: strings and labels written once, memory-mapped for training (`cfglab data`).

A folder with `tokens.npy` (the packed stream `BOS x EOS BOS x EOS ...`, uint16), `offsets.npy`
(where each string's BOS sits), the sampler's labels aligned to the packed stream
(`ancestors.npy`, `is_boundary.npy`, `subtree.npy` for layered grammars, -1/False at BOS and
EOS), `perturbed.npy` when noise was applied, and `meta.json`. `SavedDataset` opens them with
`mmap_mode="r"`, so only the windows read are loaded; window j of step s starts at the BOS of a
string drawn from (seed, split, step, j). This module makes tensors (it is the tensor edge, with
dataset.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from cfglab.data.dataset import FRESH_SAMPLERS, TRAIN, _Batches, key_seed, pack
from cfglab.data.noise import NOISE_PURPOSE, TrainingNoise, perturb_fraction
from cfglab.data.physicslm4 import PhysicsLM4Stream
from cfglab.data.sampler import sample
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import CfglabError, ConfigError
from cfglab.grammar.cfg import Grammar

META = "meta.json"
MAX_BYTES = 8 * 1024**3  # what write_dataset may hold in memory while it writes


def check_memory(grammar: Grammar, n: int, max_len: int | None) -> None:
    """CfglabError (naming `cfglab data`'s -n) when writing `n` strings would hold more than
    MAX_BYTES in memory: write_dataset keeps the whole dataset (tokens uint16, labels per
    level) until it saves it."""
    per_token = 2 + (7 * len(grammar.levels) if grammar.levels else 0)  # bytes
    mean = min(grammar.mean_length, max_len or math.inf) + 2  # tokens per string, BOS and EOS
    need = n * mean * per_token
    if need > MAX_BYTES:
        raise CfglabError(
            f"-n {n}: about {need / 1024**3:.1f} GiB of strings and labels would be held "
            f"in memory while writing (limit {MAX_BYTES / 1024**3:.0f} GiB): give a "
            f"smaller -n (at most ~{int(MAX_BYTES / (mean * per_token)):,})"
        )


def read_meta(path: str | Path) -> dict:
    """A saved dataset's meta.json (OSError / ValueError if missing or not JSON)."""
    return json.loads((Path(path) / META).read_text())


def meta_hash(path: str | Path) -> str | None:
    """The sha256 of a saved dataset's meta.json (what a run's fingerprint.json records of the
    dataset it trained on), or None where there is no dataset (moved, deleted)."""
    try:
        data = (Path(path) / META).read_bytes()
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest()


def write_dataset(
    grammar: Grammar,
    out: str | Path,
    n: int,
    seed: int = 0,
    max_len: int | None = None,
    chunk: int = 20_000,
    *,
    sampler: str = "fast",
    noise: TrainingNoise | None = None,
) -> Path:
    """Sample `n` strings and write them as a memory-mappable dataset folder (see above).

    `sampler="physicslm4"`: the strings are exactly the authors' stream for `seed`, in order
    (PhysicsLM4Stream). `noise` (active): chunk c's strings are perturbed by `perturb_fraction`
    seeded with (seed, 2, c, NOISE_PURPOSE), labels kept aligned, and `perturbed.npy` holds the
    (n,) bool mask of perturbed strings; `meta.json` records the sampler and the noise."""
    if sampler not in FRESH_SAMPLERS:
        raise ConfigError(
            f"data.sampler {sampler!r} is unknown: choose from {', '.join(FRESH_SAMPLERS)}"
        )
    if sampler == "physicslm4" and max_len is not None:
        raise ConfigError(
            "data.max_len does not combine with data.sampler=physicslm4 (the authors' stream "
            "has no length cap): set data.max_len to null, or use the fast sampler"
        )
    active = noise is not None and noise.is_active
    if active:
        noise.check(grammar)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = Vocab.from_grammar(grammar)
    levels = grammar.levels
    tokens, offsets, labels = [], [], {"ancestors": [], "subtree": [], "is_boundary": []}
    hits = []
    stream = PhysicsLM4Stream(grammar, seed) if sampler == "physicslm4" else None
    total = 0
    for c, start in enumerate(range(0, n, chunk)):
        k = min(chunk, n - start)
        if stream is not None:
            b = stream.take(k, labels=levels is not None)
        else:
            b = sample(grammar, k, key_seed(seed, 2, c), max_len=max_len, labels=levels is not None)
        if active:
            b, hit = perturb_fraction(b, grammar, noise, key_seed(seed, 2, c, NOISE_PURPOSE))
            hits.append(hit)
        packed = pack(b, vocab.eos)
        k = len(b)
        tokens.append(packed.astype(np.uint16))
        offsets.append(b.offsets[:-1] + 2 * np.arange(k) + total)
        if levels is not None:
            pos = np.arange(len(b.ids)) + 2 * np.repeat(np.arange(k), b.lengths) + 1
            for name, fill in (("ancestors", -1), ("subtree", -1), ("is_boundary", False)):
                src = getattr(b, name)  # (L, N_total)
                arr = np.full((src.shape[0], len(packed)), fill, dtype=src.dtype)
                arr[:, pos] = src
                labels[name].append(arr)
        total += len(packed)
    np.save(out / "tokens.npy", np.concatenate(tokens))
    np.save(out / "offsets.npy", np.concatenate(offsets).astype(np.int64))
    if levels is not None:
        for name, parts in labels.items():
            np.save(out / f"{name}.npy", np.concatenate(parts, axis=1))
    if active:
        np.save(out / "perturbed.npy", np.concatenate(hits))
    meta = {
        "grammar": grammar.name,
        "grammar_text": grammar.to_text(),
        "n_strings": n,
        "seed": seed,
        "max_len": max_len,
        "sampler": sampler,
        "noise": dataclasses.asdict(noise) if active else None,
        "n_tokens": total,
        "eos": vocab.eos,
        "vocab_size": vocab.size,
    }
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


class SavedDataset(_Batches):
    """A dataset folder from `write_dataset`, memory-mapped. Same `batch`/`iterate` as
    FreshStream; window j of step s starts at a position drawn from (seed, split, step, j)."""

    def __init__(
        self,
        path: str | Path,
        grammar: Grammar,
        window: int,
        global_batch: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: int = TRAIN,
        noise: TrainingNoise | None = None,
    ) -> None:
        path = Path(path)
        try:
            meta = read_meta(path)
            self.tokens = np.load(path / "tokens.npy", mmap_mode="r")
            self.offsets = np.load(path / "offsets.npy", mmap_mode="r")
            text = meta["grammar_text"]
            if text.startswith("%language"):  # a language beyond context-free
                from cfglab.languages import load_language

                written = load_language(text)
            else:
                written = Grammar.from_text(text, name=str(meta["grammar"]))
            eos, size = int(meta["eos"]), int(meta["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError, CfglabError) as exc:
            raise ConfigError(
                f"data.dataset: {path} is not a saved dataset ({type(exc).__name__}: {exc}); "
                "write one with `cfglab data CONFIG --out DIR`"
            ) from None
        vocab = Vocab.from_grammar(grammar)
        if written != grammar or (eos, size) != (vocab.eos, vocab.size):
            raise ConfigError(
                f"data.dataset: {path} was written for another grammar ({meta['grammar']}); "
                "set grammar.name to the grammar it was written for, or write a dataset for this "
                "one with `cfglab data`"
            )
        offsets = np.asarray(self.offsets)
        if (
            self.tokens.ndim != 1
            or offsets.ndim != 1
            or len(offsets) == 0
            or (len(self.tokens) and int(self.tokens.max()) >= size)
            or (np.diff(offsets) <= 0).any()
            or offsets[0] != 0
            or offsets[-1] >= len(self.tokens)
            or (np.asarray(self.tokens[offsets]) != BOS).any()
        ):
            raise ConfigError(
                f"data.dataset: {path} is damaged (token ids beyond the vocabulary, or offsets "
                "that do not point at each string's BOS); write it again with `cfglab data`"
            )
        want = dataclasses.asdict(noise) if noise is not None and noise.fraction > 0 else None
        if want is not None:
            want["kinds"] = list(want["kinds"])
        if meta.get("noise") != want:
            raise ConfigError(
                f"data.dataset: {path} was written with noise {meta.get('noise')}, but data.noise "
                f"is {want}; a saved dataset carries its noise: write one with this data.noise"
            )
        if len(self.tokens) < window:
            raise ConfigError(
                f"data.dataset: {path} has {len(self.tokens)} tokens, fewer than "
                f"one window ({window}); write more strings"
            )
        self._shard(global_batch, rank, world_size)
        self.meta, self.window, self.seed, self.split = meta, window, seed, split

    def batch_np(self, step: int) -> np.ndarray:
        # windows start at a string's BOS, as in the fresh stream; any string whose window fits
        n_fit = int(np.searchsorted(self.offsets, len(self.tokens) - self.window, side="right"))
        starts = [
            int(
                self.offsets[
                    np.random.default_rng(key_seed(self.seed, self.split, step, j)).integers(n_fit)
                ]
            )
            for j in range(self.first, self.first + self.local)
        ]
        return np.stack([self.tokens[s : s + self.window] for s in starts]).astype(np.int64)


def read_training_strings(dataset_dir: str | Path) -> set[bytes]:
    """The strings of a saved dataset folder (`tokens.npy`: BOS x EOS ..., `offsets.npy`: each
    string's BOS) as a set of their int64 bytes, for the diversity family's
    'seen_in_training'."""
    d = Path(dataset_dir)
    try:
        tokens = np.load(d / "tokens.npy", mmap_mode="r")
        offsets = np.load(d / "offsets.npy")
        eos = read_meta(d)["eos"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{d}: not a saved dataset ({exc}); the run's data.dataset must be a "
            "folder written by `cfglab data`"
        ) from None
    out = set()
    for start in offsets:
        seg = np.asarray(tokens[start + 1 : start + 1 + 4096], dtype=np.int64)  # BOS skipped
        end = np.flatnonzero(seg == eos)
        out.add((seg[: end[0]] if len(end) else seg).tobytes())
    return out
