"""Generation: KV-cache logits == full recomputation for every causal variant, cached sampling
== uncached sampling, mixed prompt lengths, EOS, block_size, and the sampling filters."""

from __future__ import annotations

import pytest
import torch

from cfglab.errors import ConfigError
from cfglab.evaluate.generate import generate, sample_next, special_ids

from .conftest import VOCAB, tiny

EOS = VOCAB - 3  # 4, as for a 3-terminal grammar


def test_kv_cache_logits_equal_full_recomputation(position):
    model = tiny(position)
    x = torch.randint(0, VOCAB, (3, 45), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        cache = model.new_cache(3)
        parts = [model(x[:, :7], cache=cache)]  # prefill, then chunks of 1 and 3 tokens
        t = 7
        while t < 45:
            n = 1 if t < 30 else 3
            parts.append(model(x[:, t : t + n], cache=cache))
            t += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-4)


def test_cached_sampling_equals_uncached_sampling(position):
    """Same seed -> the same strings with and without the cache (sampling at temperature 1
    with top-k/top-p, mixed prompt lengths), and greedy too."""
    model = tiny(position)
    prompts = [
        torch.tensor([0, 1, 2]),
        torch.tensor([0]),
        torch.tensor([0, 3, 1]),
        torch.tensor([0]),
    ]
    for kw in ({"top_k": 3, "top_p": 0.9}, {"greedy": True}):
        runs = [
            generate(
                model,
                prompts,
                30,
                eos_id=EOS,
                use_cache=c,
                generator=torch.Generator().manual_seed(5),
                **kw,
            )
            for c in (True, False)
        ]
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b)


def test_mixed_lengths_match_one_by_one_and_stop_at_eos():
    model = tiny("rel")
    prompts = [
        torch.tensor([0, 1, 2, 3]),
        torch.tensor([0]),
        torch.tensor([0, 2]),
        torch.tensor([0]),
    ]
    together = generate(model, prompts, 40, eos_id=EOS, greedy=True)
    for p, out in zip(prompts, together, strict=True):
        alone = generate(model, [p], 40, eos_id=EOS, greedy=True)[0]
        assert torch.equal(out, alone)
        assert torch.equal(out[: len(p)], p)
        body = out[len(p) :]
        assert len(body) == 40 or body[-1] == EOS
        assert not (body[:-1] == EOS).any()  # nothing after EOS


def test_eos_stops_each_sequence():
    model = tiny("nope")
    prompts = [torch.tensor([0])] * 16
    outs = generate(model, prompts, 60, eos_id=EOS, generator=torch.Generator().manual_seed(1))
    ends = [o for o in outs if o[-1] == EOS]
    assert ends, "at temperature 1 some of 16 strings of up to 60 tokens end with EOS"
    for o in outs:
        assert (o[1:] == EOS).sum() <= 1 and len(o) <= 61


def test_length_never_exceeds_block_size():
    model = tiny("abs", block_size=16)
    never_eos = [0, EOS, EOS + 1, EOS + 2]  # EOS banned too: the string never stops
    outs = generate(model, [torch.tensor([0, 1, 2])], 100, eos_id=EOS, banned_ids=never_eos)
    assert len(outs[0]) == 16


def test_special_tokens_are_never_sampled():
    """A model whose logits favour BOS, MASK and PAD still emits only terminals and EOS."""
    model = tiny("rot")
    bias = torch.zeros(VOCAB)
    bias[[0, EOS + 1, EOS + 2]] = 50.0  # special tokens overwhelmingly likely
    model.unembed.register_forward_hook(lambda module, inputs, out: out + bias)
    logits = bias.expand(64, VOCAB)
    banned = torch.zeros(VOCAB, dtype=torch.bool)
    banned[special_ids(VOCAB, EOS)] = True
    g = torch.Generator().manual_seed(0)
    for greedy in (False, True):
        draws = sample_next(logits, banned=banned, greedy=greedy, generator=g)
        assert ((draws >= 1) & (draws <= EOS)).all()
    outs = generate(model, [torch.tensor([0])] * 32, 40, eos_id=EOS, generator=g)
    for o in outs:
        assert ((o[1:] >= 1) & (o[1:] <= EOS)).all()


def test_a_prompt_that_fills_the_window_is_an_error():
    model = tiny("abs", block_size=16)
    with pytest.raises(ConfigError, match="block_size"):
        generate(model, [torch.zeros(16, dtype=torch.long)], 5, eos_id=EOS)
    assert len(generate(model, [torch.zeros(16, dtype=torch.long)], 0, eos_id=EOS)[0]) == 16


def test_sample_next_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, generator=g) for _ in range(4000)])
    freq = torch.bincount(draws[:, 0], minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03, rtol=0)
    top2 = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(300)}
    assert top2 == {0, 1}
    nucleus = {int(sample_next(logits, top_p=0.7, generator=g)) for _ in range(300)}
    assert nucleus == {0, 1}  # 0.5 < 0.7 needs the second; 0.8 >= 0.7 stops there
    assert {int(sample_next(logits, top_p=0.4, generator=g)) for _ in range(50)} == {0}
    assert int(sample_next(logits, greedy=True)) == 0
    cold = {int(sample_next(logits, temperature=0.05, generator=g)) for _ in range(100)}
    assert cold == {0}


def test_bad_arguments_are_config_errors():
    model = tiny("rot")
    p = [torch.tensor([0])]
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, p, 5, eos_id=EOS, temperature=0)
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, p, 5, eos_id=EOS, temperature=float("nan"))
    with pytest.raises(ConfigError, match="eos_id"):
        generate(model, p, 5, eos_id=-1)
    with pytest.raises(ConfigError, match="top_p"):
        generate(model, p, 5, eos_id=EOS, top_p=1.5)
    with pytest.raises(ConfigError, match="non-empty 1-D"):
        generate(model, [torch.tensor([])], 5, eos_id=EOS)
    with pytest.raises(ConfigError, match="encoder"):
        generate(tiny("rot", causal=False), p, 5, eos_id=EOS)


def test_under_autocast_the_cache_holds_what_the_layers_produce(position):
    """bf16 autocast: the cache is bf16 (no fp32 copy cast back at every read), and cached
    sampling still equals uncached sampling."""
    model = tiny(position)
    prompts = [torch.tensor([0]), torch.tensor([0, 2])] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.new_cache(2).v.dtype == torch.bfloat16
        runs = [
            generate(
                model,
                prompts,
                25,
                eos_id=EOS,
                generator=torch.Generator().manual_seed(3),
                use_cache=use_cache,
            )
            for use_cache in (True, False)
        ]
    assert model.new_cache(2).v.dtype == torch.float32  # outside autocast: the weights' dtype
    for cached, uncached in zip(*runs, strict=True):
        assert torch.equal(cached, uncached)


def test_generation_runs_without_cudnn_attention(monkeypatch):
    """Decoding has a new key length every step and cuDNN attention builds a graph per shape:
    SDPA runs with cuDNN disabled inside generate, and the caller's setting comes back after."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny("rot")
    for caller_setting in (True, False):
        torch.backends.cuda.enable_cudnn_sdp(caller_setting)
        try:
            seen.clear()
            generate(model, [torch.tensor([0])] * 2, 5, eos_id=EOS)
            assert seen and not any(seen)
            assert torch.backends.cuda.cudnn_sdp_enabled() is caller_setting
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
