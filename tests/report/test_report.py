"""The report is built from result files alone, with its figures, definitions and numbers, and
without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import cfglab.evaluate.accuracy as A
import cfglab.evaluate.adapters as AD
import cfglab.evaluate.distribution as D
import cfglab.evaluate.diversity as V
import cfglab.evaluate.loss_floor as F
import cfglab.evaluate.run as R
from cfglab.errors import CfglabError
from cfglab.evaluate.families import FAMILIES
from cfglab.report import build_report, load_run

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(tmp_path):
    """A run directory with metrics.jsonl and eval/*.json written by the eval stage's writer."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "name": "demo",
                "grammar": {"name": "cfg3b"},
                "model": {
                    "n_layer": 2,
                    "n_head": 2,
                    "n_embd": 64,
                    "block_size": 512,
                    "position": "rot",
                },
                "train": {"objective": "next_token", "max_steps": 30, "batch_size": 8},
            }
        )
    )
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 31):
            row = {"step": step, "loss": 2.0 / step + 0.4, "lr": 3e-4}
            if step % 10 == 0:
                row["val_loss"] = 2.0 / step + 0.45
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 31, "lo')  # a torn last line is skipped
    rng = np.random.default_rng(0)
    correct = rng.random(200) < 0.9
    first = np.where(correct, -1, rng.integers(0, 300, 200))
    acc = [A.accuracy_from_judgements(correct, cut=c, first_error=first).to_dict() for c in (0, 50)]
    strings = [np.array([1, 2]), np.array([2])]
    p_true = [np.full((3, 3), 1 / 3), np.full((2, 3), 1 / 3)]
    logq = AD.uniform_logprob_fn(6)([np.concatenate([[0], s]) for s in strings])
    dist = D.distribution_metrics(strings, p_true, logq, 2, buckets=(0, 1, 2)).to_dict()
    div = V.diversity(strings, model_logq=np.log([0.5, 0.25]), true_logp=np.log([0.4, 0.3]))
    floor = F.packed_loss_floor(np.array([2, 1, 3]), np.log([0.2, 0.5, 0.1]))
    results = {"accuracy": acc, "distribution": dist, "loss_floor": floor, "diversity": div}
    rows = [
        {"family": name, **row}
        for name, result in results.items()
        for row in FAMILIES[name].summary_rows(result)
    ]
    out = {
        "results": results,
        "rows": rows,
        "timing": {"seconds": {"model": 1.0, "exact": 2.0, "sample": 0.1}},
        "settings": {"n_samples": 200},
    }
    R.write_eval(run, out)
    return run, out


def test_report_has_figures_numbers_and_definitions(tmp_path):
    run, out = fake_run(tmp_path)
    res = load_run(run)
    assert len(res.metrics) == 30 and res.series("val_loss")[0] == [10, 20, 30]
    rep = build_report(run)
    figs = sorted(p.name for p in (rep / "figures").iterdir())
    assert figs == ["accuracy.png", "first_error.png", "kl_by_position.png", "loss.png"]
    for p in (rep / "figures").iterdir():
        assert p.read_bytes()[:8] == PNG
    md = (rep / "report.md").read_text()
    a0 = out["results"]["accuracy"][0]
    assert f"{a0['ci_low']:.4f}, {a0['ci_high']:.4f}" in md
    assert f"{out['results']['distribution']['kl']:.5f}" in md
    floor = out["results"]["loss_floor"]
    assert f"A perfect model's loss on the packed training windows is {floor['value']:.4f}" in md
    for name in out["results"]:
        for key, text in FAMILIES[name].DEFINITIONS.items():
            assert f"**{key}**: {text}" in md
    # the summary table: one row per summary row of every family, whatever the family
    a1 = out["results"]["accuracy"][1]
    assert "## Summary" in md and f"| accuracy cut=50 temperature=1 | {a1['accuracy']:.5f} |" in md
    assert md.count("| loss_floor |") == 1
    # the verdict line, by its fixed rule on cut0 accuracy's interval against 90%
    word = "yes" if a0["ci_low"] >= 0.9 else "no" if a0["ci_high"] < 0.9 else "undecided"
    assert f"**Learned the grammar: {word}.** cut0 generation accuracy " in md.splitlines()[4]
    assert f"{100 * a0['accuracy']:.1f}% [{100 * a0['ci_low']:.1f}, " in md
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="figures' not in page
    assert "<table>" in page
    assert "unsmoothed P* as weights" in page and "<i>" not in page  # '*' is math, not italics


def test_report_without_eval_has_only_the_loss_curve(tmp_path):
    run, _ = fake_run(tmp_path)
    for p in (run / "eval").iterdir():
        p.unlink()
    rep = build_report(run)
    assert [p.name for p in (rep / "figures").iterdir()] == ["loss.png"]


def test_report_errors_are_clear(tmp_path):
    with pytest.raises(CfglabError, match="no run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(CfglabError, match="no metrics.jsonl, eval"):
        load_run(tmp_path)
    run, _ = fake_run(tmp_path)
    (run / "eval" / "accuracy.json").write_text("{broken")
    with pytest.raises(CfglabError, match="not valid JSON.*re-run cfglab eval"):
        load_run(run)
    (run / "eval" / "accuracy.json").write_text('{"accuracy": []}')  # no schema header
    with pytest.raises(CfglabError, match="written by another cfglab version"):
        load_run(run)


def test_report_never_imports_torch(tmp_path):
    run, _ = fake_run(tmp_path)
    code = (
        "import sys; from cfglab.report import build_report; "
        f"build_report({str(run)!r}); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
