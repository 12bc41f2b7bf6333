"""Model speed: training-step tokens/s per position variant against a minimal nanoGPT-style
reference written here with the same shapes, and KV-cache generation against no-cache.

Training step = forward + backward + AdamW at T=512, fp32, torch.set_num_threads(2) (or
$CFGLAB_BENCH_THREADS), on the "small" preset (4 layers, 4 heads, 128 dims, ~0.8M parameters).
The reference is nanoGPT's model cut to what this step uses: token + learned position
embeddings, pre-LN blocks (fused qkv, SDPA with is_causal, exact GELU MLP), final LayerNorm,
tied unembedding; same loss, same AdamW. Timing is paired: every round times one reference step
and one variant step back to back (order alternating), the ratio of the two is taken per round,
and the median of the rounds' ratios is reported with their interquartile range, so load from
other processes (which drifts over seconds) affects both sides of each ratio alike.
$CFGLAB_BENCH_ROUNDS sets the rounds per goal variant (half as many for the others). The load
average is printed before and after. The whole run takes ~90 s on 2 cores.
Goals (issue 4): abs/rot/nope/alibi >= 1.0x the reference; KV cache >= 5x no-cache when
generating 512 tokens.
A second table (issue 25) times each model family (transformer = rot, lstm, ssm) and rot with
Canon layers ABCD at the same width and depth against the same reference, and Canon's overhead
as rot + ABCD against rot itself, paired the same way. Goal: Canon ABCD costs <= 20% of a step.
Measured on 2 shared cores: +26-33% (per site: A, C ~+5%, B ~+11%, D ~+12%), not met. The layers
are memory-bound: they read and write 9C channels per token and block (A, C: C; B: 3C; D: 4C)
in the forward pass, the input gradient and the weight gradient, against the block's ~12 C^2
multiply-adds per token, so the share falls as 1/C (the convolutions themselves run at the speed
of one elementwise multiply; see cfglab/model/canon.py).
A third table times causal attention alone (fwd + bwd, the small preset's heads) as one SDPA call
and as the model's two query halves, across lengths: the range where the halves are faster is
the model's SPLIT_MIN_T..SPLIT_MAX_T.
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from cfglab.evaluate.generate import generate
from cfglab.model import FAMILIES, POSITIONS, PRESETS, GPTConfig, build_model
from cfglab.model.causal_halves import SPLIT_MAX_T, SPLIT_MIN_T, causal_sdpa_in_halves

T, BATCH, VOCAB = 512, 4, 7
# the setting is 2 threads; on a machine shared with other jobs 2 threads make every op
# wait for a second free core (the paired ratios still hold, the tokens/s drop), so
# CFGLAB_BENCH_THREADS=1 gives steadier numbers there
THREADS = int(os.environ.get("CFGLAB_BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("CFGLAB_BENCH_ROUNDS", "9"))
GOALS = ("abs", "rot", "nope", "alibi")  # variants with a >= 1.0x goal
OTHER_ROUNDS = max(3, ROUNDS // 2)  # rel, pos, uni: no speed goal, fewer rounds (time budget)
# generation is compared on rot by default; CFGLAB_BENCH_GEN=rot,rel adds the slow variant
GEN_VARIANTS = os.environ.get("CFGLAB_BENCH_GEN", "rot").split(",")
# decoding runs one-token ops: on a shared 2-core machine a second thread only makes each of them
# wait for a free core (measured: cache 60 tok/s at 2 threads vs 1200 at 1), so 1 by default
GEN_THREADS = int(os.environ.get("CFGLAB_BENCH_GEN_THREADS", "1"))


class RefBlock(nn.Module):
    """nanoGPT's block, minimal: pre-LN, fused qkv, SDPA causal, GELU MLP."""

    def __init__(self, C: int, H: int) -> None:
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T_, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T_, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T_, C))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    """nanoGPT's GPT without dropout modules (p=0 in this step) and without the generation code.
    The shape is nanoGPT's (n_layer, n_head, n_embd, vocab_size, block_size); benchmarks/bench_gpu
    builds the paper's 12/12/768 at T=512 from the same class."""

    def __init__(
        self, n_layer: int, n_head: int, n_embd: int, vocab_size: int = VOCAB, block_size: int = T
    ) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.wte.weight
        for m in self.modules():  # nanoGPT's init (values do not change the speed of fp32 ops)
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))  # (B, T, C)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def step_timer(model: nn.Module):
    """A function running one training step of `model` on a fixed batch, returning its seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, VOCAB, (BATCH, T + 1), generator=torch.Generator().manual_seed(0))

    def step() -> float:
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(), step()  # warm-up: allocator, optimizer state
    return step


def paired(ref, var, rounds: int) -> tuple[list[float], list[float]]:
    """Per-round step seconds (ref, var), each round back to back, order alternating."""
    t_ref, t_var = [], []
    for i in range(rounds):
        if i % 2:
            t_var.append(var())
            t_ref.append(ref())
        else:
            t_ref.append(ref())
            t_var.append(var())
    return t_ref, t_var


def families(ref, shape: dict, tokens: int) -> None:
    """Step time of every family and of rot + Canon ABCD against the reference, then Canon's
    overhead against rot (ratios per paired round, median and IQR)."""
    print(f"\nmodel families and Canon, same shape, {ROUNDS} paired rounds each")
    print(f"{'model':14} {'params':>8} {'tok/s':>7} {'ref tok/s':>9} {'ratio':>6} {'IQR':>11}")
    models = {f: {"family": f} for f in FAMILIES}
    models["transformer"]["position"] = "rot"
    models["rot + ABCD"] = {"position": "rot", "canon": "ABCD"}
    timers = {}
    for name, kw in models.items():
        model = build_model(GPTConfig(vocab_size=VOCAB, block_size=T, **kw, **shape))
        timers[name] = step_timer(model)
        t_ref, t_var = paired(ref, timers[name], ROUNDS)
        q1, ratio, q3 = quartiles([r / v for r, v in zip(t_ref, t_var, strict=True)])
        print(
            f"{name:14} {model.num_params():8d} {tokens / statistics.median(t_var):7.0f} "
            f"{tokens / statistics.median(t_ref):9.0f} {ratio:5.2f}x [{q1:.2f}, {q3:.2f}]"
        )
    t_rot, t_canon = paired(timers["transformer"], timers["rot + ABCD"], 2 * ROUNDS)
    q1, extra, q3 = quartiles([c / r - 1 for r, c in zip(t_rot, t_canon, strict=True)])
    goal = "ok" if extra <= 0.2 else "ABOVE"
    print(
        f"Canon ABCD overhead: +{100 * extra:.1f}% of a rot step [{100 * q1:.1f}, {100 * q3:.1f}]"
        f" ({2 * ROUNDS} paired rounds; goal <= 20%: {goal})"
    )


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def attention_timer(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor):
    """A function timing attend(q, k, v) and the q, k, v gradients (autograd.grad, so nothing
    accumulates across rounds), returning its seconds."""

    def step() -> float:
        t0 = time.perf_counter()
        torch.autograd.grad(attend(q, k, v), (q, k, v), grad)
        return time.perf_counter() - t0

    step()  # warm-up
    return step


def attention_halves(shape: dict, rounds: int = 15) -> None:
    """Causal attention fwd + bwd: one SDPA call vs the two query halves, paired rounds."""
    H = shape["n_head"]
    D = shape["n_embd"] // H
    print(f"\ncausal attention fwd + bwd, B={BATCH} H={H} D={D}: two query halves vs one call")
    print(f"{'T':>5} {'one call ms':>11} {'ratio':>6} {'IQR':>12}  model")

    def one_call(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def in_halves(q, k, v):  # the mask is built inside every timed call, as in the model
        return causal_sdpa_in_halves(q, k, v, None, D**-0.5)

    for length in (256, 320, SPLIT_MIN_T, 448, 512, 576, SPLIT_MAX_T, 768):
        g = torch.Generator().manual_seed(length)
        q, k, v = (  # (B, H, T, D) views of (B, T, H, D) memory, as the model's split heads
            torch.randn(BATCH, length, H, D, generator=g).transpose(1, 2).requires_grad_()
            for _ in range(3)
        )
        grad = torch.randn(BATCH, H, length, D, generator=g)

        t_one, t_halves = paired(
            attention_timer(one_call, q, k, v, grad),
            attention_timer(in_halves, q, k, v, grad),
            rounds,
        )
        q1, ratio, q3 = quartiles([a / b for a, b in zip(t_one, t_halves, strict=True)])
        used = "halves" if SPLIT_MIN_T <= length <= SPLIT_MAX_T else "one call"
        print(
            f"{length:5d} {1e3 * statistics.median(t_one):11.2f} {ratio:5.2f}x "
            f"[{q1:.2f}, {q3:.2f}]  {used}"
        )


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    shape = PRESETS["small"]
    ref_model = RefGPT(**shape)
    ref = step_timer(ref_model)
    tokens = BATCH * T
    n_ref = sum(p.numel() for p in ref_model.parameters())
    load = " ".join(f"{a:.2f}" for a in os.getloadavg())
    print(f"training step: B={BATCH} T={T} fp32, {THREADS} threads, preset small {shape}")
    print(
        f"reference: {n_ref} params; {ROUNDS} paired rounds per goal variant, "
        f"{OTHER_ROUNDS} for the others; load avg {load}"
    )
    print(
        f"{'variant':8} {'params':>8} {'tok/s':>7} {'ref tok/s':>9} {'ratio':>6} {'IQR':>11}  goal"
    )
    gc.disable()  # a collection inside one side of a pair would be charged to it alone
    try:
        for name in POSITIONS:
            model = build_model(GPTConfig(vocab_size=VOCAB, block_size=T, position=name, **shape))
            rounds = ROUNDS if name in GOALS else OTHER_ROUNDS
            t_ref, t_var = paired(ref, step_timer(model), rounds)
            q1, ratio, q3 = quartiles([r / v for r, v in zip(t_ref, t_var, strict=True)])
            goal = ""
            if name in GOALS:  # "parity": below 1.0 by less than the rounds' own spread
                goal = "ok" if ratio >= 1.0 else "parity" if q3 >= 1.0 else "BELOW"
            print(
                f"{name:8} {model.num_params():8d} {tokens / statistics.median(t_var):7.0f} "
                f"{tokens / statistics.median(t_ref):9.0f} {ratio:5.2f}x "
                f"[{q1:.2f}, {q3:.2f}]  {goal}"
            )
            del model
            gc.collect()
    finally:
        gc.enable()
    print(f"load avg after: {' '.join(f'{a:.2f}' for a in os.getloadavg())}")
    gc.disable()
    try:
        families(ref, shape, tokens)
    finally:
        gc.enable()

    attention_halves(shape)

    # generation: 512 tokens from BOS, never stopping (EOS is banned from sampling)
    n_gen = 4
    torch.set_num_threads(GEN_THREADS)
    print(
        f"\ngeneration: {n_gen} sequences x {T - 1} new tokens, preset small, "
        f"{GEN_THREADS} thread(s)"
    )
    print(f"{'variant':8} {'cache tok/s':>11} {'no-cache tok/s':>14} {'ratio':>6}")
    for name in GEN_VARIANTS:  # no-cache costs O(T^2) per string: rel's alone takes ~70 s
        model = build_model(GPTConfig(vocab_size=VOCAB, block_size=T, position=name, **shape))
        prompts = [torch.tensor([0])] * n_gen
        times = {}
        for use_cache in (True, False):
            t0 = time.perf_counter()
            out = generate(
                model,
                prompts,
                T - 1,
                eos_id=VOCAB - 1,
                banned_ids=[VOCAB - 1],
                use_cache=use_cache,
                generator=torch.Generator().manual_seed(0),
            )
            times[use_cache] = time.perf_counter() - t0
            assert all(len(s) == T for s in out)
        new = n_gen * (T - 1)
        print(
            f"{name:8} {new / times[True]:11.0f} {new / times[False]:14.0f} "
            f"{times[False] / times[True]:5.1f}x"
        )


if __name__ == "__main__":
    main()
