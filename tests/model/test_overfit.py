"""A tiny model of every variant memorises a small fixed batch of cfg3b strings.

The bound is not a guess: `achievable_floor` is the smallest mean loss any causal model can
reach on the batch (prefixes shared by several windows leave their next token uncertain); each
variant must come within MARGIN nats of it, far below the 1.10 nats of guessing a terminal.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import torch
import torch.nn.functional as F

from cfglab.data.vocab import Vocab
from cfglab.grammar import load
from cfglab.model import GPTConfig, build_model
from tests.oracles import sample_recursive

N_STRINGS, WINDOW, MARGIN, MAX_STEPS, LR = 4, 32, 0.1, 2000, 2e-3


def batch() -> torch.Tensor:
    """(N_STRINGS, WINDOW + 1): BOS and the first WINDOW tokens of fresh cfg3b strings."""
    grammar = load("cfg3b")
    vocab = Vocab.from_grammar(grammar)
    rng = random.Random(0)
    rows = [
        [vocab.bos, *vocab.encode(sample_recursive(grammar, rng))[:WINDOW]]
        for _ in range(N_STRINGS)
    ]
    return torch.tensor(rows)


def achievable_floor(x: torch.Tensor) -> float:
    """Mean over targets of the entropy of the next token given the whole prefix, across the
    batch: the loss of the best causal predictor of this batch (an exact oracle)."""
    nxt: dict[tuple, Counter] = defaultdict(Counter)
    for row in x.tolist():
        for t in range(1, len(row)):
            nxt[tuple(row[:t])][row[t]] += 1
    total = 0.0
    for counts in nxt.values():
        n = sum(counts.values())
        total += -sum(c * math.log(c / n) for c in counts.values())
    return total / (x.shape[0] * (x.shape[1] - 1))


def test_every_variant_overfits_a_fixed_batch(position):
    x = batch()
    floor = achievable_floor(x)
    assert 0.0 < floor < 0.2  # the first tokens are shared; the rest is memorisable
    torch.manual_seed(0)
    model = build_model(
        GPTConfig(
            vocab_size=7, position=position, block_size=WINDOW + 1, n_layer=2, n_head=4, n_embd=64
        )
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for _step in range(MAX_STEPS):
        logits = model(x[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        if loss.item() < floor + MARGIN:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < floor + MARGIN, (position, _step, loss.item(), floor)
    assert loss.item() >= floor - 1e-3  # the oracle is a true lower bound
