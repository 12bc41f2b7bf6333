"""Models and generators behind one interface, so every metric runs on any of them (stage 6a).

A *model* is a `LogProbFn`: a batch of token sequences (1-D int arrays of vocab ids, each
starting with BOS) -> for each, a (len, V) array of next-token log-probabilities, row k =
log p(next token | tokens[:k+1]); V >= T+2 so columns 1..T are the terminals and T+1 is EOS
(cfglab.data.vocab). A *generator* is a `GenerateFn`: prompts (each starting with BOS) and a
numpy Generator -> full sequences (prompt + completion, EOS included if produced).

Adapters: a trained GPT (`torch_logprob_fn`, `torch_generate_fn`), the grammar's exact
distribution (`exact_logprob_fn`, the oracle: accuracy 1, KL 0), a uniform baseline
(`uniform_logprob_fn`), and ancestral sampling from any LogProbFn (`sampling_generate_fn`).
torch is imported only by the torch adapters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cfglab.data.vocab import BOS
from cfglab.errors import CfglabError
from cfglab.grammar.cfg import Grammar

LogProbFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
GenerateFn = Callable[[list[np.ndarray], np.random.Generator], list[np.ndarray]]


def exact_logprob_fn(grammar: Grammar) -> LogProbFn:
    """The oracle model: the grammar's exact next-token distribution (cfglab.exact.inside) as
    log-probabilities over the vocabulary (V = T+4; -inf on BOS/MASK/PAD). Every sequence
    (after its BOS) must be a viable prefix of the language."""
    from cfglab.exact import inside

    t = grammar.n_t
    cols = np.concatenate([[t + 1], np.arange(1, t + 1)])

    def model(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        strings = [np.asarray(s[1:], dtype=np.int64) for s in batch]
        out = []
        for p in inside.next_token_dist(grammar, strings):
            lq = np.full((p.shape[0], t + 4), -np.inf)
            with np.errstate(divide="ignore"):
                lq[:, cols] = np.log(p)
            out.append(lq)
        return out

    return model


def uniform_logprob_fn(vocab_size: int) -> LogProbFn:
    """A baseline model: uniform over the whole vocabulary of `vocab_size` ids."""

    def model(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [np.full((len(s), vocab_size), -math.log(vocab_size)) for s in batch]

    return model


def sampling_generate_fn(
    model: LogProbFn, eos_id: int, *, max_new_tokens: int, temperature: float = 1.0
) -> GenerateFn:
    """Ancestral sampling from any LogProbFn, one token per call on the whole prefix (no cache:
    for the oracle and small baselines; trained GPTs use `torch_generate_fn`)."""

    def generate(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        seqs = [list(map(int, p)) for p in prompts]
        live = list(range(len(seqs)))
        for _ in range(max_new_tokens):
            if not live:
                break
            rows = model([np.asarray(seqs[i], dtype=np.int64) for i in live])
            still = []
            for i, lq in zip(live, rows, strict=True):
                logits = lq[-1] / temperature
                p = np.exp(logits - logits.max())
                tok = int(rng.choice(len(p), p=p / p.sum()))
                seqs[i].append(tok)
                if tok != eos_id:
                    still.append(i)
            live = still
        return [np.asarray(s, dtype=np.int64) for s in seqs]

    return generate


def torch_logprob_fn(model, *, pad_id: int, device: str = "cpu") -> LogProbFn:
    """A GPT (forward: (B, T) ids -> (B, T, V) logits) as a LogProbFn; pads with `pad_id` on the
    right (causal attention: padding never changes earlier rows)."""
    import torch

    block = model.config.block_size

    def fn(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
        longest = max(len(s) for s in batch)
        if longest > block:
            raise CfglabError(
                f"a sequence of {longest} tokens exceeds the model's block_size "
                f"{block}; evaluate shorter strings (--max-len)"
            )
        idx = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        for i, s in enumerate(batch):
            idx[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        with torch.no_grad():
            logits = model(idx.to(device)).float()  # (B, T, V)
            lq = torch.log_softmax(logits, dim=-1).double().cpu().numpy()
        return [lq[i, : len(s)] for i, s in enumerate(batch)]

    return fn


def torch_generate_fn(
    model, *, eos_id: int, max_new_tokens: int, temperature: float = 1.0, device: str = "cpu"
) -> GenerateFn:
    """cfglab.evaluate.generate.generate (batched, KV cache) as a GenerateFn."""
    import torch

    from cfglab.evaluate.generate import generate

    def fn(prompts: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(rng.integers(2**62)))
        outs = generate(
            model,
            [torch.as_tensor(p, dtype=torch.long, device=device) for p in prompts],
            max_new_tokens,
            eos_id=eos_id,
            temperature=temperature,
            generator=gen,
        )
        return [o.cpu().numpy().astype(np.int64) for o in outs]

    return fn


def sequence_log_probs(
    model: LogProbFn,
    strings: Sequence[np.ndarray],
    eos_id: int,
    batch_size: int = 32,
    temperature: float = 1.0,
) -> np.ndarray:
    """log Q_T(x EOS) for each string, (N,) float64: the full-vocabulary, unsmoothed
    probability under the model sampled at `temperature` (each row's log-probs divided by T and
    renormalised)."""
    out = []
    for b in range(0, len(strings), batch_size):
        chunk = [np.asarray(s, dtype=np.int64) for s in strings[b : b + batch_size]]
        rows = model([np.concatenate([[BOS], s]) for s in chunk])
        for s, lq in zip(chunk, rows, strict=True):
            if temperature != 1.0:
                z = lq / temperature  # (n+1, V)
                m = z.max(axis=1, keepdims=True)
                lq = z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))
            nxt = np.concatenate([s, [eos_id]])
            out.append(float(lq[np.arange(len(nxt)), nxt].sum()))
    return np.asarray(out, dtype=np.float64)
