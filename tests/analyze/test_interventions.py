"""The interventions family's parts against oracles that do not share its code: a hand-built
model whose output reads one known direction (erasure), LEACE's defining property checked by a
least-squares classifier, the eval family's KL on the same rows, the identities of activation
patching (the last layer at every position gives the source exactly, nothing gives the target),
and a planted head (ablation)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cfglab.analyze.ablation import ablate_heads
from cfglab.analyze.erasure import (
    Eraser,
    Whitening,
    erase_layers,
    erasing,
    fit_leace,
    random_eraser,
)
from cfglab.analyze.kl_rows import (
    ratio,
    resample_weights,
    row_kls,
    score_strings,
    smoothed_kl,
)
from cfglab.analyze.patching import find_pairs, pair_kls, patch_hooks, patch_pairs
from cfglab.data.sampler import sample
from cfglab.grammar import load
from cfglab.model.hooks import HookPoint, hook_points, run_with_cache

ROOT = Path(__file__).resolve().parents[2]
# after 'a' always 'x', after 'b' always 'y': the next token after the first is the level-1 NT
AB = "S -> A | B\nA -> 'a' 'x'\nB -> 'b' 'y'\n"  # uniform rules
C = 4  # the planted models' width: u = e0 carries A vs B, w = e1 "second token", e2 BOS, e3 noise
K = 12.0  # readout gain: the planted model is within exp(-K) of the exact distribution


def _ab(tmp_path):
    path = tmp_path / "ab.cfg"
    path.write_text(AB)
    return load(str(path))


def _ids(grammar) -> dict[str, int]:
    """terminal -> token id (cfglab.data.vocab: terminals 1..T, then EOS)."""
    ids = {t: i + 1 for i, t in enumerate(grammar.terminals)}
    ids["EOS"] = len(grammar.terminals) + 1
    return ids


def _embedding(grammar) -> torch.Tensor:
    ids, size = _ids(grammar), len(grammar.terminals) + 4
    table = torch.zeros(size, C)
    table[0, 2] = 1.0  # BOS
    table[ids["a"], 0], table[ids["b"], 0] = 1.0, -1.0  # the known direction u
    table[ids["x"], 1] = table[ids["y"], 1] = 1.0
    return table


def _readout(grammar) -> torch.Tensor:
    """(C, V): BOS -> a or b; u -> x (+) or y (-); w -> EOS; e3 -> nothing."""
    ids, size = _ids(grammar), len(grammar.terminals) + 4
    r = torch.zeros(C, size)
    r[2, ids["a"]] = r[2, ids["b"]] = K
    r[0, ids["x"]], r[0, ids["y"]] = K, -K
    r[1, ids["EOS"]] = K
    return r


class Planted(nn.Module):
    """Embedding + position noise on e3 -> blocks.0.hook_resid_post -> linear readout; with
    heads=True the state passes as two heads of blocks.0.attn.hook_z first: head 0 carries
    it, head 1 carries the position noise alone, which the readout ignores."""

    def __init__(self, grammar, heads: bool = False) -> None:
        super().__init__()
        self.config = SimpleNamespace(n_layer=1, block_size=16, causal=True, n_head=2)
        self.embed = nn.Embedding.from_pretrained(_embedding(grammar))
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].hook_resid_post = HookPoint()
        self.blocks[0].attn = nn.Module()
        self.blocks[0].attn.hook_z = HookPoint()
        self.heads = heads
        self.register_buffer("readout", _readout(grammar))
        hook_points(self)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.embed(idx)  # (B, T, C)
        noise = torch.sin(torch.arange(idx.shape[1], dtype=h.dtype) * 1.7)  # (T,) unused
        h = h + noise[None, :, None] * torch.eye(C)[3]
        if self.heads:
            z = torch.stack([h, noise[None, :, None] * torch.eye(C)[3].expand_as(h)], dim=2)
            z = self.blocks[0].attn.hook_z(z)  # (B, T, H=2, C)
            h = z.sum(2)
        return self.blocks[0].hook_resid_post(h) @ self.readout


def test_the_planted_model_is_the_grammar(tmp_path):
    g = _ab(tmp_path)
    scored = score_strings(Planted(g), g, sample(g, 20, 1))
    assert scored.clean.max() < 1e-3  # exact to exp(-K): the baseline of every rise below


def test_erasing_the_known_direction_destroys_the_dependence(tmp_path):
    """LEACE on the level-1 ancestor labels removes u: the row after 'a' / 'b' (which reads u)
    becomes a guess, KL rise ~log 2 and more; erasing e3, orthogonal to u and carrying
    variance the readout ignores, changes nothing."""
    g = _ab(tmp_path)
    model = Planted(g)
    fit, test = sample(g, 60, 2), sample(g, 40, 3)
    scored = score_strings(model, g, test)
    w = resample_weights(len(test), 50, 0)
    out = erase_layers(model, g, fit, scored, ["ancestor"], draws=2, seed=0, weights=w, log=print)
    (cell,) = out["cells"]
    assert cell["rank"] == 1
    assert cell["leace"]["inside"]["mean"] > 0.6  # the row after 'a' / 'b' reads u
    assert cell["leace"]["all"]["lo"] > 0.2
    e3 = np.eye(C)[:, 3:4]
    orthogonal = Eraser(np.zeros(C), e3, e3)  # project out e3
    with erasing(model, "blocks.0.hook_resid_post", orthogonal):
        rise = row_kls(model, scored)
    assert np.abs(rise - scored.clean).max() < 1e-6
    assert cell["leace"]["all"]["mean"] > 1000 * max(np.abs(rise - scored.clean).mean(), 1e-9)
    # the eraser found u itself: from the token states, its one raw direction is e0
    ids, table = _ids(g), _embedding(g).numpy().astype(np.float64)
    x = table[[ids["a"], ids["x"], ids["b"], ids["y"]]]
    eraser = fit_leace(Whitening.fit(x), x, np.array([0, 0, 1, 1]), 2)
    assert eraser.rank == 1
    assert abs(eraser.up[:, 0] @ np.eye(C)[0]) == pytest.approx(np.linalg.norm(eraser.up))


def _classes(seed: int = 0, n: int = 600, c: int = 8, k: int = 3):
    gen = np.random.default_rng(seed)
    y = gen.integers(0, k, n)
    means = gen.normal(0, 2, (k, c))
    mix = gen.normal(0, 1, (c, c))
    x = means[y] + gen.normal(0, 1, (n, c)) @ mix  # correlated noise
    return x, y


def _least_squares_accuracy(x: np.ndarray, y: np.ndarray, k: int) -> float:
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, np.eye(k)[y], rcond=None)
    return float(((design @ coef).argmax(1) == y).mean())


def test_after_leace_no_linear_classifier_beats_the_constant():
    x, y = _classes()
    majority = np.bincount(y).max() / len(y)
    assert _least_squares_accuracy(x, y, 3) > majority + 0.3  # the labels are readable before
    w = Whitening.fit(x)
    eraser = fit_leace(w, x, y, 3)
    assert eraser.rank == 2  # K - 1
    erased = eraser(x)
    means = np.stack([erased[y == c].mean(0) for c in range(3)])
    assert np.abs(means - erased.mean(0)).max() < 1e-9  # every class at the same mean
    z = np.eye(3)[y]
    cov = (erased - erased.mean(0)).T @ (z - z.mean(0)) / len(x)
    assert np.abs(cov).max() < 1e-10
    assert _least_squares_accuracy(erased, y, 3) == pytest.approx(majority)


def test_leace_and_its_control_remove_the_same_whitened_variance():
    """Both erasers remove `rank` units of whitened variance; the control's directions differ."""
    x, y = _classes(1)
    w = Whitening.fit(x)
    leace = fit_leace(w, x, y, 3)
    control = random_eraser(w, leace.rank, np.random.default_rng(5))
    for eraser in (leace, control):
        moved = w.whiten((x - eraser(x)).T).T  # (N, C) in whitened coordinates
        assert (moved**2).sum(1).mean() == pytest.approx(leace.rank, rel=1e-8)
    assert abs(np.linalg.svd(leace.down.T @ control.up)[1]).max() < 0.999


def test_row_kl_is_the_eval_family_s():
    from cfglab.config import load_config
    from cfglab.data.vocab import Vocab
    from cfglab.evaluate.adapters import torch_logprob_fn
    from cfglab.evaluate.distribution import distribution_metrics, row_kl, row_levels
    from cfglab.exact.inside import next_token_dist
    from cfglab.model import build_model, gpt_config

    gen = np.random.default_rng(0)
    p, q = gen.dirichlet(np.ones(4), 9), gen.dirichlet(np.ones(4), 9)
    p[0] = [1, 0, 0, 0]
    np.testing.assert_allclose(smoothed_kl(p, q), row_kl(p, q), rtol=1e-12)
    g = load(str(ROOT / "configs/grammars/quickstart.cfg"))
    cfg = load_config(None, ["model.preset=tiny", "model.block_size=48"])
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(g).size), seed=0).eval()
    batch = sample(g, 6, 4, max_len=40)
    scored = score_strings(model, g, batch)
    xs = batch.strings()
    lq = torch_logprob_fn(model, pad_id=Vocab.from_grammar(g).pad)([np.r_[0, x] for x in xs])
    groups = [row_levels(b) for b in _boundaries(g, batch)]
    ref = distribution_metrics(xs, next_token_dist(g, xs), lq, g.n_t, groups=groups)
    per_string = [scored.clean[scored.string == i].mean() for i in range(len(xs))]
    np.testing.assert_allclose(per_string, ref.kl_per_string, rtol=1e-6)
    names = [scored.groups[i] for i in scored.group]
    assert names == [n for gr in groups for n in gr]


def _boundaries(grammar, batch) -> list[np.ndarray]:
    from cfglab.data.tree import tree_labels

    b = tree_labels(grammar, batch).is_boundary
    return [b[:, batch.offsets[i] : batch.offsets[i + 1]] for i in range(len(batch))]


@pytest.fixture(scope="module")
def tiny_gpt():
    from cfglab.config import load_config
    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config

    g = load(str(ROOT / "configs/grammars/quickstart.cfg"))
    cfg = load_config(None, ["model.preset=tiny", "model.block_size=48"])
    return build_model(gpt_config(cfg.model, Vocab.from_grammar(g).size), seed=0).eval(), g


def test_pairs_are_true_strings_differing_in_one_span(tiny_gpt):
    from cfglab.exact.cyk import recognize

    _, g = tiny_gpt
    pairs = find_pairs(g, sample(g, 200, 5, max_len=40), 6, np.random.default_rng(0))
    assert len(pairs) == 12 and set(pairs.level.tolist()) == {1, 2}  # 6 per level
    assert recognize(g, pairs.target).all() and recognize(g, pairs.source).all()
    for t, s, a, e in zip(pairs.target, pairs.source, pairs.start, pairs.end, strict=True):
        assert (t[:a] == s[:a]).all() and not np.array_equal(t[a:e], s[a:e])


def test_patching_identities(tiny_gpt):
    """Every position of the last layer patched: the source's own row (recovered 1); none: the
    target's (0); at the last layer only the NT end's cell moves the row after it."""
    import dataclasses

    from cfglab.analyze.kl_rows import model_rows
    from cfglab.analyze.patching import _inputs

    model, g = tiny_gpt
    pairs = find_pairs(g, sample(g, 200, 5, max_len=40), 6, np.random.default_rng(0))
    target, source = _inputs(model, g, pairs)
    # an untrained model is no nearer the source's exact rows on the source than on the target
    # (nothing to recover); its own source rows stand in for them, so every pair can move
    own = model_rows(model, source, np.arange(len(pairs)), pairs.end, n_terminals=g.n_t)
    pairs = dataclasses.replace(pairs, exact=own / own.sum(1, keepdims=True))
    last = f"blocks.{model.config.n_layer - 1}.hook_resid_post"
    _, cache = run_with_cache(model, source, [last, "blocks.0.hook_resid_post"])
    clean, src = pair_kls(model, target, pairs), pair_kls(model, source, pairs)
    w = resample_weights(len(pairs), 20, 0)
    every = np.tile(np.arange(target.shape[1]), (len(pairs), 1))
    for name in (last, "blocks.0.hook_resid_post"):
        full = pair_kls(model, target, pairs, patch_hooks(name, cache[name], every))
        np.testing.assert_allclose(full, src, rtol=1e-5, atol=1e-7)
        assert ratio(clean - full, clean - src, w)["mean"] == pytest.approx(1.0, abs=1e-5)
    none = pair_kls(model, target, pairs, patch_hooks(last, cache[last], -np.ones_like(every)))
    assert ratio(clean - none, clean - src, w)["mean"] == pytest.approx(0.0, abs=1e-9)
    out = patch_pairs(model, g, pairs, window=4, n_boot=20, seed=0)
    top = out["recovered"]["all"][-1]  # the last layer, offsets -3..0
    assert top[-1]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert all(abs(c["mean"]) < 1e-9 for c in top[:-1])


def test_mean_ablating_the_planted_head(tmp_path):
    """Head 0 carries the state, head 1 position noise the readout ignores."""
    g = _ab(tmp_path)
    model = Planted(g, heads=True)
    fit, test = sample(g, 30, 6), sample(g, 30, 7)
    scored = score_strings(model, g, test)
    out = ablate_heads(model, g, fit, scored, weights=resample_weights(30, 50, 0), log=print)
    assert out["layers"] == ["blocks.0.attn.hook_z"] and out["n_head"] == 2
    used, unused = out["kl_rise"][0]
    assert used["all"]["mean"] > 1.0 and used["all"]["lo"] > 0.5
    assert abs(unused["all"]["mean"]) < 1e-6


def _one_token_sampler(model, steps: int = 4):
    """generate(model, n, seed) feeding one new position per forward call, as a KV cache does
    (the planted model has no attention, so it needs no cache): the prompt BOS first, then each
    sampled token alone, index 0 of its call."""

    def generate(net, n: int, seed: int) -> list[np.ndarray]:
        gen = torch.Generator().manual_seed(seed)
        seqs = torch.zeros(n, 1, dtype=torch.long)  # BOS
        step = seqs
        for _ in range(steps):
            with torch.no_grad():
                probs = torch.softmax(net(step)[:, -1], -1)  # (n, V)
            probs[:, 0] = 0  # never BOS
            step = torch.multinomial(probs, 1, generator=gen)  # (n, 1)
            seqs = torch.cat([seqs, step], 1)
        return list(seqs.numpy())

    return generate


def test_erasure_acts_at_every_generated_position(tmp_path):
    """One token per forward call: LEACE on the level-1 ancestor removes u from the states of
    the generated tokens, so the token after 'a' / 'b' is the erased readout's guess; the
    accuracy is the one the eraser's own output predicts, position by position (an eraser that
    left index 0 of each call alone would change nothing: accuracy 1)."""
    from cfglab.analyze.erasure import cut0_correct, generation_scorer

    g = _ab(tmp_path)
    model = Planted(g)
    fit, test = sample(g, 60, 2), sample(g, 10, 3)
    scored = score_strings(model, g, test)
    w = resample_weights(len(test), 20, 0)
    n = 400
    score = generation_scorer(model, g, _one_token_sampler(model), n, 0, 50)
    out = erase_layers(
        model, g, fit, scored, ["ancestor"], draws=1, seed=0, weights=w, log=print,
        score_generation=score,
    )  # fmt: skip
    assert out["generation_clean"]["mean"] == 1.0 and out["generation_clean"]["k"] == n
    (cell,) = out["cells"]
    leace = cell["generation"]["leace"]
    # the oracle: P(BOS -> first -> second -> EOS) with the erased states of the generated
    # tokens through the planted readout (one-token calls: position noise sin(0) = 0)
    ids, table = _ids(g), _embedding(g).numpy().astype(np.float64)
    states = _fit_states(model, fit)
    eraser = fit_leace(Whitening.fit(states), states, _labels(g, fit), 2)

    def probs(state: np.ndarray, erase: bool) -> np.ndarray:
        logits = (eraser(state[None])[0] if erase else state) @ _readout(g).numpy().astype(float)
        p = np.exp(logits - logits.max())
        p[0] = 0.0  # BOS is never sampled
        return p / p.sum()

    predicted = sum(
        probs(table[0], False)[ids[first]]
        * probs(table[ids[first]], True)[ids[second]]
        * probs(table[ids[second]], True)[ids["EOS"]]
        for first, second in (("a", "x"), ("b", "y"))
    )
    assert predicted < 0.5  # the eraser destroys the dependence
    assert abs(leace["accuracy"]["mean"] - predicted) < 4 * np.sqrt(0.25 / n)
    assert leace["drop"]["mean"] == pytest.approx(1.0 - leace["accuracy"]["mean"])
    assert leace["drop"]["lo"] > 0.2
    # the judge: the eval accuracy family's verdicts
    seqs = [np.r_[0, ids["a"], ids["x"], ids["EOS"]], np.r_[0, ids["a"], ids["y"], ids["EOS"]],
            np.r_[0, ids["a"], ids["x"]], np.r_[0, ids["a"], 0, ids["EOS"]]]  # fmt: skip
    assert cut0_correct(g, seqs).tolist() == [True, False, False, False]


def _fit_states(model, batch) -> np.ndarray:
    """blocks.0.hook_resid_post at the token positions of batch's strings, (N, C) float64."""
    from cfglab.analyze.states import string_windows

    xs = batch.strings()
    tokens = string_windows(xs, eos=5, pad=6, block_size=16, causal=True)
    _, cache = run_with_cache(model, tokens, ["blocks.0.hook_resid_post"])
    h = cache["blocks.0.hook_resid_post"]
    return torch.cat([h[j, 1 : len(x) + 1] for j, x in enumerate(xs)]).double().numpy()


def _labels(grammar, batch) -> np.ndarray:
    from cfglab.analyze.targets import build_targets

    (target,) = build_targets(grammar, batch, ["ancestor"])
    return target.y


def test_erasure_under_the_kv_cache_equals_erasure_on_the_whole_prefix(tiny_gpt):
    """cfglab's sampler with a KV cache (one new position per call) and without (the whole
    prefix each step) give the same greedy strings under an eraser, and not the clean ones:
    the eraser acts at every generated position in both."""
    from cfglab.evaluate.generate import generate

    model, g = tiny_gpt
    name = "blocks.0.hook_resid_post"
    fit = sample(g, 40, 8, max_len=40)
    w = Whitening.fit(_gpt_states(model, fit, name))
    eraser = random_eraser(w, 8, np.random.default_rng(0))
    prompts = [torch.tensor([0, int(x[0])]) for x in sample(g, 6, 9).strings()] + [
        torch.tensor([0])
    ]

    def greedy(use_cache: bool) -> list[list[int]]:
        outs = generate(model, prompts, 20, eos_id=g.n_t + 1, greedy=True, use_cache=use_cache)
        return [o.tolist() for o in outs]

    clean = greedy(True)
    with erasing(model, name, eraser):
        cached, whole = greedy(True), greedy(False)
    assert cached == whole
    assert cached != clean


def _gpt_states(model, batch, name: str) -> np.ndarray:
    from cfglab.analyze.states import string_windows
    from cfglab.data.vocab import Vocab

    v, xs = Vocab.from_grammar(_quick()), batch.strings()
    tokens = string_windows(xs, eos=v.eos, pad=v.pad, block_size=48, causal=True)
    _, cache = run_with_cache(model, tokens, [name])
    h = cache[name]
    return torch.cat([h[j, 1 : len(x) + 1] for j, x in enumerate(xs)]).double().numpy()


def _quick():
    return load(str(ROOT / "configs/grammars/quickstart.cfg"))


def test_the_clean_generations_are_the_eval_family_s(tiny_gpt):
    """AnalysisContext.generate (the stages layer's) samples exactly the eval accuracy family's
    cut0 generations for the same model, seed and n, and the scorer's clean accuracy is the
    family's number."""
    import dataclasses

    from cfglab.analyze.erasure import cut0_correct, generation_scorer
    from cfglab.config import load_config
    from cfglab.evaluate.accuracy import judge_generations, judged_generations
    from cfglab.stages.common import analysis_context
    from cfglab.stages.evaluation import eval_context

    model, g = tiny_gpt
    cfg = load_config(None, ["model.preset=tiny", "model.block_size=48", "eval.batch_size=7"])
    ctx = analysis_context(cfg, model, g)
    n, seed = 20, 11
    ours = ctx.generate(model, n, seed)
    settings = dataclasses.replace(cfg.eval, seed=seed, n_samples=n, cuts=[0], temperatures=[1.0])
    ectx = eval_context(cfg, model, g, settings)
    result, judged = judged_generations(ectx, 0, 0)
    theirs = ectx.judged[(0, 0)]
    assert len(ours) == n and len(set(map(bytes, ours))) > 1
    generated = [np.asarray(s) for s in _eval_sequences(ectx, n)]
    assert [s.tolist() for s in ours] == [s.tolist() for s in generated]
    assert cut0_correct(g, ours).tolist() == judged[0].tolist()
    clean = generation_scorer(model, g, ctx.generate, n, seed, 20)(None, None)["accuracy"]
    assert clean["mean"] == result.accuracy and theirs[0].n == n
    # the judge on true strings, wrong ones, an unfinished one and a special token
    xs = sample(g, 12, 3, max_len=40).strings()
    eos = g.n_t + 1
    seqs = [np.r_[0, x, eos] for x in xs] + [np.r_[0, x[::-1], eos] for x in xs]
    seqs += [np.r_[0, xs[0]], np.r_[0, xs[1][:2], 0, eos], np.r_[0, eos]]
    assert cut0_correct(g, seqs).tolist() == judge_generations(g, seqs)[0].tolist()


def _eval_sequences(ectx, n: int) -> list[np.ndarray]:
    """The eval family's cut0 generations (temperature index 0), drawn again as it draws them."""
    return ectx.generate(1.0, ectx.prompts(n, 0), ectx.rng("eval_generate", 0, 0))


def test_patching_one_head_of_a_one_layer_model(tiny_gpt):
    """One layer, head 1 cut from the output projection: where the NT's last token is the same
    in both strings, the row after it depends on the prefix only through head 0's output at
    that position, so patching head 0 there gives the source's row (recovered 1) and head 1
    changes nothing (recovered 0), through patch_pairs' own tables too."""
    import dataclasses

    from cfglab.analyze.kl_rows import model_rows
    from cfglab.analyze.patching import _inputs
    from cfglab.config import load_config
    from cfglab.data.vocab import Vocab
    from cfglab.model import build_model, gpt_config

    _, g = tiny_gpt
    cfg = load_config(None, ["model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                             "model.block_size=48"])  # fmt: skip
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(g).size), seed=1).eval()
    d = model.config.n_embd // 2
    with torch.no_grad():
        model.blocks[0].attn.c_proj.weight[:, d:] = 0.0  # head 1's output is never read
    pairs = find_pairs(g, sample(g, 400, 5, max_len=40), 40, np.random.default_rng(0))
    keep = [i for i in range(len(pairs)) if pairs.target[i][pairs.end[i] - 1] ==
            pairs.source[i][pairs.end[i] - 1]]  # fmt: skip
    assert len(keep) >= 5
    pairs = _subset(pairs, keep)

    target, source = _inputs(model, g, pairs)
    own = model_rows(model, source, np.arange(len(pairs)), pairs.end, n_terminals=g.n_t)
    pairs = dataclasses.replace(pairs, exact=own / own.sum(1, keepdims=True))
    _, cache = run_with_cache(model, source, ["blocks.0.attn.hook_z"])
    z = cache["blocks.0.attn.hook_z"]  # (P, T, H, D)
    clean, src = pair_kls(model, target, pairs), pair_kls(model, source, pairs)
    at = pairs.end[:, None]
    head0 = pair_kls(model, target, pairs, patch_hooks("blocks.0.attn.hook_z", z, at, head=0))
    head1 = pair_kls(model, target, pairs, patch_hooks("blocks.0.attn.hook_z", z, at, head=1))
    np.testing.assert_allclose(head0, src, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(head1, clean, rtol=0, atol=1e-12)
    assert np.median(clean) > 1e4 * np.median(src)  # an untrained model, yet the pairs differ
    out = patch_pairs(model, g, pairs, window=2, n_boot=20, seed=0)
    assert out["head_layers"] == ["blocks.0.attn.hook_z"]
    (row,) = out["heads"]["all"]
    assert row[0]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert abs(row[1]["mean"]) < 1e-9


def _subset(pairs, keep: list[int]):
    import dataclasses

    return dataclasses.replace(
        pairs,
        target=[pairs.target[i] for i in keep],
        source=[pairs.source[i] for i in keep],
        **{k: getattr(pairs, k)[keep] for k in ("start", "end", "level", "same_nt", "exact")},
    )
