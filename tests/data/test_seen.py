"""The seen set (cfglab.data.seen) against brute force: every batch the training data sources
give, every rank's share, split into strings with plain Python and kept in a Python dict
(string -> first step). Fresh samples (fast with noise and max_len, physicslm4), saved
datasets, resumes that changed the data settings, spilling past the memory bound, the cache."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cfglab import rundir
from cfglab.config import load_config
from cfglab.data import seen as S
from cfglab.data.dataset import TRAIN, FreshStream
from cfglab.data.noise import TrainingNoise
from cfglab.data.sampler import sample
from cfglab.data.saved import SavedDataset, write_dataset
from cfglab.data.vocab import BOS, Vocab
from cfglab.errors import CfglabError
from cfglab.grammar import load

QUICK = str(Path(__file__).resolve().parents[2] / "configs" / "grammars" / "quickstart.cfg")
GRAMMAR = load(QUICK)
EOS = Vocab.from_grammar(GRAMMAR).eos
WINDOW = 33


def brute_force(batches) -> dict[tuple[int, ...], int]:
    """string -> first step: each window read token by token, a string kept when its BOS and
    its EOS are both in the window."""
    first: dict[tuple[int, ...], int] = {}
    for step, windows in batches:
        for row in np.asarray(windows).tolist():
            cur = None
            for tok in row:
                if tok == BOS:
                    cur = []
                elif tok == EOS:
                    if cur is not None:
                        first.setdefault(tuple(cur), step)
                    cur = None
                elif cur is not None:
                    cur.append(tok)
    return first


def ranks(make, world: int, steps: range):
    """(step, the global batch) gathered from every rank's `iterate`, as training reads it."""
    sources = [make(r, world) for r in range(world)]
    iters = [s.iterate(steps.start, steps.stop) for s in sources]
    for step in steps:
        yield step, np.concatenate([next(it).numpy() for it in iters])


def check_equal(seen: S.SeenSet, brute: dict, others: list[np.ndarray]) -> None:
    """Every brute-force string found with its first step; the others (mostly unseen, with a
    few seen ones put in) agree."""
    keys = [np.array(k, dtype=np.int64) for k in brute]
    assert seen.first_seen(keys).tolist() == list(brute.values())
    others = [*others, *keys[:10]]
    want = [brute.get(tuple(x.tolist()), -1) for x in others]
    assert seen.first_seen(others).tolist() == want
    assert 0 < sum(w < 0 for w in want) < len(want)  # the probe strings hold both kinds


def test_worked_example_and_cut_strings():
    windows = np.array([[0, 2, 1, 4, 0, 3, 3, 1], [3, 4, 0, 1, 4, 0, 2, 2]])
    starts, lengths, n_cut = S.complete_strings(windows, eos=4)
    flat = windows.reshape(-1)
    got = [flat[a : a + n].tolist() for a, n in zip(starts, lengths, strict=True)]
    assert got == [[2, 1, 4], [1, 4]]  # the second window opens mid-string: its [3 4] is not
    assert n_cut == 2  # [3 3 1 ...] and [2 2 ...]: BOS in the window, EOS beyond it
    built = S.replay([(0, windows)], eos=4)
    assert built.seen(
        [np.array([2, 1]), np.array([1]), np.array([3, 3, 1]), np.array([3])]
    ).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_metadata_tokens_after_bos_are_not_part_of_the_string():
    """A metadata run's windows (data.metadata: ids after PAD = 7 right after BOS) hold the same
    strings as a plain run's: what was seen is the string, not the metadata it came with."""
    eos = 4  # terminals 1..3, EOS 4, MASK 5, PAD 6, metadata 7, 8, ...
    plain = np.array([[0, 2, 1, 4, 0, 3, 3, 1], [3, 4, 0, 1, 4, 0, 2, 2]])
    tagged = np.array([[0, 8, 7, 2, 1, 4, 0, 9], [3, 4, 0, 7, 1, 4, 0, 2]])
    for windows, n_cut in ((plain, 2), (tagged, 2)):
        starts, lengths, got_cut = S.complete_strings(windows, eos=eos)
        flat = windows.reshape(-1)
        got = [flat[a : a + n].tolist() for a, n in zip(starts, lengths, strict=True)]
        assert got == [[2, 1, 4], [1, 4]] and got_cut == n_cut
    seen = S.replay([(0, tagged)], eos=eos)
    assert seen.seen([np.array([2, 1]), np.array([1]), np.array([8, 7, 2, 1])]).tolist() == [
        True,
        True,
        False,
    ]


def test_hashes_separate_every_short_string_and_its_prefixes():
    strings = [
        np.array(s, dtype=np.int64)
        for n in range(0, 9)
        for s in itertools.product(range(1, 4), repeat=n)
    ]
    hi, lo = S.string_hashes(strings, EOS)
    assert len(set(zip(hi.tolist(), lo.tolist(), strict=True))) == len(strings)
    assert len(set(hi.tolist())) == len(strings) and len(set(lo.tolist())) == len(strings)


@pytest.mark.parametrize("world", [1, 2])
def test_fresh_stream_with_noise_and_spills_equals_brute_force(tmp_path, monkeypatch, world):
    noise = TrainingNoise(fraction=0.3, kind="token", rate=0.2, kinds=("substitute", "insert"))

    def make(rank, size):
        kw = {"seed": 5, "rank": rank, "world_size": size, "max_len": 25, "noise": noise}
        return FreshStream(GRAMMAR, WINDOW, 8, **kw)

    brute = brute_force(ranks(make, world, range(40)))
    monkeypatch.setattr(S, "CHUNK", 64)  # many merges, and parts spilled past a tiny bound
    built = S.replay(ranks(make, 1, range(40)), EOS, memory_bound=60 * 20, folder=tmp_path)
    assert len(built.parts) > 2 and built.steps == 40
    assert built.n_strings >= len(brute) and built.n_distinct >= len(brute)
    probes = sample(GRAMMAR, 300, seed=9, labels=False).strings()
    check_equal(built, brute, probes)
    before = built.seen(probes, before=20)
    assert before.tolist() == [brute.get(tuple(x.tolist()), 99) < 20 for x in probes]


def test_physicslm4_stream_equals_brute_force():
    def make(rank, size):
        return FreshStream(
            GRAMMAR, WINDOW, 4, seed=3, rank=rank, world_size=size, sampler="physicslm4"
        )

    brute = brute_force(ranks(make, 2, range(12)))
    built = S.replay(ranks(make, 1, range(12)), EOS)
    check_equal(built, brute, sample(GRAMMAR, 200, seed=4, labels=False).strings())


def fake_run(tmp_path: Path, sets: list[str], steps: int, history: list[dict] = ()) -> Path:
    """A run folder as training leaves it (config.json, grammar.cfg, fingerprint.json,
    history.jsonl, ckpt/latest naming step `steps`), without the training."""
    cfg = load_config(None, [f"grammar.name={QUICK}", f"model.block_size={WINDOW - 1}", *sets])
    run = tmp_path / "run"
    rundir.write_run_record(run, cfg, GRAMMAR, cfg.data.dataset)
    name = rundir.checkpoint_name(steps)
    (run / rundir.CKPT / name).mkdir(parents=True)
    (run / rundir.CKPT / rundir.LATEST).write_text(name)
    for record in history:
        rundir.append_history(run, record)
    return run


def make_source(cfg, grammar, window):
    """What training builds for one process (cfglab.train.steps.make_data, minus torch)."""
    d = cfg.data
    if d.dataset:
        return SavedDataset(d.dataset, grammar, window, cfg.train.batch_size, seed=d.seed)
    return FreshStream(
        grammar, window, cfg.train.batch_size, seed=d.seed, max_len=d.max_len, sampler=d.sampler
    )


def test_saved_dataset_run_equals_brute_force(tmp_path):
    data = write_dataset(GRAMMAR, tmp_path / "data", 300, seed=2)
    run = fake_run(tmp_path, [f"data.dataset={data}", "train.batch_size=6", "data.seed=4"], 30)

    def make(rank, size):
        return SavedDataset(data, GRAMMAR, WINDOW, 6, seed=4, rank=rank, world_size=size)

    brute = brute_force(ranks(make, 3, range(30)))
    built = S.run_seen_set(run, make_source)
    # the dataset's strings no window held are not seen: probes from the dataset itself
    offsets = np.load(data / "offsets.npy")
    tokens = np.load(data / "tokens.npy").astype(np.int64)
    ends = np.append(offsets[1:], len(tokens))
    strings = [tokens[a + 1 : b - 1] for a, b in zip(offsets, ends, strict=True)]
    check_equal(built, brute, strings)


def test_resumes_with_changed_data_replay_each_stretch(tmp_path):
    history = [
        {"step": 4, "changed": {"data.seed": [0, 1], "train.max_steps": [4, 9]}},
        {"step": 6, "changed": {"train.lr": [0.01, 0.001]}},  # no data change: one stretch
        {"step": 9, "changed": {"train.batch_size": [4, 6], "train.max_steps": [9, 12]}},
    ]
    sets = ["data.seed=1", "train.batch_size=6", "train.max_steps=12", "train.lr=0.001"]
    run = fake_run(tmp_path, sets, 12, history)
    segments = S.training_segments(run, 12)
    got = [(c.data.seed, c.train.batch_size, a, b) for c, a, b in segments]
    assert got == [(0, 4, 0, 4), (1, 4, 4, 9), (1, 6, 9, 12)]

    def stretch(seed, batch, steps):
        return ranks(lambda r, w: FreshStream(GRAMMAR, WINDOW, batch, seed=seed), 1, steps)

    trained = [*stretch(0, 4, range(4)), *stretch(1, 4, range(4, 9)), *stretch(1, 6, range(9, 12))]
    built = S.run_seen_set(run, make_source)
    check_equal(built, brute_force(trained), sample(GRAMMAR, 200, seed=8, labels=False).strings())


def test_a_changed_physicslm4_stream_is_refused(tmp_path):
    history = [{"step": 2, "changed": {"data.seed": [0, 1]}}]
    run = fake_run(tmp_path, ["data.sampler=physicslm4", "data.seed=1"], 5, history)
    with pytest.raises(CfglabError, match="physicslm4 stream and resumed with changed data"):
        S.run_seen_set(run, make_source)


def test_the_cache_is_reused_and_rebuilt_when_the_record_changes(tmp_path):
    run = fake_run(tmp_path, ["train.batch_size=4"], 6)
    first = S.run_seen_set(run, make_source)
    meta = rundir.read_result(run, f"{S.CACHE}/meta")
    assert meta["fingerprint"]["steps"] == 6 and meta["entries"] == [first.n_distinct]

    def no_replay(*args):
        raise AssertionError("replayed although the cache was current")

    again = S.run_seen_set(run, no_replay)
    probes = sample(GRAMMAR, 100, seed=1, labels=False).strings()
    assert (again.first_seen(probes) == first.first_seen(probes)).all()
    on_disk = S.run_seen_set(run, no_replay, memory_bound=1)  # parts read when looked up
    assert isinstance(on_disk.parts[0], Path)
    assert (on_disk.first_seen(probes) == first.first_seen(probes)).all()
    # a damaged part is not an error: the set is replayed again
    (run / S.CACHE / "part_0000.npy").write_bytes(b"not a part")
    mended = S.run_seen_set(run, make_source)
    assert (mended.first_seen(probes) == first.first_seen(probes)).all()
    # trained on to step 8: the cache is stale and the replay covers the new steps
    name = rundir.checkpoint_name(8)
    (run / rundir.CKPT / name).mkdir()
    (run / rundir.CKPT / rundir.LATEST).write_text(name)
    longer = S.run_seen_set(run, make_source)
    assert longer.steps == 8 and longer.n_strings > first.n_strings
    with pytest.raises(CfglabError, match="holds steps 0..7 only"):
        longer.seen(probes, before=9)


def test_a_run_without_checkpoint_is_refused(tmp_path):
    run = fake_run(tmp_path, [], 1)
    (run / rundir.CKPT / rundir.LATEST).unlink()
    with pytest.raises(CfglabError, match="has no checkpoint"):
        S.run_seen_set(run, make_source)


def test_planted_strings(tmp_path):
    """A string placed in the stream is found at its step; one built to be absent is not."""
    stream = FreshStream(GRAMMAR, WINDOW, 4, seed=0)
    planted = np.array([1, 2, 3, 3, 2, 1], dtype=np.int64)  # not in the language: never drawn
    windows = stream.batch_np(3).copy()
    windows[1, : len(planted) + 2] = [BOS, *planted, EOS]  # a window now opens with it
    batches = [(s, stream.batch_np(s)) for s in range(3)] + [(3, windows)]
    built = S.replay(batches, EOS)
    assert built.first_seen([planted, planted[:-1], np.append(planted, 1)]).tolist() == [3, -1, -1]
    assert TRAIN == 0  # the split the replay reads is the training split
