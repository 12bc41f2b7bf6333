"""The interventions family: does the model *use* what the probes read? (stage 6b, analysis
family, run by `cfglab intervene RUN`, the optional `intervene` stage)

Probes show that the parse tree is linearly readable from the residual stream; they do not show
that the model's predictions depend on it. Three interventions answer that, each scored by the
next-token KL to the grammar's exact distribution (cfglab.analyze.kl_rows), which cfglab has and
sample-based studies do not:

- erasure (cfglab.analyze.erasure): per layer and probe target (the level-l NT ancestor and
  boundary), LEACE removes every linear reader's information from the residual stream; the KL
  rise, by the level of the NT ending before each row, beside random subspaces of equal rank;
- patching (cfglab.analyze.patching): per layer and position relative to an NT's end, the
  share of the difference between two true strings that differ in one subtree which flows
  through that residual-stream cell;
- heads (cfglab.analyze.ablation): each attention head mean-ablated, the KL rise by row group.

Strings: streams (intervene.seed, "intervene_fit" / "intervene_test" / "intervene_pairs"):
n_fit labelled strings fit the erasers and the head means, n_strings others are scored, and
patching pairs come from a pool of n_pool. Intervals: 95% percentile bootstrap over the scored
strings (patching: over pairs; generation accuracy: over generations), n_bootstrap resamples.

Erasure also costs generation accuracy: intervene.n_generate cut0 strings sampled with the
eraser active at every generated position (cfglab.analyze.erasure.erasing), judged by the exact
recognizer, beside the clean model's on the same sampling seed. The sampler is the eval family's
(AnalysisContext.generate, built by the stages layer: analyze does not import cfglab.evaluate);
a context without one skips this with one line. Patching also moves single heads: each head's
output (blocks.{L}.attn.hook_z[:, e, h]) at the NT end, scored by the same share recovered.
"""

from __future__ import annotations

from cfglab.analyze.context import AnalysisContext
from cfglab.seeds import rng

TITLE = "Interventions: does the model use what the probe reads?"
PARTS = ("erasure", "patching", "heads")  # cfglab.config.schema.INTERVENTION_PARTS
ROWS = (
    "rows: the next-token rows averaged: all, or those after a token that ends a level-l NT "
    "(L<l>, the shallowest such level, as eval's kl_by_level), inside (no NT ends there), start "
    "(after BOS)"
)
DEFINITIONS: dict[str, str] = {
    "intervene_kl_clean": (
        "the unmodified model's next-token KL(exact || model) on the intervene.n_strings scored "
        "strings, rows pooled (eval's row KL: [EOS, terminals], both smoothed by 1e-5); " + ROWS
    ),
    "erase_kl_rise": (
        "mean over rows of KL(exact || model with an eraser on blocks.{layer}.hook_resid_post at "
        "every token position) - KL(exact || model); eraser leace: LEACE (Belrose et al. 2023) "
        "fitted on intervene.n_fit strings' states to the probe target's one-hot labels (target, "
        "level), rank = the labels' (K-1 for K classes); eraser random: the same form with a "
        "random whitened subspace of equal rank, averaged over intervene.random_draws draws; 95% "
        "CI: bootstrap over strings. " + ROWS
    ),
    "erase_kl_excess": (
        "erase_kl_rise(leace) - erase_kl_rise(random), paired by row: what erasing the probe's "
        "information costs beyond removing as much of the state at random"
    ),
    "head_ablation_kl_rise": (
        "mean over rows of KL(exact || model with head `head` of layer `layer` mean-ablated: its "
        "hook_z output replaced by its mean over the fit strings' positions) - KL(exact || "
        "model); 95% CI: bootstrap over strings. " + ROWS
    ),
    "erase_accuracy_clean": (
        "share of intervene.n_generate cut0 generations of the unmodified model (BOS only, "
        "temperature 1: the eval family's sampler on the stream (intervene.seed, "
        "'eval_generate', 0, 0), so it equals the eval family's cut0 accuracy at eval.seed = "
        "intervene.seed, eval.n_samples = intervene.n_generate when eval.temperatures starts "
        "with 1.0) that are sentences by exact CYK recognition (an EOS produced, only terminals "
        "before it); 95% CI: percentile bootstrap over generations"
    ),
    "erase_accuracy": (
        "erase_accuracy_clean's measure with an eraser on blocks.{layer}.hook_resid_post at every"
        " position but BOS (the KV cache's one-token steps included), sampling under the same "
        "seed; eraser leace: erase_kl_rise's LEACE eraser of (target, level), random: its first "
        "random draw of equal rank"
    ),
    "erase_accuracy_drop": (
        "erase_accuracy_clean - erase_accuracy(eraser), eraser leace or random: the accuracy the "
        "eraser costs; 95% CI: percentile bootstrap over generation indices, resampled jointly "
        "(generation i of both samples under the same seed)"
    ),
    "patch_recovered": (
        "pairs of true strings that share a prefix and differ in one level-l subtree of equal "
        "span (next-token rows after it differing by >= 0.05 total variation): sum over pairs of"
        " [KL(p* || q_clean) - KL(p* || q_patched)] / sum of [KL(p* || q_clean) - KL(p* || "
        "q_source)], at the row right after the subtree, p* the source's exact row, patching the"
        " source's blocks.{layer}.hook_resid_post at position NT end + offset into the target "
        "run; 1 = as far towards the source as running the source; 95% CI: bootstrap over pairs"
    ),
    "patch_head_recovered": (
        "patch_recovered with one head's output patched instead of the residual stream: the "
        "source's blocks.{layer}.attn.hook_z[:, e, head, :] (what the output projection receives "
        "from head `head`) at the NT's last position e, on the same pairs; 1 = the head carries "
        "all of the way to the source, 0 = nothing"
    ),
}


def erase_targets(grammar) -> list[str]:
    """The probe targets erased when intervene.targets is null: the probe's defaults but
    `ends` (one probe per label: a layer's worth of forward passes each)."""
    from cfglab.analyze.targets import default_targets

    return [t for t in default_targets(grammar) if t != "ends"]


# ---- the family protocol ---------------------------------------------------------------------
def supports(ctx: AnalysisContext) -> str | None:
    """A causal model with a residual stream hook per layer."""
    from cfglab.model.hooks import hook_names

    if not ctx.model.config.causal:
        return "an encoder (masked LM) has no next-token distribution to compare with the exact one"
    names = set(hook_names(ctx.model))
    if not all(f"blocks.{i}.hook_resid_post" in names for i in range(ctx.model.config.n_layer)):
        return "the model has no blocks.{i}.hook_resid_post hook per layer"
    return None


def measure(ctx: AnalysisContext) -> dict:
    """Every part of intervene.parts on the context's model."""
    from cfglab.analyze.ablation import ablate_heads, z_names
    from cfglab.analyze.erasure import erase_layers
    from cfglab.analyze.kl_rows import pooled, resample_weights, score_strings
    from cfglab.analyze.patching import find_pairs, patch_pairs

    s = ctx.cfg.intervene
    targets = list(s.targets) if s.targets is not None else erase_targets(ctx.grammar)
    fit = ctx.labelled("intervene_fit", s.n_fit, s.seed)
    scored = score_strings(
        ctx.model, ctx.grammar, ctx.labelled("intervene_test", s.n_strings, s.seed)
    )
    weights = resample_weights(scored.n_strings, s.n_bootstrap, s.seed)
    out = {
        "parts": list(s.parts),
        "targets": targets,
        "n_fit": s.n_fit,
        "n_strings": s.n_strings,
        "random_draws": s.random_draws,
        "n_generate": s.n_generate,
        "groups": scored.groups,
        "clean": pooled(scored.clean, scored, weights),
        "erasure": None,
        "patching": None,
        "heads": None,
    }
    if "erasure" in s.parts:
        ctx.log(f"erasure: {', '.join(targets)} per layer, {s.random_draws} random draws each")
        out["erasure"] = erase_layers(
            ctx.model, ctx.grammar, fit, scored, targets,
            draws=s.random_draws, seed=s.seed, weights=weights, log=ctx.log,
            score_generation=_scorer(ctx),
        )  # fmt: skip
    if "heads" in s.parts and z_names(ctx.model):
        out["heads"] = ablate_heads(
            ctx.model, ctx.grammar, fit, scored, weights=weights, log=ctx.log
        )
    elif "heads" in s.parts:
        ctx.log("heads: skipped: the model has no attention heads (no blocks.{i}.attn.hook_z)")
    if "patching" in s.parts:
        pool = ctx.labelled("intervene_pairs", s.n_pool, s.seed)
        pairs = find_pairs(ctx.grammar, pool, s.n_pairs, rng(s.seed, "intervene_pick"))
        ctx.log(f"patching: {len(pairs)} pairs from {s.n_pool} strings")
        if len(pairs):
            out["patching"] = patch_pairs(
                ctx.model, ctx.grammar, pairs, window=s.window, n_boot=s.n_bootstrap, seed=s.seed
            )
    return out


def _scorer(ctx: AnalysisContext):
    """The erasure part's generation scorer, or None (intervene.n_generate 0, or a context
    without a sampler: one line says so)."""
    from cfglab.analyze.erasure import generation_scorer

    s = ctx.cfg.intervene
    if not s.n_generate:
        return None
    if ctx.generate is None:
        ctx.log("erasure: generation accuracy skipped: the context has no sampler (generate)")
        return None
    return generation_scorer(
        ctx.model, ctx.grammar, ctx.generate, s.n_generate, s.seed, s.n_bootstrap
    )


def summary_rows(result: dict) -> list[dict]:
    """Tidy rows of every part measured (the metrics of DEFINITIONS)."""
    from cfglab.analyze.intervention_views import (
        erasure_rows,
        generation_rows,
        group_rows,
        head_rows,
        patching_rows,
    )

    n = result["n_strings"]
    rows = group_rows({"metric": "intervene_kl_clean"}, result["clean"], n)
    rows += erasure_rows(result["erasure"], n)
    rows += generation_rows(result["erasure"])
    rows += head_rows(result["heads"], n)
    rows += patching_rows(result["patching"])
    return rows


def tables(result: dict) -> list[dict]:
    from cfglab.analyze.intervention_views import (
        erasure_tables,
        generation_table,
        head_patching_table,
        head_table,
        patching_tables,
    )

    return [
        *erasure_tables(result),
        *generation_table(result),
        *patching_tables(result["patching"]),
        *head_patching_table(result["patching"]),
        *head_table(result),
    ]


def figures(result: dict) -> list[dict]:
    from cfglab.analyze.intervention_views import (
        erasure_figures,
        generation_figure,
        head_figure,
        head_patching_figure,
        patching_figure,
    )

    return [
        *erasure_figures(result),
        *generation_figure(result),
        *patching_figure(result["patching"]),
        *head_patching_figure(result["patching"]),
        *head_figure(result),
    ]


# cross-run views for `cfglab compare` (data: compare draws them without knowing this family)
COMPARE = [
    {
        "name": "erasure",
        "kind": "lines",
        "title": "next-token KL rise when a layer's probe information is erased (dotted: random)",
        "metric": "erase_kl_rise",
        "where": {"rows": "all"},
        "x": ["layer"],
        "panels": ["target", "level", "label"],
        "styles": {"qualifier": "eraser", "values": {"leace": "-", "random": ":"}},
        "ylabel": "KL rise (nats per row)",
        "caption": "KL rise per layer when LEACE erases a probe target (dotted: a random subspace "
        "of equal rank)",
    },
    {
        "name": "patching",
        "kind": "lines",
        "title": "share recovered by patching the NT end's residual stream",
        "metric": "patch_recovered",
        "where": {"offset": 0},
        "x": ["layer"],
        "panels": ["level"],
        "ylabel": "recovered share",
        "caption": "activation patching at the NT's last token: share of the way to the source",
    },
    {
        "name": "erasure_generation",
        "kind": "lines",
        "title": "cut0 generation accuracy when a layer's probe information is erased (dotted: "
        "random)",
        "metric": "erase_accuracy",
        "where": {},
        "x": ["layer"],
        "panels": ["target", "level", "label"],
        "styles": {"qualifier": "eraser", "values": {"leace": "-", "random": ":"}},
        "ylabel": "accuracy",
        "caption": "share of cut0 generations in the language with LEACE erasing a probe target"
        " at every generated position (dotted: a random subspace of equal rank)",
    },
    {
        "name": "patching_heads",
        "kind": "lines",
        "title": "share recovered by patching one head's output at the NT end",
        "metric": "patch_head_recovered",
        "where": {},
        "x": ["head"],
        "panels": ["level", "layer"],
        "ylabel": "recovered share",
        "caption": "activation patching of one head's output (hook_z) at the NT's last token",
    },
    {
        "name": "heads",
        "kind": "lines",
        "title": "KL rise when one head is mean-ablated",
        "metric": "head_ablation_kl_rise",
        "where": {"rows": "all"},
        "x": ["head"],
        "panels": ["layer"],
        "ylabel": "KL rise (nats per row)",
        "caption": "next-token KL rise per mean-ablated head",
    },
]
