"""`cfglab report RUN --compare OTHER`: the GPT and its masked-LM encoder twin side by side, with
every number read back from each run's own analyze/probe.json through the family's views."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfglab import cli, rundir
from cfglab.errors import CfglabError
from cfglab.report import build_report
from cfglab.report.tables import fmt_interval

PNG = b"\x89PNG\r\n\x1a\n"


def probe_run_dir(tmp_path, name: str, objective: str, seed: int):
    """A run directory with config.json, metrics.jsonl and an analyze/probe.json of random
    accuracies (2 layers x 3 levels) written as the analyze stage writes the probe family."""
    from cfglab.analyze import probe_tree
    from cfglab.analyze.run import write_analyses

    run = tmp_path / name
    (run / "analyze").mkdir(parents=True)
    model = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128, "position": "rot"}
    train = {"objective": objective, "max_steps": 100, "batch_size": 16}
    (run / "config.json").write_text(json.dumps({"name": name, "model": model, "train": train}))
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 11))
    )
    rng = np.random.default_rng(seed)
    tables = []
    for target in ("ancestor", "boundary"):
        tables.append(
            {
                "target": target,
                "window": "all",
                "where": "all",
                "columns": [{"level": 1}, {"level": 2}, {"level": 3}],
                "majority": rng.uniform(0.3, 0.6, 3).tolist(),
                "accuracy": {
                    "model": rng.uniform(0.6, 1.0, (2, 3)).tolist(),
                    "random_init": rng.uniform(0.4, 0.7, (2, 3)).tolist(),
                },
            }
        )
    layers = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    result = {"n_train": 30, "n_test": 10, "n_test_tokens": 120, "layers": layers,
              "tables": tables}  # fmt: skip
    part = {
        "title": probe_tree.TITLE,
        "result": result,
        "rows": probe_tree.summary_rows(result),
        "tables": probe_tree.tables(result),
        "figures": probe_tree.figures(result),
        "compare": probe_tree.COMPARE,
        "definitions": probe_tree.DEFINITIONS,
        "seconds": 0.0,
    }
    write_analyses(run, {"probe": part}, {"run": name, "objective": objective})
    return run


def test_compared_report_has_both_runs_numbers_and_figures(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    enc = probe_run_dir(tmp_path, "enc", "mlm", seed=1)
    assert cli.main(["report", str(gpt), "--compare", str(enc)]) == 0
    rep = gpt / "report"
    md = (rep / "report.md").read_text()
    section = md[md.index("## Compared runs") :]
    assert "| run | target | window | weights | level=1 | level=2 | level=3 |" in section
    for run in (gpt, enc):
        tables = rundir.read_result(run, "analyze/probe")["probe"]["tables"]
        # the last layer's accuracy of each run, trained and twin, every target and level
        for t in tables:
            for kind, label in (("model", "trained"), ("random_init", "random_init")):
                cells = " | ".join(fmt_interval(v) for v in t["accuracy"][kind][-1])
                assert f"| {run.name} | {t['target']} | all | {label} | {cells} |" in section
    # same size and token budget, stated per run: 100 steps x 16 windows x 128 tokens
    assert section.count("| 2L/2H/64D | rot | 204,800 |") == 2
    fig = rep / "figures" / "compare_probe.png"
    assert fig.read_bytes()[:8] == PNG and fig.stat().st_size > 5000
    assert "(figures/compare_probe.png)" in md
    # the HTML is self-contained: loss, 2 probe heatmaps and the comparison, all embedded
    assert (rep / "report.html").read_text().count("data:image/png;base64,") == 4


def test_report_without_compare_has_no_comparison(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    md = (build_report(gpt) / "report.md").read_text()
    assert "## Probes" in md and "## Compared runs" not in md


def test_compare_needs_analysis_results(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    enc = probe_run_dir(tmp_path, "enc", "mlm", seed=1)
    (enc / "analyze" / "probe.json").unlink()
    with pytest.raises(CfglabError, match=r"enc has no analyze/\*.json.*cfglab analyze"):
        build_report(gpt, compare=[enc])
    with pytest.raises(CfglabError, match="no run directory"):
        build_report(gpt, compare=[tmp_path / "missing"])


def test_accuracy_figure_with_zero_correct(tmp_path):
    """0 of 10 correct: the Wilson lower bound comes out as 2.8e-17 > accuracy 0 (seen in a real
    100-step run); the figure is still drawn instead of matplotlib refusing a negative error."""
    from cfglab.evaluate.accuracy import accuracy_from_judgements
    from cfglab.report.plots import plot_accuracy

    row = accuracy_from_judgements(np.zeros(10, bool), cut=0).to_dict()
    row["ci_low"] = 2.7755575615628914e-17  # the value the real run wrote
    path = plot_accuracy([row], tmp_path / "acc.png")
    assert path.read_bytes()[:8] == PNG
