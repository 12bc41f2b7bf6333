"""Assemble a run's report from its result files alone (no torch): Markdown + self-contained HTML.

`build_report(run_dir)` writes `report/report.md`, `report/report.html` (figures embedded as
base64, one file to share) and `report/figures/*.png`: the loss curve (metrics.jsonl), accuracy
with its confidence interval, KL per position, first-error positions (eval/*.json). Every metric
is printed with its definition, read from the result files (evaluate.metrics.DEFINITIONS).
`build_report(run_dir, compare=[other, ...])` adds a "Compared runs" section: probe results
side by side (e.g. the GPT and its masked-LM encoder twin, `cfglab report A --compare B`).
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path

from cfglab import rundir
from cfglab.errors import CfglabError
from cfglab.report import plots, plots_analyze, plots_dynamics
from cfglab.report.results import RunResults, load_run
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


def report_markdown(
    res: RunResults, figs: dict[str, Path], rel_to: Path, extra: list[str] | None = None
) -> str:
    """The report as Markdown; figure links are relative to `rel_to` (the report folder);
    `extra` lines (the analyze section) go before the definitions."""
    cfg = res.config
    out = [f"# cfglab report: {res.name}", ""]
    if cfg:
        m, t = cfg.get("model", {}), cfg.get("train", {})
        size = m.get("preset") or f"{m.get('n_layer')}L/{m.get('n_head')}H/{m.get('n_embd')}D"
        out += [
            f"grammar **{cfg.get('grammar', {}).get('name')}**, model {size}, position "
            f"**{m.get('position')}**, objective {t.get('objective')}, "
            f"{t.get('max_steps')} steps x batch {t.get('batch_size')} x "
            f"{m.get('block_size')} tokens",
            "",
        ]

    def fig(name: str, caption: str) -> None:
        if name in figs:
            out.extend([f"![{caption}]({figs[name].relative_to(rel_to).as_posix()})", ""])

    out += ["## Training", ""]
    steps, loss = res.series("loss")
    if steps:
        vs, vl = res.series("val_loss")
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
        fig("loss", "training loss")
    else:
        out += ["(no metrics.jsonl)", ""]

    defs = res.definitions
    if res.summary_rows:
        out += ["## Summary", "", *rows_markdown(res.summary_rows), ""]
    if res.accuracy:
        out += ["## Generation accuracy", ""]
        out += _table(
            [
                "prompt",
                "T",
                "n",
                "correct",
                "accuracy",
                "95% CI (Wilson)",
                "95% CI (Clopper-Pearson)",
                "unfinished",
                "bad token",
            ],
            [
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
            ],
        )
        out.append("")
        fig("accuracy", "generation accuracy with 95% CI")
        fig("unprompted_errors", "unprompted (cut0) error rate against temperature")
        fig("first_error", "first error positions")
    d = res.distribution
    if d:
        out += ["## Distance to the true distribution", ""]
        out += _table(
            ["metric", "value"],
            [
                [
                    "next-token KL (mean over strings)",
                    f"{_fmt(d['kl'])} ± {_fmt(d['kl_stderr'])} (s.e.)",
                ],
                ["sequence KL(P‖Q), nats/token", _fmt(d["seq_kl"])],
                ["model cross-entropy, nats/token", _fmt(d["cross_entropy"])],
                ["true entropy rate, nats/token", _fmt(d["entropy_rate"])],
                ["true entropy rate (row entropies)", _fmt(d["entropy_rate_rb"])],
                ["strings / rows", f"{d['n_strings']} / {d['n_rows']}"],
            ],
        )
        out.append("")
        out += _table(
            ["prefix length", "KL", "rows"],
            [
                [
                    f"{b['lo']}..{'' if b['hi'] is None else b['hi'] - 1}",
                    _fmt(b["kl"]),
                    str(b["n_rows"]),
                ]
                for b in d["kl_by_position"]
            ],
        )
        out.append("")
        fig("kl_by_position", "next-token KL by position")
    v = res.diversity
    if v:
        g = v["generations"]
        rows = [
            ["distinct cut0 generations", f"{g['distinct']} of {g['n']}"],
            ["equal pairs", str(g["equal_pairs"])],
            [
                "birthday support estimate",
                _fmt(g["collision_support"], 1)
                if g["collision_support"]
                else f">= {_fmt(g['collision_support_lower'], 1)}",
            ],
        ]
        if "fixed_prompt" in v:
            f = v["fixed_prompt"]
            rows.append(["distinct completions of one prompt", f"{f['distinct']} of {f['n']}"])
        for key, label in (
            ("model_entropy_per_token", "model entropy, nats/token"),
            ("entropy_support_log10", "entropy-based support, log10 strings"),
            ("reverse_kl", "reverse KL E_Q[log Q - log P], nats/token"),
            ("reverse_kl_share_used", "share of generations in the language"),
            ("seen_in_training", "share seen in training"),
        ):
            if v.get(key) is not None:
                rows.append([label, _fmt(v[key])])
        if d.get("n_strings"):  # the truth's entropy per string, for comparison
            h_true = d["entropy_rate"] * d["n_rows"] / d["n_strings"]
            rows.append(["true entropy-based support, log10 strings", _fmt(h_true / math.log(10))])
        out += ["## Diversity", "", f"cut0 generations at T={v.get('temperature', 1):g}.", ""]
        out += _table(["metric", "value"], rows)
        out.append("")
        sub = v.get("subtree") or {}
        if sub.get("per_level"):
            out += [
                f"Distinct subtree yields per level: {sub['n_generated']} grammatical "
                f"generations vs {sub['n_true']} true strings.",
                "",
            ]
            out += _table(
                ["level", "generations", "true strings"],
                [[str(r["level"]), str(r["generated"]), str(r["true"])] for r in sub["per_level"]],
            )
            out.append("")
    if res.robustness:
        out += ["## Corrupted prompts", ""]
        out += _table(
            [
                "prompt",
                "gamma",
                "T",
                "n",
                "tokens changed",
                "still viable",
                "clean (A)",
                "no new errors (B)",
            ],
            [
                [
                    f"cut{r['cut']}",
                    f"{r['gamma']:g}",
                    f"{r['temperature']:g}",
                    str(r["clean"]["n"]),
                    _fmt(r["mean_tokens_changed"], 2),
                    _fmt(r["prompt_still_viable"], 3),
                    f"{r['clean']['accuracy']:.3f} [{r['clean']['ci_low']:.3f}, "
                    f"{r['clean']['ci_high']:.3f}]",
                    f"{r['no_new_errors']['accuracy']:.3f} [{r['no_new_errors']['ci_low']:.3f}, "
                    f"{r['no_new_errors']['ci_high']:.3f}]",
                ]
                for r in res.robustness
            ],
        )
        out.append("")
        fig("robustness", "corrupted-prompt accuracy against temperature")
    out += extra or []
    if defs:
        out += ["## Definitions", ""]
        out += [f"- **{k}**: {text}" for k, text in defs.items()]
        out.append("")
    timing = res.eval.get("summary", {}).get("timing")
    if timing:
        s = timing["seconds"]
        out += [
            f"Evaluation time: model {s['model']:.1f} s, exact {s['exact']:.1f} s, "
            f"sampling {s['sample']:.1f} s.",
            "",
        ]
    return "\n".join(out)


def _md_to_html(md: str, figs: dict[str, Path], rel_to: Path) -> str:
    """A minimal Markdown -> HTML for our own report (headings, tables, images, lists, bold)."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0

    def inline(s: str) -> str:
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s))
        # a whole line in single asterisks is a caption; elsewhere '*' is math (P*)
        return re.sub(r"^\*([^*]+)\*$", r"<i>\1</i>", s)

    paths = {p.relative_to(rel_to).as_posix(): p for p in figs.values()}
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = re.match(r"!\[(.*)\]\((.*)\)", line).groups()
            data = base64.b64encode(paths[src].read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head, rest = rows[0], rows[2:]
            body.append(
                "<table><tr>"
                + "".join(f"<th>{inline(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rest
                )
                + "</table>"
            )
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
        i += 1
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cfglab report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def compare_section(run_dir: Path, others: Sequence[str | Path], fig_dir: Path) -> list[str]:
    """The report section "Compared runs": this run and `others` (e.g. the GPT and its masked-LM
    encoder twin) side by side, read from each run's analyze/probe.json and config.json; the
    figures go to fig_dir. CfglabError naming the run if one has no probe results."""
    runs = [Path(run_dir), *(Path(o) for o in others)]
    rows = []
    for d in runs:
        run = load_run(d)  # CfglabError if d is not a run directory
        cfg = run.config
        if "probe" not in run.analyze:
            raise CfglabError(
                f"{d} has no analyze/probe.json to compare: run `cfglab run <its config>` "
                f"or `cfglab probe {d}` first"
            )
        m, t = cfg.get("model", {}), cfg.get("train", {})
        size = m.get("preset") or f"{m.get('n_layer')}L/{m.get('n_head')}H/{m.get('n_embd')}D"
        tokens = [t.get("max_steps"), t.get("batch_size"), m.get("block_size")]
        rows.append(
            [
                str(d),
                str(t.get("objective")),
                size,
                str(m.get("position")),
                f"{math.prod(tokens):,}" if all(isinstance(x, int) for x in tokens) else "-",
            ]
        )
    out = ["## Compared runs", ""]
    out += _table(["run", "objective", "model", "position", "training tokens"], rows)
    out += [
        "",
        "Last-layer probe accuracy per level of each run (same probe settings as its own "
        "report); a masked-LM encoder is probed exactly as the GPT.",
        "",
    ]
    return out + plots_analyze.compare_runs(runs, fig_dir, rel_to=fig_dir.parent)


def build_report(run_dir: str | Path, compare: Sequence[str | Path] = ()) -> Path:
    """Write RUN_DIR/report/{report.md, report.html, figures/*.png}; returns the report folder.
    `compare`: other run directories whose probe results are put beside this run's."""
    with rundir.result_shape(run_dir):
        return _build_report(run_dir, compare)


def _build_report(run_dir: str | Path, compare: Sequence[str | Path]) -> Path:
    # every input read (and checked) before the first figure is written
    res = load_run(run_dir)
    dynamics = rundir.read_metrics(run_dir, rundir.DYNAMICS)
    out = Path(run_dir) / "report"
    figs = make_figures(res, out / "figures")
    figs.update(plots_analyze.write_analyze_figures(res.analyze, out / "figures"))
    extra = plots_analyze.analyze_markdown(res.analyze, figs, out)
    dyn_figs = plots_dynamics.write_dynamics_figures(
        dynamics, res.analyze.get("dynamics"), out / "figures"
    )
    figs.update(dyn_figs)
    extra += plots_dynamics.dynamics_markdown(dynamics, res.analyze.get("dynamics"), dyn_figs, out)
    if compare:
        extra += compare_section(Path(run_dir), compare, out / "figures")
        for name in ("probe_compare", "probe_compare_boundary"):
            if (out / "figures" / f"{name}.png").is_file():
                figs[name] = out / "figures" / f"{name}.png"
    md = report_markdown(res, figs, out, extra=extra)
    rundir.write_text_atomic(out / "report.md", md + "\n")
    rundir.write_text_atomic(out / "report.html", _md_to_html(md, figs, out))
    return out
