"""The embedding family: the geometry of token representations (stage 6b, analysis family).

Every token of the grammar (its terminals; for an implicit grammar the observable tokens) has
two representations here:

- `embedding`: its row of the model's input embedding, the same at every position;
- `last_state`: the mean of the last layer's residual stream (blocks.{L-1}.hook_resid_post) over
  the token's occurrences in the probe family's test strings (stream (probe.seed,
  "probe_test")), i.e. what the model makes of the token in context.

Bags: a *preterminal* is a nonterminal whose every rule emits one terminal; an implicit
grammar's hidden terminals are preterminals (`t1 -> '1' | '3' | '5'`) and their bags are the
paper's Result 10 vocabularies. The paper's figure: tokens of one bag are embedded alike.
Cosine similarities between pairs of distinct tokens are averaged within bags (the pair shares
a bag) and across them (it shares none); a grammar without preterminals (the cfg3 family)
reports the mean over all pairs. The random-init twin's geometry is the baseline.

Worked example: bags t1 = {1, 3}, t2 = {2, 4}: within = mean cos over (1,3), (2,4); across =
mean over (1,2), (1,4), (3,2), (3,4); gap = within - across (> 0: bags are told apart).
"""

from __future__ import annotations

import numpy as np
import torch

from cfglab.analyze.context import AnalysisContext
from cfglab.grammar.cfg import Grammar

TITLE = "Token geometry: are tokens of one bag embedded alike?"  # the report section's heading
DEFINITIONS: dict[str, str] = {
    "embedding_cos_within": (
        "mean cosine similarity of pairs of distinct tokens that share a bag (a preterminal's "
        "tokens, e.g. an implicit grammar's hidden terminal); space embedding: the input "
        "embedding rows; last_state: the token's mean last-layer residual in context"
    ),
    "embedding_cos_across": "the same over pairs of tokens that share no bag",
    "embedding_cos_gap": "embedding_cos_within - embedding_cos_across",
    "embedding_cos_mean": "mean cosine over all pairs of distinct tokens (a grammar without bags)",
}
MAX_FIGURE_TOKENS = 64  # the cosine heatmaps show at most this many tokens


def bags(grammar: Grammar) -> list[list[int]]:
    """Token ids (1..T) of each preterminal's bag, in nonterminal order; [] if none (also for a
    language beyond context-free: no rules)."""
    if not isinstance(grammar, Grammar):
        return []
    out = []
    for rules in grammar.rules_of:
        rhs = [grammar.rules[r].rhs for r in rules]
        if all(len(x) == 1 and grammar.is_terminal(x[0]) for x in rhs):
            out.append(sorted(x[0] - grammar.n_nt + 1 for x in rhs))
    return out


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """(T, C) -> (T, T) cosine similarities (a zero vector's row and column: NaN)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = vectors / norm
    return unit @ unit.T


def pair_means(cos: np.ndarray, token_bags: list[list[int]]) -> dict[str, float]:
    """cos (T, T) over token ids 1..T (row i = token i+1) -> within / across / gap, or mean."""
    t = cos.shape[0]
    off = ~np.eye(t, dtype=bool)
    if not token_bags:
        return {"mean": float(np.nanmean(cos[off]))}
    member = np.zeros((len(token_bags), t), dtype=bool)
    for k, bag in enumerate(token_bags):
        member[k, np.array(bag) - 1] = True
    shared = (member.T.astype(int) @ member.astype(int)) > 0  # (T, T): the pair shares a bag
    within, across = cos[shared & off], cos[~shared & off]
    w = float(np.nanmean(within)) if within.size else float("nan")
    a = float(np.nanmean(across)) if across.size else float("nan")
    return {"within": w, "across": a, "gap": w - a}


def token_vectors(model, grammar: Grammar, batch) -> dict[str, np.ndarray]:
    """{"embedding": (T, C), "last_state": (T, C)} for token ids 1..T (a token that never
    occurs in `batch` has a zero last_state row)."""
    from cfglab.analyze.states import string_windows
    from cfglab.data.vocab import Vocab
    from cfglab.model.hooks import run_with_cache

    t = grammar.n_t
    emb = model.embed.weight.detach()[1 : t + 1].float().cpu().numpy()  # ids 1..T
    name = f"blocks.{model.config.n_layer - 1}.hook_resid_post"
    vocab = Vocab.from_grammar(grammar)
    sums = np.zeros((t + 1, emb.shape[1]))
    counts = np.zeros(t + 1)
    strings = batch.strings()
    device = next(model.parameters()).device
    for s0 in range(0, len(strings), 16):
        chunk = strings[s0 : s0 + 16]
        tokens = string_windows(
            chunk,
            eos=vocab.eos,
            pad=vocab.pad,
            block_size=model.config.block_size,
            causal=model.config.causal,
        )
        _, cache = run_with_cache(model, tokens.to(device), [name], stop_early=True)
        h = cache[name].double().cpu().numpy()  # (B, T, C)
        for j, x in enumerate(chunk):
            np.add.at(sums, x, h[j, 1 : len(x) + 1])
            counts += np.bincount(x, minlength=t + 1)
    with np.errstate(invalid="ignore"):
        mean = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    return {"embedding": emb, "last_state": mean[1:]}


def supports(ctx: AnalysisContext) -> str | None:
    if not isinstance(getattr(ctx.model, "embed", None), torch.nn.Embedding):
        return "the model has no token embedding (model.embed)"
    return None


def _geometry(model, ctx: AnalysisContext, batch) -> dict:
    token_bags = bags(ctx.grammar)
    out = {}
    for space, vectors in token_vectors(model, ctx.grammar, batch).items():
        cos = cosine_matrix(vectors)
        out[space] = {**pair_means(cos, token_bags), "cosine": np.round(cos, 4).tolist()}
    return out


def measure(ctx: AnalysisContext) -> dict:
    p = ctx.cfg.probe
    batch = ctx.labelled("probe_test", p.n_test, p.seed)
    with torch.no_grad():
        out = {
            "bags": bags(ctx.grammar),
            "tokens": list(ctx.grammar.terminals),
            "n_strings": p.n_test,
            "model": _geometry(ctx.model, ctx, batch),
        }
        base = ctx.baseline(
            "embedding", [p.n_test, p.seed], lambda twin: _geometry(twin, ctx, batch)
        )
    if base is not None:
        out["random_init"] = base
    return out


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for key in ("model", "random_init"):
        for space, geo in (result.get(key) or {}).items():
            for stat in ("within", "across", "gap", "mean"):
                if stat in geo:
                    rows.append(
                        {
                            "metric": f"embedding_cos_{stat}",
                            "space": space,
                            "weights": "trained" if key == "model" else key,
                            "value": geo[stat],
                            "n": len(result["tokens"]),
                        }
                    )
    return rows


def tables(result: dict) -> list[dict]:
    stats = ["within", "across", "gap"] if result["bags"] else ["mean"]
    body = [
        [space, "trained" if key == "model" else "random init"] + [f"{geo[s]:.3f}" for s in stats]
        for key in ("model", "random_init")
        for space, geo in (result.get(key) or {}).items()
    ]
    what = f"{len(result['bags'])} bags" if result["bags"] else "no bags (every token alone)"
    return [
        {
            "title": f"Token geometry: cosine similarity of token representations ({what})",
            "header": ["space", "weights", *(f"cos {s}" for s in stats)],
            "rows": body,
        }
    ]


def figures(result: dict) -> list[dict]:
    """Cosine matrices, tokens ordered bag by bag: trained above, random init below."""
    order = [t for bag in result["bags"] for t in bag] or list(range(1, len(result["tokens"]) + 1))
    order = list(dict.fromkeys(order))[:MAX_FIGURE_TOKENS]  # a token in two bags: shown once
    names = [result["tokens"][t - 1] for t in order]
    idx = np.array(order) - 1
    panels = []
    for row, key in enumerate(("model", "random_init")):
        for space, geo in (result.get(key) or {}).items():
            cos = np.array(geo["cosine"], dtype=float)[np.ix_(idx, idx)]
            panels.append(
                {
                    "title": f"{key.replace('_', ' ')}: {space}",
                    "values": np.where(np.isnan(cos), None, cos).tolist(),
                    "xlabels": names,
                    "ylabels": names,
                    "vmin": -1,
                    "vmax": 1,
                    "cmap": "coolwarm",
                    "row": row,
                }
            )
    return [
        {
            "name": "embedding_cosine",
            "kind": "heatmaps",
            "title": "cosine similarity of token representations (tokens ordered by bag)",
            "caption": "token geometry: cosine similarity within and across bags",
            "panels": panels,
        }
    ]


COMPARE = [
    {
        "name": f"embedding_{stat}",
        "kind": "lines",
        "title": f"token geometry: cosine {stat} (dotted: random init)",
        "metric": f"embedding_cos_{stat}",
        "where": {},
        "x": ["space"],
        "panels": [],
        "styles": {"qualifier": "weights", "values": {"trained": "-", "random_init": ":"}},
        "ylabel": f"cosine {stat}",
        "caption": DEFINITIONS[f"embedding_cos_{stat}"],
    }
    for stat in ("gap", "mean")
]
