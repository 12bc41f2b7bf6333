"""Batched sampling from a causal model with a KV cache: the strings that evaluation scores.

`generate(model, prompts, max_new_tokens, eos_id=...)` returns each prompt followed by its
completion. Prompts of different lengths are grouped by length and each group runs as one batch
(no padding, so every variant, including the window and distance ones, sees exactly the
positions it would see alone; the paper's cut0 / cut50 prompts all have one length anyway).
Within a group a sequence stops after it emits EOS (EOS kept) and is dropped from the batch, so
the batch shrinks as strings end. Sampling: temperature, then top-k, then top-p (nucleus), or
greedy argmax. Sequences never run past the model's block_size.

Only tokens a string can continue with are ever sampled: the terminals and EOS. BOS, MASK and
PAD (ids 0 and above EOS in the layout of data/vocab.py) get probability 0 before the filters,
whatever the model's logits say, so a barely trained model cannot emit `<mask>` mid-string.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from cfglab.config.validate import RANGES
from cfglab.errors import ConfigError
from cfglab.model.gpt import GPT

# the range configs and `cfglab generate` accept (eval.temperatures); any other T > 0 is safe too
TEMPERATURES = (RANGES["eval.temperatures"].lo, RANGES["eval.temperatures"].hi)


def special_ids(vocab_size: int, eos_id: int) -> list[int]:
    """Ids no continuation may take (data/vocab.py layout): BOS (0) and every id after EOS
    (MASK, PAD)."""
    return [0, *range(eos_id + 1, vocab_size)]


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    banned: Tensor | None = None,
) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V); `banned` (V,) bool ids are never
    drawn."""
    if banned is not None:
        logits = logits.masked_fill(banned, float("-inf"))
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if TEMPERATURES[0] <= temperature <= TEMPERATURES[1]:  # the configs' range: as always
        logits = logits / temperature
    else:
        # any other finite T > 0: each row's largest logit shifted to 0 first, and a scale
        # that stays finite in float32, so no inf (T = 1e-50) and no -inf * 0 (T = 1e300)
        # reaches softmax as NaN; T -> 0 tends to the argmax, T -> inf to uniform
        scale = min(max(1.0 / temperature, 1e-30), 1e30)
        logits = (logits - logits.max(dim=-1, keepdim=True).values) * scale
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1) k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p (keeps at least one)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _check_args(
    model: GPT,
    prompts: list[Tensor],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: bool,
    eos_id: int,
    banned_ids: list[int],
) -> None:
    if not model.config.causal:
        raise ConfigError("generate needs a causal model; this one is an encoder (causal=False)")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not greedy and not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    vocab = model.config.vocab_size
    if not 1 <= eos_id < vocab:
        raise ConfigError(f"eos_id {eos_id} is not a token id of the model (1..{vocab - 1})")
    if any(not 0 <= b < vocab for b in banned_ids) or len(set(banned_ids)) >= vocab:
        raise ConfigError(
            f"banned_ids {banned_ids} must be ids of the model (0..{vocab - 1}) and leave at "
            "least one token to sample"
        )
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] or None, got {top_p}")
    for i, p in enumerate(prompts):
        if p.dim() != 1 or len(p) == 0:
            raise ConfigError(
                f"prompt {i} must be a non-empty 1-D tensor of token ids starting "
                f"with BOS, got shape {tuple(p.shape)}"
            )
        block = model.config.block_size
        if len(p) > block or (len(p) == block and max_new_tokens > 0):
            raise ConfigError(
                f"prompt {i} has {len(p)} tokens (BOS included) and the model's block_size "
                f"(model.block_size) is {block}, which leaves no room to generate: shorten the "
                f"prompt to at most {block - 1} tokens"
            )


@torch.no_grad()
def _generate_group(
    model: GPT, prompts: Tensor, max_new_tokens: int, eos_id: int, use_cache: bool, **sampling
) -> list[Tensor]:
    """Prompts (B, P) of one length -> B sequences (prompt + completion, EOS included)."""
    B, P = prompts.shape
    steps = min(max_new_tokens, model.config.block_size - P)  # >= 0: _check_args
    cache = model.new_cache(B, P + steps) if use_cache and steps > 0 else None
    seqs = torch.empty(B, P + steps, dtype=torch.long, device=prompts.device)  # (B, P + steps)
    seqs[:, :P] = prompts
    lengths = torch.full((B,), P + steps, dtype=torch.long)  # final length of each sequence
    alive = torch.arange(B, device=prompts.device)  # rows of `seqs` still generating
    inputs = prompts
    for t in range(P, P + steps):
        if cache is not None:
            logits = model(inputs, cache=cache)[:, -1]  # (b, V): only the new tokens are run
        else:
            logits = model(seqs[alive, :t])[:, -1]  # (b, V): the whole prefix again
        nxt = sample_next(logits, **sampling)  # (b,)
        seqs[alive, t] = nxt
        done = nxt == eos_id
        if bool(done.any()):
            lengths[alive[done].cpu()] = t + 1
            keep = (~done).nonzero()[:, 0]
            alive, nxt = alive[keep], nxt[keep]
            if len(alive) == 0:
                break
            if cache is not None:
                cache.select(keep)
        inputs = nxt[:, None]  # (b, 1)
    return [seqs[i, : lengths[i]] for i in range(B)]


@contextmanager
def no_cudnn_attention() -> Iterator[None]:
    """SDPA without its cuDNN backend, for decoding.

    Recent PyTorch builds try cuDNN attention first for bf16/fp16 on sm90/sm100 (H100, H200,
    B200; `check_prefer_cudnn_attention` in ATen's sdp_utils.cpp). cuDNN builds and caches one
    execution graph per problem shape, key length included, and a build costs tens of
    milliseconds on the host. Decoding with a KV cache has a new key length at every step, so
    every step pays a build: on an H200, bf16 KV-cache sampling ran at ~1,000 tokens/s against
    ~10,000 in fp32 (which cuDNN does not take). Flash, memory-efficient and math attention have
    no per-shape setup. The other backends stay as the caller set them."""
    was_enabled = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was_enabled)


def generate(
    model: GPT,
    prompts: list[Tensor],
    max_new_tokens: int,
    *,
    eos_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    max_batch: int | None = None,
    banned_ids: list[int] | None = None,
) -> list[Tensor]:
    """Complete each prompt (1-D LongTensor, BOS first) by sampling; return prompt + completion.

    A completion ends after EOS (included) or after `max_new_tokens`, or when the sequence
    reaches block_size. `generator` seeds torch.multinomial for reproducible samples.
    `use_cache=False` recomputes the whole prefix every step (the benchmark's baseline).
    `max_batch` caps how many prompts run together (memory). The model runs in eval mode.
    `banned_ids` are never sampled (default `special_ids`: BOS, MASK, PAD). Precision is the
    caller's (e.g. a bf16 autocast around the call); attention runs without the cuDNN backend
    (`no_cudnn_attention`).
    """
    vocab = model.config.vocab_size
    if banned_ids is None:
        banned_ids = special_ids(vocab, eos_id)
    _check_args(
        model, prompts, max_new_tokens, temperature, top_k, top_p, greedy, eos_id, banned_ids
    )
    device = model.embed.weight.device
    banned = torch.zeros(vocab, dtype=torch.bool, device=device)  # (V,)
    banned[banned_ids] = True
    groups: dict[int, list[int]] = defaultdict(list)  # prompt length -> prompt indices
    for i, p in enumerate(prompts):
        groups[len(p)].append(i)
    out: list[Tensor] = [torch.empty(0)] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with no_cudnn_attention():  # decoding: a new key length every step
            for idxs in groups.values():
                step = max_batch or len(idxs)
                for s in range(0, len(idxs), step):
                    chunk = idxs[s : s + step]
                    batch = torch.stack([prompts[i] for i in chunk]).to(device)  # (b, P)
                    results = _generate_group(
                        model,
                        batch,
                        max_new_tokens,
                        eos_id,
                        use_cache,
                        temperature=temperature,
                        top_k=top_k,
                        top_p=top_p,
                        greedy=greedy,
                        generator=generator,
                        banned=banned,
                    )
                    for i, r in zip(chunk, results, strict=True):
                        out[i] = r.to(prompts[i].device)
    finally:
        model.train(was_training)
    return out
