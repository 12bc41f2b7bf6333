"""Probing cost: 1,000 strings of 510 tokens (512-token windows with BOS and EOS) on a model of the
quickstart's shape; target <= 2 minutes and <= 2 GiB peak RSS on 2 cores.

The model is runs/quickstart's if it exists, else a random one of configs/quickstart.yaml's shape:
the cost does not depend on the weights. Its rotary positions have no trained length, so it runs
with block_size 512. The strings are cfg3j's (one level deeper than cfg3f: six probed levels,
twelve probes per layer) cut to their first 510 tokens, labels cut with them. 750 strings train
the probes, 250 score them (`probe_model`, the default ProbeConfig, no random-init twin).
Reference measured in the same run: one forward pass of the model over the same strings, the
unavoidable part; the ratio says what the probes add on top of it.

If runs/quickstart has been probed (`cfglab run configs/quickstart.yaml`), its last-layer
NT-ancestor accuracy is printed against the random-init twin per level (issue 7's goal: >= 20
points at every level).
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cfglab.analyze.probe_tree import probe_model
from cfglab.analyze.states import string_windows
from cfglab.config import ProbeConfig, load_config
from cfglab.data.sampler import SampleBatch, sample
from cfglab.data.vocab import Vocab
from cfglab.grammar import load
from cfglab.model import build_model, gpt_config

N_STRINGS, N_TRAIN, LENGTH = 1000, 750, 510
ROOT = Path(__file__).resolve().parents[1]


def _cut(batch: SampleBatch, length: int) -> SampleBatch:
    """Every string cut to its first `length` tokens, labels alike."""
    keep = np.concatenate(
        [
            np.arange(a, min(b, a + length))
            for a, b in zip(batch.offsets[:-1], batch.offsets[1:], strict=True)
        ]
    )
    lengths = np.minimum(np.diff(batch.offsets), length)
    return SampleBatch(
        ids=batch.ids[keep],
        offsets=np.concatenate([[0], np.cumsum(lengths)]),
        ancestors=batch.ancestors[:, keep],
        subtree=batch.subtree[:, keep],
        is_boundary=batch.is_boundary[:, keep],
    )


def _model(vocab_size: int):
    run = ROOT / "runs" / "quickstart"
    if (run / "ckpt" / "latest").exists():
        from cfglab.train.checkpoint import load_model

        model, _ = load_model(run)
        cfg = replace(model.config, block_size=LENGTH + 2)
        if cfg.vocab_size == vocab_size:
            big = build_model(cfg)
            big.load_state_dict(model.state_dict())
            return big.eval(), "runs/quickstart (trained weights)"
    cfg = load_config(ROOT / "configs" / "quickstart.yaml").model
    cfg.block_size = LENGTH + 2
    torch.manual_seed(0)
    return build_model(gpt_config(cfg, vocab_size)).eval(), "configs/quickstart.yaml shape"


def main() -> None:
    threads = torch.get_num_threads()
    grammar = load("cfg3j")
    vocab = Vocab.from_grammar(grammar)
    t0 = time.perf_counter()
    batch = _cut(sample(grammar, N_STRINGS, seed=0), LENGTH)
    strings = batch.strings()
    t_sample = time.perf_counter() - t0
    model, source = _model(vocab.size)
    c = model.config
    print(
        f"model: {source}, {c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, "
        f"{c.position}; torch threads {threads}; load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"strings: {N_STRINGS} of cfg3j, mean length {np.diff(batch.offsets).mean():.0f} "
        f"(cut at {LENGTH}), {batch.offsets[-1]} tokens; sampled in {t_sample:.1f} s"
    )

    # reference: one forward pass over every string
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for s in range(0, N_STRINGS, 16):
            model(
                string_windows(
                    strings[s : s + 16],
                    eos=vocab.eos,
                    pad=vocab.pad,
                    block_size=c.block_size,
                    causal=c.causal,
                )
            )
    t_fwd, c_fwd = time.perf_counter() - t0, time.process_time() - c0

    n = N_TRAIN
    off = batch.offsets
    train = SampleBatch(
        ids=batch.ids[: off[n]],
        offsets=off[: n + 1],
        ancestors=batch.ancestors[:, : off[n]],
        subtree=batch.subtree[:, : off[n]],
        is_boundary=batch.is_boundary[:, : off[n]],
    )
    test = SampleBatch(
        ids=batch.ids[off[n] :],
        offsets=off[n:] - off[n],
        ancestors=batch.ancestors[:, off[n] :],
        subtree=batch.subtree[:, off[n] :],
        is_boundary=batch.is_boundary[:, off[n] :],
    )
    settings = ProbeConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    log = lambda m: print("  " + m)  # noqa: E731
    targets = ["ancestor", "boundary"]
    res = probe_model(model, grammar, train, test, settings=settings, targets=targets, log=log)
    res = res["all"]
    t_probe, c_probe = time.perf_counter() - t0, time.process_time() - c0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)
    g = len(res["keys"])
    print(
        f"probes: {g} per layer (H={settings.n_heads}, d'={settings.d_probe}, "
        f"{settings.steps} steps x {settings.batch_size} strings)"
    )
    print(f"{'':28}{'wall s':>8}{'cpu s':>8}")
    print(f"{'forward pass (reference)':28}{t_fwd:8.1f}{c_fwd:8.1f}")
    print(f"{'probe_model (all layers)':28}{t_probe:8.1f}{c_probe:8.1f}")
    print(f"ratio probe / forward: {t_probe / t_fwd:.1f}x wall")
    print(
        f"probing 1,000 strings: {t_probe:.1f} s wall (target <= 120 s); "
        f"peak RSS {rss:.2f} GiB (target <= 2 GiB)"
    )
    quickstart_gap()


def quickstart_gap(goal: float = 20.0) -> None:
    """The quickstart run's last-layer NT-ancestor probe vs its random-init twin, per level."""
    path = ROOT / "runs" / "quickstart" / "analyze" / "probe.json"
    if not path.exists():
        print("(run `cfglab run configs/quickstart.yaml` first for its probe gap)")
        return
    out = json.loads(path.read_text())
    for table in out["tables"]:
        acc = table["accuracy"]
        if table["target"] != "ancestor" or "random_init" not in acc:
            continue
        model, base = acc["model"][-1], acc["random_init"][-1]
        gaps = [100 * (m - b) for m, b in zip(model, base, strict=True)]
        print(
            f"quickstart last layer ({out['layers'][-1]}), NT ancestor, window {table['window']}:"
        )
        for lev, m, b, maj, gap in zip(
            table["levels"], model, base, table["majority"], gaps, strict=True
        ):
            print(
                f"  level {lev}: model {100 * m:.1f}%  random-init {100 * b:.1f}%  "
                f"majority {100 * maj:.1f}%  gap {gap:+.1f} points"
            )
        print(
            f"  smallest gap {min(gaps):+.1f} points (goal >= {goal:.0f}): "
            + ("ok" if min(gaps) >= goal else "BELOW")
        )
