"""The probe, attention and report stages of a run (cfglab.analyze, cfglab.report)."""

from __future__ import annotations

import time
from pathlib import Path

from cfglab import rundir
from cfglab.config import ExperimentConfig
from cfglab.seeds import stream_seed
from cfglab.stages.common import load_run_model, need_levels, random_init_twin, run_header, say


def run_probe(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """NT-ancestor and boundary probes at every layer and level (and on a random-init twin)
    per cfg.probe -> analyze/probe.json; prints the tables."""
    import dataclasses

    from cfglab.analyze.probe_tree import probe_model, probe_tables
    from cfglab.data.sampler import sample
    from cfglab.report.plots_analyze import probe_markdown

    p = cfg.probe
    model, grammar = load_run_model(run_dir, cfg, p)
    need_levels(grammar, "probing needs")
    t0 = time.perf_counter()
    max_len = model.config.block_size - 2
    train = sample(grammar, p.n_train, stream_seed(p.seed, "probe_train"), max_len=max_len)
    test = sample(grammar, p.n_test, stream_seed(p.seed, "probe_test"), max_len=max_len)
    models = {"model": model}
    if p.baseline:
        models["random_init"] = random_init_twin(model, cfg)
    results = {}
    for label, m in models.items():
        say(f"probing {label}")
        results[label] = probe_model(
            m, grammar, train, test, settings=p, windows=p.windows, seed=p.seed, log=say
        )
    tables = []
    for window in p.windows:
        base = results["random_init"][window] if p.baseline else None
        tables += probe_tables(results["model"][window], base, window)
    out = {
        **run_header(run_dir, cfg, model),
        "settings": dataclasses.asdict(p),
        "n_train": p.n_train,
        "n_test": p.n_test,
        "n_test_tokens": int(test.offsets[-1]),
        "layers": results["model"][p.windows[0]]["layers"],
        "tables": tables,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = rundir.write_result(run_dir, f"{rundir.ANALYZE}/probe", out)
    print("\n".join(probe_markdown(out)))
    print(f"wrote {path}")
    _figures(run_dir, {"probe": out})
    return path


def run_attention(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Attention-pattern statistics (and a random-init twin's) per cfg.attention ->
    analyze/attention.json; prints the head table."""
    import dataclasses

    from cfglab.analyze.attention import attention_model
    from cfglab.data.sampler import sample
    from cfglab.report.plots_analyze import attention_markdown

    a = cfg.attention
    model, grammar = load_run_model(run_dir, cfg, a)
    need_levels(grammar, "attention statistics need")
    t0 = time.perf_counter()
    batch = sample(
        grammar,
        a.n_strings,
        stream_seed(a.seed, "attention_strings"),
        max_len=model.config.block_size - 2,
    )
    models = {"model": model}
    if a.baseline:
        models["random_init"] = random_init_twin(model, cfg)
    out = {**run_header(run_dir, cfg, model), "settings": dataclasses.asdict(a)}
    out["n_strings"] = a.n_strings
    for label, m in models.items():
        say(f"attention statistics of {label} on {a.n_strings} strings")
        out[label] = attention_model(
            m, grammar, batch, n_examples=a.n_examples, example_len=a.example_len
        )
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = rundir.write_result(run_dir, f"{rundir.ANALYZE}/attention", out)
    print("\n".join(attention_markdown(out)))
    print(f"wrote {path}")
    _figures(run_dir, {"attention": out})
    return path


def _figures(run_dir: Path, analyze: dict) -> None:
    """The figures of a fresh analyze result, into report/figures (the report links them)."""
    from cfglab.report.plots_analyze import write_analyze_figures

    figs = write_analyze_figures(analyze, Path(run_dir) / rundir.REPORT / "figures")
    if figs:
        print(f"figures: {', '.join(str(f) for f in figs.values())}")


def run_report(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """report/report.md, report.html and figures from the run's result files (no model)."""
    from cfglab.report import build_report

    out = build_report(run_dir, compare=cfg.report.compare)
    print(f"wrote {out / 'report.md'}, {out / 'report.html'} and {out / 'figures'}/")
    return out
