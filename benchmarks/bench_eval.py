"""Evaluation throughput: generations judged per second, KL strings per second, and the share of
time spent in the model (generation, forward passes) vs the exact stage (CYK, inside).

Setup: cfg3b (strings of ~275 tokens), a 2-layer 64-dim rotary GPT at random initialisation
(speed does not depend on the weights; EOS is masked out of its logits so that every generation
runs to 280 new tokens, about one cfg3b string), torch on one thread. The reference measured in
the same run is the exact stage alone on the same number of true strings, and the generation
without the KV cache, so the printed ratios hold on any machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

import cfglab.evaluate.adapters as AD
import cfglab.evaluate.run as R
from cfglab.config import EvalConfig
from cfglab.data.sampler import sample
from cfglab.data.vocab import Vocab
from cfglab.exact import cyk, inside
from cfglab.grammar import load
from cfglab.model import build_model
from cfglab.model.gpt import GPTConfig

N_GEN = 32  # generations (cut0) judged
N_KL = 32  # true strings for the KL
MAX_NEW = 280  # tokens per generation (EOS is masked), ~ cfg3b's mean length


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = load("cfg3b")
    vocab = Vocab.from_grammar(g)
    model = build_model(
        GPTConfig(
            vocab_size=vocab.size, block_size=512, n_layer=2, n_head=2, n_embd=64, position="rot"
        )
    ).eval()
    eos = vocab.eos
    # (B, T, V) logits with EOS at -inf: a random model would otherwise stop after a few tokens
    model.register_forward_hook(
        lambda mod, inp, out: out.index_fill(-1, torch.tensor([eos]), float("-inf"))
    )
    fn = AD.torch_logprob_fn(model, pad_id=vocab.pad)
    strings = sample(g, N_KL, seed=0, labels=False).strings()
    cyk.recognize(g, strings[:1])  # compile (numba) outside the timings
    cyk.first_error(g, strings[:1])
    inside.next_token_dist(g, strings[:1])
    inside.log_prob(g, strings[:1])

    def make_generate(temp: float) -> AD.GenerateFn:
        return AD.torch_generate_fn(
            model, eos_id=vocab.eos, max_new_tokens=MAX_NEW, temperature=temp
        )

    t0 = time.perf_counter()
    settings = EvalConfig(n_samples=N_GEN, n_kl=N_KL, cuts=[0], seed=0, n_fixed_prompt=0)
    out = R.evaluate_model(g, fn, make_generate, settings, max_len=511)
    total = time.perf_counter() - t0
    s = out["timing"]["seconds"]
    gen_lens = out["results"]["accuracy"][0]["lengths"]

    # references in the same run: the exact stage alone, and generation without the KV cache
    t0 = time.perf_counter()
    cyk.recognize(g, strings)
    cyk.first_error(g, strings)
    t_judge = time.perf_counter() - t0
    t0 = time.perf_counter()
    inside.next_token_dist(g, strings)
    t_ntd = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn([np.concatenate([[0], x]) for x in strings])
    t_fwd = time.perf_counter() - t0
    from cfglab.evaluate.generate import generate

    prompts = [torch.zeros(1, dtype=torch.long)] * 8
    t0 = time.perf_counter()
    generate(model, prompts, 100, eos_id=vocab.eos, generator=torch.Generator().manual_seed(0))
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    generate(
        model,
        prompts,
        100,
        eos_id=vocab.eos,
        generator=torch.Generator().manual_seed(0),
        use_cache=False,
    )
    t_nocache = time.perf_counter() - t0

    mean_len = float(np.mean([len(x) for x in strings]))
    print(
        f"cfg3b, GPT 2L/64D random init, 1 thread; {N_GEN} cut0 generations "
        f"(mean {np.mean(gen_lens):.0f} tokens), {N_KL} KL strings (mean {mean_len:.0f} tokens)"
    )
    print(f"{'stage':44} {'seconds':>8} {'share':>7}")
    for key in ("model", "exact", "sample"):
        print(f"{key:44} {s[key]:8.2f} {s[key] / total:7.1%}")
    print(f"{'total evaluate_model':44} {total:8.2f}")
    print(
        f"generations judged per second (incl. generation): {N_GEN / (s['model'] + s['exact']):.1f}"
    )
    print(f"KL strings per second (exact rows + model rows):   {N_KL / (t_ntd + t_fwd):.1f}")
    print(
        f"exact stage alone: judge {N_KL / t_judge:.0f} strings/s, next-token rows "
        f"{N_KL / t_ntd:.0f} strings/s; model forward {N_KL / t_fwd:.0f} strings/s"
    )
    print(f"ratio model/exact time per KL string: {t_fwd / t_ntd:.2f}")
    print(
        f"generation speed-up from the KV cache (8 x {MAX_NEW} tokens): {t_nocache / t_cache:.1f}x"
    )
