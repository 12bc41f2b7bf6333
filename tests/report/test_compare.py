"""`cfglab report RUN --compare OTHER`: the GPT and its masked-LM encoder twin side by side, with
every number read back from each run's own analyze/probe.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfglab import cli, rundir
from cfglab.errors import CfglabError
from cfglab.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def probe_run_dir(tmp_path, name: str, objective: str, seed: int):
    """A run directory with config.json, metrics.jsonl and an analyze/probe.json of random
    accuracies (2 layers x 3 levels) in the format analyze.probe writes."""
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
                "levels": [1, 2, 3],
                "majority": rng.uniform(0.3, 0.6, 3).tolist(),
                "accuracy": {
                    "model": rng.uniform(0.6, 1.0, (2, 3)).tolist(),
                    "random_init": rng.uniform(0.4, 0.7, (2, 3)).tolist(),
                },
            }
        )
    probe = {
        "run": name,
        "objective": objective,
        "n_train": 30,
        "n_test": 10,
        "n_test_tokens": 120,
        "tables": tables,
    }
    rundir.write_result(run, "analyze/probe", probe)
    return run


def last_layer_cells(run) -> dict[str, list[str]]:
    """target -> the report's expected last-layer cells (model then random-init), from the file."""
    probe = json.loads((run / "analyze" / "probe.json").read_text())
    return {
        t["target"]: [
            " | ".join(f"{100 * v:.1f}" for v in t["accuracy"][kind][-1])
            for kind in ("model", "random_init")
        ]
        for t in probe["tables"]
    }


def test_compared_report_has_both_runs_numbers_and_figures(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    enc = probe_run_dir(tmp_path, "enc", "mlm", seed=1)
    assert cli.main(["report", str(gpt), "--compare", str(enc)]) == 0
    rep = gpt / "report"
    md = (rep / "report.md").read_text()
    section = md[md.index("## Compared runs") :]
    for run, label in ((gpt, "gpt (next_token)"), (enc, "enc (mlm)")):
        for target, (model, rand) in last_layer_cells(run).items():
            table = section[section.index(f"**{target} probe, last layer**") :]
            table = table[: table.index("![")]
            assert f"| {label} | {model} |" in table
            assert f"| {label} random-init | {rand} |" in table
    majority = json.loads((gpt / "analyze" / "probe.json").read_text())["tables"][0]["majority"]
    assert "| majority class | " + " | ".join(f"{100 * v:.1f}" for v in majority) + " |" in section
    # same size and token budget, stated per run: 100 steps x 16 windows x 128 tokens
    assert section.count("| 2L/2H/64D | rot | 204,800 |") == 2
    for name in ("probe_compare.png", "probe_compare_boundary.png"):
        fig = rep / "figures" / name
        assert fig.read_bytes()[:8] == PNG and fig.stat().st_size > 5000
        assert f"(figures/{name})" in md
    # the HTML is self-contained: both comparison figures embedded (+ loss, 2 probe heatmaps)
    assert (rep / "report.html").read_text().count("data:image/png;base64,") == 5


def test_report_without_compare_has_no_comparison(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    md = (build_report(gpt) / "report.md").read_text()
    assert "## Inside the model" in md and "## Compared runs" not in md


def test_compare_needs_probe_results(tmp_path):
    gpt = probe_run_dir(tmp_path, "gpt", "next_token", seed=0)
    enc = probe_run_dir(tmp_path, "enc", "mlm", seed=1)
    (enc / "analyze" / "probe.json").unlink()
    with pytest.raises(CfglabError, match=r"enc has no analyze/probe.json.*cfglab probe"):
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
