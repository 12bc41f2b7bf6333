"""Assemble a run's report from its result files alone (no torch): Markdown + self-contained HTML.

`build_report(run_dir)` writes `report/report.md`, `report/report.html` (figures embedded as
base64, one file to share) and `report/figures/*.png`: the loss curve (metrics.jsonl), accuracy
with its confidence interval, KL per position, first-error positions (eval/*.json). Every metric
is printed with its definition, read from the result files (evaluate.metrics.DEFINITIONS).
`build_report(run_dir, compare=[other, ...])` adds a "Compared runs" section: probe results
side by side (e.g. the GPT and its masked-LM encoder twin, `cfglab report A --compare B`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from cfglab import rundir
from cfglab.errors import CfglabError
from cfglab.report import plots
from cfglab.report.html import md_to_html
from cfglab.report.results import RunResults, load_run, run_state, stale_results
from cfglab.report.tables import rows_markdown


def _fmt(v, digits: int = 5) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def make_figures(res: RunResults, fig_dir: Path) -> dict[str, Path]:
    """Every figure the results allow, name -> PNG path."""
    figs: dict[str, Path] = {}
    steps, loss = res.series("loss")
    if steps:
        floor = (res.loss_floor or {}).get("value")
        figs["loss"] = plots.plot_loss(
            steps, loss, fig_dir / "loss.png", val=res.series("val_loss"), floor=floor
        )
    if res.accuracy:
        figs["accuracy"] = plots.plot_accuracy(res.accuracy, fig_dir / "accuracy.png")
        wrong = [p for a in res.accuracy for p in a.get("first_error", []) if p >= 0]
        if wrong:
            figs["first_error"] = plots.plot_first_errors(
                wrong, fig_dir / "first_error.png", title="first error position (all cuts)"
            )
    if res.distribution.get("kl_by_position"):
        figs["kl_by_position"] = plots.plot_kl_by_position(
            res.distribution["kl_by_position"], fig_dir / "kl_by_position.png"
        )
    optional = {
        "robustness": plots.plot_robustness_by_temperature(
            res.robustness, fig_dir / "robustness.png"
        ),
        "unprompted_errors": plots.plot_unprompted_errors(
            res.accuracy, fig_dir / "unprompted_errors.png"
        ),
    }
    figs.update({k: v for k, v in optional.items() if v is not None})
    return figs


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _size(cfg: dict) -> str:
    m = cfg.get("model", {})
    return m.get("preset") or f"{m.get('n_layer')}L/{m.get('n_head')}H/{m.get('n_embd')}D"


def _header(res: RunResults) -> list[str]:
    cfg = res.config
    out = [f"# cfglab report: {res.name}", "", *state_lines(res.run_dir)]
    if cfg:
        m, t = cfg.get("model", {}), cfg.get("train", {})
        out += [
            f"grammar **{cfg.get('grammar', {}).get('name')}**, model {_size(cfg)}, position "
            f"**{m.get('position')}**, objective {t.get('objective')}, "
            f"{t.get('max_steps')} steps x batch {t.get('batch_size')} x "
            f"{m.get('block_size')} tokens",
            "",
        ]
    return out


def state_lines(run_dir: Path) -> list[str]:
    """The report's first words when its numbers do not describe the run's final model: an
    unfinished run, or result files measured on another training record or step (each named,
    with the command that measures it again). [] for a current run."""
    state, why = run_state(run_dir)
    if state == "unfinished":
        return [
            f"**Unfinished run: {why}.** Its numbers describe a model in mid-training; resume it "
            "(`cfglab train CONFIG --resume`, or sweep again) before reading them.",
            "",
        ]
    if state != "stale":
        return []
    files = "; ".join(stale_results(run_dir))
    return [
        f"**Stale results: {files}.** They were not measured on this run's current model: "
        f"rerun the stages that wrote them (`cfglab eval {run_dir}`, `cfglab analyze "
        f"{run_dir}`, `cfglab dynamics {run_dir}`).",
        "",
    ]


LEARNED_AT = 0.90  # the rule's threshold on cut0 generation accuracy


def learned_line(res: RunResults) -> str:
    """The report's first line: did the model learn the grammar? A fixed rule on one number,
    cut0 generation accuracy at the first temperature judged by the exact recognizer: yes when
    its 95% interval's lower end is >= LEARNED_AT, no when the upper end is below it, else
    undecided; the KL and the loss above the floor are given beside it, not judged."""
    cut0 = [a for a in res.accuracy if a["cut"] == 0]
    if not cut0:
        return (
            "**Learned the grammar: not judged** (no cut0 generation accuracy: the model does "
            "not generate, or the eval stage has not run)."
        )
    a = cut0[0]
    word = (
        "yes" if a["ci_low"] >= LEARNED_AT else "no" if a["ci_high"] < LEARNED_AT else "undecided"
    )
    text = (
        f"**Learned the grammar: {word}.** cut0 generation accuracy "
        f"{100 * a['accuracy']:.1f}% [{100 * a['ci_low']:.1f}, {100 * a['ci_high']:.1f}] "
        f"(n = {a['n']}, T = {a['temperature']:g}, each judged by the exact recognizer); the "
        f"rule: learned when the 95% interval's lower end is at least {LEARNED_AT:.0%}, not "
        "learned when its upper end is below."
    )
    d, floor = res.distribution, res.loss_floor
    if d:
        text += f" Beside it: next-token KL {d['kl']:.3g} (the grammar itself: 0)"
        _, vl = res.series("val_loss")
        if vl and floor is not None:
            text += (
                f"; validation loss {vl[-1]:.4f}, the perfect model's {floor['value']:.4f} "
                f"(+{vl[-1] - floor['value']:.4f})"
            )
        text += "."
    return text


def _training(res: RunResults, fig) -> list[str]:
    out = ["## Training", ""]
    steps, loss = res.series("loss")
    if not steps:
        return out + ["(no metrics.jsonl)", ""]
    _, vl = res.series("val_loss")
    last = f"final train loss {loss[-1]:.4f} at step {steps[-1]}"
    out += [last + (f", validation loss {vl[-1]:.4f}" if vl else "") + ".", ""]
    floor = res.loss_floor
    if floor is not None:
        out += [
            f"A perfect model's loss on the packed training windows is {floor['value']:.4f} "
            f"± {floor['stderr']:.4f} (s.e.; exact log-probabilities of {floor['n_strings']} "
            "true strings, diluted by the certain BOS after each EOS).",
            "",
        ]
    return out + fig("loss", "training loss")


def _accuracy(res: RunResults, fig) -> list[str]:
    if not res.accuracy:
        return []
    header = ["prompt", "T", "n", "correct", "accuracy", "95% CI (Wilson)",
              "95% CI (Clopper-Pearson)", "unfinished", "bad token"]  # fmt: skip
    body = [
        [
            f"cut{a['cut']}",
            f"{a['temperature']:g}",
            str(a["n"]),
            str(a["n_correct"]),
            _fmt(a["accuracy"], 4),
            f"[{a['ci_low']:.4f}, {a['ci_high']:.4f}]",
            f"[{a['cp_low']:.4f}, {a['cp_high']:.4f}]",
            str(a["n_unfinished"]),
            str(a["n_bad_token"]),
        ]
        for a in res.accuracy
    ]
    out = ["## Generation accuracy", "", *_table(header, body), ""]
    out += fig("accuracy", "generation accuracy with 95% CI")
    out += fig("unprompted_errors", "unprompted (cut0) error rate against temperature")
    return out + fig("first_error", "first error positions")


def _distribution(res: RunResults, fig) -> list[str]:
    d = res.distribution
    if not d:
        return []
    rows = [
        ["next-token KL (mean over strings)", f"{_fmt(d['kl'])} ± {_fmt(d['kl_stderr'])} (s.e.)"],
        ["sequence KL(P‖Q), nats/token", _fmt(d["seq_kl"])],
        ["model cross-entropy, nats/token", _fmt(d["cross_entropy"])],
        ["true entropy rate, nats/token", _fmt(d["entropy_rate"])],
        ["true entropy rate (row entropies)", _fmt(d["entropy_rate_rb"])],
        ["strings / rows", f"{d['n_strings']} / {d['n_rows']}"],
    ]
    by_pos = [
        [f"{b['lo']}..{'' if b['hi'] is None else b['hi'] - 1}", _fmt(b["kl"]), str(b["n_rows"])]
        for b in d["kl_by_position"]
    ]
    out = ["## Distance to the true distribution", "", *_table(["metric", "value"], rows), ""]
    out += [*_table(["prefix length", "KL", "rows"], by_pos), ""]
    if d.get("kl_by_level"):
        by_level = [[g, _fmt(v["kl"]), str(v["n_rows"])] for g, v in d["kl_by_level"].items()]
        out += [*_table(["NT ending before the row", "KL", "rows"], by_level), ""]
    return out + fig("kl_by_position", "next-token KL by position")


def _diversity(res: RunResults) -> list[str]:
    v, d = res.diversity, res.distribution
    if not v:
        return []
    g = v["generations"]
    support = (
        _fmt(g["collision_support"], 1)
        if g["collision_support"]
        else f">= {_fmt(g['collision_support_lower'], 1)}"
    )
    rows = [
        ["distinct cut0 generations", f"{g['distinct']} of {g['n']}"],
        ["equal pairs", str(g["equal_pairs"])],
        ["birthday support estimate", support],
    ]
    if "fixed_prompt" in v:
        f = v["fixed_prompt"]
        rows.append(["distinct completions of one prompt", f"{f['distinct']} of {f['n']}"])
    for key, label in (
        ("model_entropy_per_token", "model entropy, nats/token"),
        ("entropy_support_log10", "entropy-based support, log10 strings"),
        ("reverse_kl", "reverse KL(Q_L || P), nats/token (Q given the language)"),
        ("reverse_kl_stderr", "its standard error"),
        ("share_in_language", "share of generations in the language"),
        ("seen_in_training", "share seen in training"),
    ):
        if v.get(key) is not None:
            rows.append([label, _fmt(v[key])])
    if d.get("n_strings"):  # the truth's entropy per string, for comparison
        h_true = d["entropy_rate"] * d["n_rows"] / d["n_strings"]
        rows.append(["true entropy-based support, log10 strings", _fmt(h_true / math.log(10))])
    out = ["## Diversity", "", f"cut0 generations at T={v.get('temperature', 1):g}.", ""]
    out += [*_table(["metric", "value"], rows), ""]
    sub = v.get("subtree") or {}
    if sub.get("per_level"):
        out += [
            f"Distinct subtree yields per level: {sub['n_generated']} grammatical "
            f"generations vs {sub['n_true']} true strings.",
            "",
        ]
        levels = [[str(r["level"]), str(r["generated"]), str(r["true"])] for r in sub["per_level"]]
        out += [*_table(["level", "generations", "true strings"], levels), ""]
    return out


def _interval(rate: dict) -> str:
    return f"{rate['accuracy']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}]"


def _robustness(res: RunResults, fig) -> list[str]:
    if not res.robustness:
        return []
    header = ["prompt", "gamma", "T", "n", "tokens changed", "still viable", "clean (A)",
              "no new errors (B)"]  # fmt: skip
    body = [
        [
            f"cut{r['cut']}",
            f"{r['gamma']:g}",
            f"{r['temperature']:g}",
            str(r["clean"]["n"]),
            _fmt(r["mean_tokens_changed"], 2),
            _fmt(r["prompt_still_viable"], 3),
            _interval(r["clean"]),
            _interval(r["no_new_errors"]),
        ]
        for r in res.robustness
    ]
    out = ["## Corrupted prompts", "", *_table(header, body), ""]
    return out + fig("robustness", "corrupted-prompt accuracy against temperature")


def report_markdown(
    res: RunResults, figs: dict[str, Path], rel_to: Path, extra: list[str] | None = None
) -> str:
    """The report as Markdown; figure links are relative to `rel_to` (the report folder);
    `extra` lines (the analysis sections) go before the definitions."""

    def fig(name: str, caption: str) -> list[str]:
        if name not in figs:
            return []
        return [f"![{caption}]({figs[name].relative_to(rel_to).as_posix()})", ""]

    out = _header(res) + [learned_line(res), ""] + _training(res, fig)
    if res.summary_rows:
        out += ["## Summary", "", *rows_markdown(res.summary_rows), ""]
    out += _accuracy(res, fig) + _distribution(res, fig) + _diversity(res)
    out += _robustness(res, fig) + (extra or [])
    defs = res.definitions
    if defs:
        out += ["## Definitions", "", *(f"- **{k}**: {text}" for k, text in defs.items()), ""]
    timing = res.eval.get("summary", {}).get("timing")
    if timing:
        s = timing["seconds"]
        out += [
            f"Evaluation time: model {s['model']:.1f} s, exact {s['exact']:.1f} s, "
            f"sampling {s['sample']:.1f} s.",
            "",
        ]
    return "\n".join(out)


def analysis_sections(
    analyze: dict[str, dict], fig_dir: Path, rel_to: Path
) -> tuple[list[str], dict[str, Path]]:
    """The sections of every analysis result (analyze/<name>.json, families and dynamics) in
    their stage's order: each file's tables and figures, drawn from the data it holds, with no
    knowledge of the family. Returns (Markdown lines, figure name -> path)."""
    from cfglab.report.figures import draw
    from cfglab.report.tables import table_markdown

    lines: list[str] = []
    figs: dict[str, Path] = {}
    for name, body in sorted(analyze.items(), key=lambda kv: (kv[1].get("order", 50), kv[0])):
        title = body.get("title") or name
        lines += [f"## {title}", ""]
        for table in body.get("tables", []):
            lines += table_markdown(table)
        for spec in body.get("figures", []):
            path = draw(spec, fig_dir / f"{spec['name']}.png")
            if path is None:
                continue
            figs[spec["name"]] = path
            caption = spec.get("caption") or spec["name"]
            lines += [
                f"![{caption}]({path.relative_to(rel_to).as_posix()})",
                "",
                f"*{caption}*",
                "",
            ]
    return lines, figs


def compare_section(
    run_dir: Path, others: Sequence[str | Path], fig_dir: Path
) -> tuple[list[str], dict[str, Path]]:
    """The report section "Compared runs": this run and `others` (e.g. the GPT and its masked-LM
    encoder twin) side by side: each analysis family's cross-run views (cfglab.report.views)
    over the runs' rows, one run per grid point. CfglabError naming a run that has no analysis
    results to compare. Returns (Markdown lines, figure name -> path)."""
    from cfglab.report.compare import RunEntry, aggregate, run_rows, run_views
    from cfglab.report.views import draw_views

    entries, rows, described = [], [], []
    dirs = [Path(run_dir), *(Path(o) for o in others)]
    short = len({d.name for d in dirs}) == len(dirs)  # folder names tell the runs apart
    for d in dirs:
        run = load_run(d)  # CfglabError if d is not a run directory
        if not run.analyze:
            raise CfglabError(
                f"{d} has no analyze/*.json to compare: run `cfglab run <its config>` "
                f"or `cfglab analyze {d}` first"
            )
        label = d.name if short else str(d)
        cfg, entry = run.config, RunEntry(d, "", {"run": label}, None)
        entries.append(entry)
        rows += [{"run": label, **r} for r in run_rows(entry) if r.get("step") is None]
        m, t = cfg.get("model", {}), cfg.get("train", {})
        tokens = [t.get("max_steps"), t.get("batch_size"), m.get("block_size")]
        described.append(
            [
                str(d),
                str(t.get("objective")),
                _size(cfg),
                str(m.get("position")),
                f"{math.prod(tokens):,}" if all(isinstance(x, int) for x in tokens) else "-",
            ]
        )
    out = ["## Compared runs", ""]
    out += _table(["run", "objective", "model", "position", "training tokens"], described)
    out += ["", "Each run's analysis results side by side (same settings as its own report).", ""]
    agg = aggregate(rows, ["run"])
    lines, figs = draw_views(run_views(entries), agg, ["run"], fig_dir, fig_dir.parent, "compare_")
    return out + lines, figs


def build_report(run_dir: str | Path, compare: Sequence[str | Path] = ()) -> Path:
    """Write RUN_DIR/report/{report.md, report.html, figures/*.png}; returns the report folder.
    `compare`: other run directories whose analysis results are put beside this run's."""
    with rundir.result_shape(run_dir):
        return _build_report(run_dir, compare)


def _build_report(run_dir: str | Path, compare: Sequence[str | Path]) -> Path:
    # every input read (and checked) before the first figure is written
    res = load_run(run_dir)
    for other in compare:  # checked before anything is written
        load_run(other)
    out = Path(run_dir) / "report"
    figs = make_figures(res, out / "figures")
    extra, analysis_figs = analysis_sections(res.analyze, out / "figures", out)
    figs.update(analysis_figs)
    if compare:
        lines, compare_figs = compare_section(Path(run_dir), compare, out / "figures")
        extra += lines
        figs.update(compare_figs)
    md = report_markdown(res, figs, out, extra=extra)
    rundir.write_text_atomic(out / "report.md", md + "\n")
    rundir.write_text_atomic(out / "report.html", md_to_html(md, figs, out))
    return out
