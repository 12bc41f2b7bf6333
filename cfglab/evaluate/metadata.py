"""Metadata conditioning at test time: does the model obey the rules the metadata names, and how
close is it to the exact distribution given them? (stage 6a, metric family)

For a run trained with data.metadata (cfglab.data.metadata; eval.metadata: the depths named,
by default the training's), prompts are BOS followed by the metadata of a fresh true string (its
tree's rule choices at those depths). The exact reference is the grammar given the metadata,
cfglab.data.metadata.conditioned (cfglab.grammar.condition, or a mixture over unnamed choices
above): same terminals, same token ids. The family does not apply without eval.metadata. The
same model without metadata is the accuracy and distribution families' (cut0, kl); this family
also scores the plain prompts on its own strings so the two KLs are paired string by string.
"""

from __future__ import annotations

import math

import numpy as np

from cfglab.data.metadata import Metadata, conditioned
from cfglab.data.vocab import BOS
from cfglab.evaluate.accuracy import judge_generations, judged_generations
from cfglab.evaluate.context import EvalContext
from cfglab.evaluate.distribution import distribution_metrics
from cfglab.evaluate.stats import wilson_interval

N_BOOTSTRAP = 1000  # resamples of the strings behind each KL interval
GENERATION_METRICS = (
    "metadata_accuracy",
    "metadata_obeyed",
    "metadata_obeyed_chance",
    "metadata_accuracy_gain",
    "metadata_obeyed_gain",
)

DEFINITIONS: dict[str, str] = {
    "metadata_accuracy": (
        "share of generations prompted with BOS + the metadata of a fresh true string (stream "
        "'eval_metadata'; its tree's rule choices at eval.metadata's depths) whose completion, up "
        "to the first EOS, is in the grammar's language (exact CYK); a metadata or other special "
        "token before EOS, or no EOS, is wrong. 95% Wilson interval."
    ),
    "metadata_obeyed": (
        "share of the same generations whose completion is in the language of the grammar given "
        "the metadata (cfglab.data.metadata.conditioned: the trees that make the named rule "
        "choices), by exact CYK: the generation obeys the named rules. 95% Wilson interval."
    ),
    "metadata_obeyed_chance": (
        "share of the model's plain cut0 generations (BOS alone; the accuracy family's) whose "
        "string is in the language given the metadata of the same-index prompt above: what "
        "obeying scores when the metadata is not read. 95% Wilson interval."
    ),
    "metadata_accuracy_gain": (
        "metadata_accuracy minus the accuracy of the model's plain cut0 generations (BOS alone, "
        "the accuracy family's, same temperature): what naming the rules adds to grammaticality."
        " 95% normal interval of a difference of two independent proportions."
    ),
    "metadata_obeyed_gain": (
        "metadata_obeyed minus metadata_obeyed_chance: how much more often the model's "
        "generations obey the named rules when it reads them. 95% normal interval of a "
        "difference of two independent proportions."
    ),
    "kl_given_metadata": (
        "next-token KL (the distribution family's definition: smoothed, rows k = 0..n of a true "
        "string x, EOS included) between the exact P(next | x_<=k, metadata of x) and the model "
        "prompted with BOS + the metadata + x_<=k, mean over eval.n_kl fresh strings (stream "
        "'eval_kl', the distribution family's); 95% percentile bootstrap over the strings."
    ),
    "kl_without_metadata": (
        "the same strings and rows without metadata: the model after BOS + x_<=k against the "
        "plain grammar's P(next | x_<=k) (the distribution family's kl on these strings), paired "
        "string by string with kl_given_metadata; 95% percentile bootstrap."
    ),
}


def _metadata(ctx: EvalContext) -> Metadata:
    return Metadata(ctx.grammar, tuple(sorted(ctx.settings.metadata)))


def _given(ctx: EvalContext, meta: Metadata, choices) -> object:
    """The grammar given one string's metadata, built once per distinct metadata (memo)."""
    named = meta.named(choices)
    key = ("metadata_grammar", tuple(sorted(named.items())))
    if key not in ctx.memo:
        ctx.memo[key] = ctx.exact(conditioned, ctx.grammar, named)
    return ctx.memo[key]


def _fits(ctx: EvalContext, prefix: np.ndarray, x: np.ndarray) -> bool:
    """BOS + prefix + x fits the model's window (ctx.max_len = block_size - 1)."""
    return ctx.max_len is None or 1 + len(prefix) + len(x) <= ctx.max_len + 1


def _bootstrap(values: np.ndarray, rng: np.random.Generator) -> dict:
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return {"value": mean, "ci_low": mean, "ci_high": mean, "n": n}
    means = values[rng.integers(0, n, size=(N_BOOTSTRAP, n))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"value": mean, "ci_low": float(low), "ci_high": float(high), "n": n}


def _share(ok: np.ndarray) -> dict:
    n, k = len(ok), int(np.sum(ok))
    low, high = wilson_interval(k, n) if n else (0.0, 1.0)
    return {"value": k / n if n else float("nan"), "ci_low": low, "ci_high": high, "n": n}


def _gain(a: dict, b: dict) -> dict:
    """a - b for two shares (_share's dicts) of independent samples, 95% normal interval."""
    d = a["value"] - b["value"]
    var = sum(s["value"] * (1 - s["value"]) / s["n"] for s in (a, b) if s["n"])
    half = 1.96 * math.sqrt(var)
    return {"value": d, "ci_low": d - half, "ci_high": d + half, "n": a["n"]}


def _kl(ctx: EvalContext, meta: Metadata) -> dict:
    """kl_given_metadata and kl_without_metadata on the same true strings."""
    from cfglab.exact import inside

    batch = ctx.true_batch(ctx.n_kl, "eval_kl")
    choices = meta.batch_choices(batch)
    prefixes = [meta.tokens(c) for c in choices]
    keep = [i for i, x in enumerate(batch.strings()) if _fits(ctx, prefixes[i], x)]
    strings = [batch.strings()[i] for i in keep]
    t = ctx.grammar.n_t
    with_rows, plain_rows = [], []
    for i, x in zip(keep, strings, strict=True):
        with_rows.append(ctx.exact(inside.next_token_dist, _given(ctx, meta, choices[i]), [x])[0])
    plain_rows = ctx.exact(inside.next_token_dist, ctx.grammar, strings)
    b = ctx.settings.batch_size
    seq_with = [np.concatenate([[BOS], prefixes[i], x]) for i, x in zip(keep, strings, strict=True)]
    seq_plain = [np.concatenate([[BOS], x]) for x in strings]
    lq_with, lq_plain = [], []
    for j in range(0, len(strings), b):
        lq_with += ctx.model(seq_with[j : j + b])
        lq_plain += ctx.model(seq_plain[j : j + b])
    # the rows that predict x_1 .. x_n and EOS: after the metadata, and after BOS
    lq_with = [lq[len(prefixes[i]) :] for i, lq in zip(keep, lq_with, strict=True)]
    given = distribution_metrics(strings, with_rows, lq_with, t)
    plain = distribution_metrics(strings, plain_rows, lq_plain, t)
    rng = ctx.rng("metadata_bootstrap")
    return {
        "kl_given_metadata": _bootstrap(np.array(given.kl_per_string), rng),
        "kl_without_metadata": _bootstrap(np.array(plain.kl_per_string), rng),
    }


def _generations(ctx: EvalContext, meta: Metadata, t_index: int) -> dict:
    """metadata_accuracy, metadata_obeyed and metadata_obeyed_chance at one temperature."""
    from cfglab.exact import cyk

    batch = ctx.true_batch(ctx.n, "eval_metadata")
    choices = meta.batch_choices(batch)
    prompts = [np.concatenate([[BOS], meta.tokens(c)]).astype(np.int64) for c in choices]
    temperature = ctx.settings.temperatures[t_index]
    seqs = ctx.generate(temperature, prompts, ctx.rng("eval_metadata_generate", t_index))
    # judged as cut0 generations once the metadata is dropped (a metadata token generated after
    # it is a special token: wrong)
    completions = [np.concatenate([[BOS], s[len(p) :]]) for s, p in zip(seqs, prompts, strict=True)]
    correct, _, strings, _, _ = ctx.exact(judge_generations, ctx.grammar, completions)
    obeyed = np.zeros(len(strings), dtype=bool)
    for i in np.flatnonzero(correct):
        obeyed[i] = ctx.exact(cyk.recognize, _given(ctx, meta, choices[i]), [strings[i]])[0]
    plain, (plain_ok, _, plain_strings, _, _) = judged_generations(ctx, 0, t_index)
    chance = np.zeros(len(plain_strings), dtype=bool)
    for i in np.flatnonzero(plain_ok[: len(choices)]):
        given = _given(ctx, meta, choices[i])
        chance[i] = ctx.exact(cyk.recognize, given, [plain_strings[i]])[0]
    out = {
        "temperature": temperature,
        "metadata_accuracy": _share(correct),
        "metadata_obeyed": _share(obeyed),
        "metadata_obeyed_chance": _share(chance[: len(choices)]),
    }
    out["metadata_accuracy_gain"] = _gain(out["metadata_accuracy"], _share(plain_ok))
    out["metadata_obeyed_gain"] = _gain(out["metadata_obeyed"], out["metadata_obeyed_chance"])
    return out


def measure(ctx: EvalContext) -> dict | None:
    """The family's result (DEFINITIONS); None without eval.metadata."""
    if not ctx.settings.metadata:
        return None
    meta = _metadata(ctx)
    out = {"levels": list(meta.levels), "kl": _kl(ctx, meta), "generations": []}
    for ti in range(len(ctx.settings.temperatures)):
        out["generations"].append(_generations(ctx, meta, ti))
    return out


def summary_rows(result: dict) -> list[dict]:
    rows = [{"metric": name, **stats} for name, stats in result["kl"].items()]
    for g in result["generations"]:
        for name in GENERATION_METRICS:
            rows.append({"metric": name, "cut": 0, "temperature": g["temperature"], **g[name]})
    return rows
