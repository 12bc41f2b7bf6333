"""`cfglab analyze` / `cfglab probe` / `cfglab attention` on a tiny trained run: files, tables,
the figures the report draws from them, the run-to-run comparison, errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cfglab import cli, rundir
from cfglab.config import load_config
from cfglab.report import build_report
from cfglab.report.figures import draw
from cfglab.stages import STAGES

QUICK_GRAMMAR = str(Path(__file__).resolve().parents[2] / "configs" / "grammars" / "quickstart.cfg")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from cfglab.train.loop import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        None,
        [
            f"grammar.name={QUICK_GRAMMAR}",
            "model.preset=tiny",
            "model.block_size=48",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.threads=1",
            "train.tensorboard=false",
            "data.prefetch=0",
            "train.eval_every=0",
            f"out_dir={out}",
            "name=tiny",
            "probe.n_train=24",
            "eval.cuts=[0, 5]",
            "probe.n_test=8",
        ],
    )
    return train(cfg, progress=False)


def test_probe_command_writes_tables_rows_and_figure_specs(tiny_run, capsys, tmp_path):
    argv = ["probe", str(tiny_run), "--n-train", "24", "--n-test", "12", "--steps", "3"]
    assert cli.main([*argv, "--window", "all", "diagonal", "--threads", "1"]) == 0
    body = json.loads((tiny_run / "analyze" / "probe.json").read_text())
    probe = body["probe"]
    assert probe["layers"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    kinds = {(t["target"], t["window"], t["where"]) for t in probe["tables"]}
    # the boundary probe at NT ends would be trivial, so the diagonal window has none
    assert kinds == {
        ("ancestor", "all", "all"),
        ("boundary", "all", "all"),
        ("ancestor", "diagonal", "ends"),
    }
    for t in probe["tables"]:
        assert t["columns"] == [{"level": 1}, {"level": 2}]  # quickstart.cfg: two NT levels
        for key in ("model", "random_init"):
            acc = np.array(t["accuracy"][key])
            assert acc.shape == (2, 2) and ((acc >= 0) & (acc <= 1)).all()
        assert all(0 < m <= 1 for m in t["majority"])
    # the tidy rows are the tables' numbers, one per (target, window, level, layer, model)
    rows = [r for r in body["rows"] if r["metric"] == "probe_accuracy"]
    assert len(rows) == 3 * 2 * 2 * 2
    for r in rows:
        t = next(
            t for t in probe["tables"] if (t["target"], t["window"]) == (r["target"], r["window"])
        )
        key = "model" if r["weights"] == "trained" else r["weights"]
        assert r["value"] == t["accuracy"][key][r["layer"]][r["level"] - 1]
    out = capsys.readouterr().out
    # the printed tables are the file's numbers: every layer row, model / random-init, majority
    for t in probe["tables"]:
        for i, (row, rand) in enumerate(
            zip(t["accuracy"]["model"], t["accuracy"]["random_init"], strict=True)
        ):
            cells = " | ".join(
                f"{100 * v:.1f} / {100 * r:.1f}" for v, r in zip(row, rand, strict=True)
            )
            assert f"| {i} | {cells} |" in out
        assert "| majority | " + " | ".join(f"{100 * v:.1f}" for v in t["majority"]) in out
    assert not (tiny_run / "report").exists()  # the stage writes into analyze/ only
    for spec in body["figures"]:
        path = draw(spec, tmp_path / f"{spec['name']}.png")
        image = plt.imread(path)  # (H, W, 4)
        assert image.shape[1] > image.shape[0] > 100  # panels side by side
        assert image[..., :3].std() > 0.05  # drawn, not blank


def test_attention_command_and_the_report_draws_its_figures(tiny_run):
    assert cli.main(["attention", str(tiny_run), "--n-strings", "6", "--threads", "1"]) == 0
    body = json.loads((tiny_run / "analyze" / "attention.json").read_text())
    att = body["attention"]
    for key in ("model", "random_init"):
        res = att[key]
        scores = np.array(res["head_scores"]["boundary_l2"])
        assert scores.shape == (2, 4)  # tiny preset: 2 layers x 4 heads
        assert ((scores >= 0) & (scores <= 1 + 1e-9)).all()
        mean = np.array(res["mean_by_distance"], dtype=float)
        assert res["distances"][0] == 0  # causal: keys at or before the query
        assert mean.shape[:2] == (2, 4) and (np.nan_to_num(mean) >= 0).all()
    best = {
        (r["pattern"], r["weights"]): r["value"]
        for r in body["rows"]
        if r["metric"] == "best_head_score"
    }
    assert best[("boundary_l2", "trained")] == pytest.approx(
        np.nanmax(np.array(att["model"]["head_scores"]["boundary_l2"], dtype=float))
    )
    report = build_report(tiny_run)
    names = {p.stem for p in (report / "figures").iterdir()}
    assert {"attention_distance", "attention_boundary", "attention_examples"} <= names
    md = (report / "report.md").read_text()
    assert "## Attention" in md and "| boundary_l1 |" in md
    assert "![example attention maps with NT ends](figures/attention_examples.png)" in md


def test_report_compare_puts_runs_side_by_side(tiny_run, tmp_path):
    if not (tiny_run / "analyze" / "probe.json").exists():
        cli.main(["probe", str(tiny_run), "--n-train", "8", "--n-test", "4", "--steps", "1"])
    build_report(tiny_run, compare=[tiny_run])
    md = (tiny_run / "report" / "report.md").read_text()
    assert "## Compared runs" in md and "figures/compare_probe.png" in md
    assert (tiny_run / "report" / "figures" / "compare_probe.png").stat().st_size > 1000


def test_cfglab_run_analyzes_before_the_report():
    names = list(STAGES)
    assert names.index("eval") < names.index("analyze") < names.index("report")
    assert names.index("dynamics") < names.index("report")
    opt_in = ("dynamics", "intervene")
    assert load_config(None).stages == [n for n in names if n not in opt_in]


def test_old_stage_names_are_one_clear_error():
    from cfglab.errors import ConfigError

    for old in ("probe", "attention"):
        with pytest.raises(ConfigError, match=f"stages: '{old}' is now part of analyze"):
            load_config(None, [f"stages=[train, {old}]"])


@pytest.mark.slow
def test_analyze_stage_reads_its_config_section(tiny_run):
    cfg = rundir.read_run_config(tiny_run)
    cfg.probe.n_test, cfg.probe.n_train, cfg.probe.steps = 4, 12, 2
    (tiny_run / "analyze" / "probe.json").unlink(missing_ok=True)
    STAGES["analyze"](cfg, tiny_run)
    probe = rundir.read_result(tiny_run, "analyze/probe")["probe"]
    assert probe["n_test"] == 4 and probe["n_train"] == 12


@pytest.mark.parametrize(
    "argv, message",
    [
        (["probe", "{missing}"], "no run directory"),
        (["attention", "{missing}"], "no run directory"),
        (["analyze", "{missing}"], "no run directory"),
        (["probe", "{run}", "--window", "wide"], "probe.windows: unknown value 'wide'"),
        (["probe", "{run}", "--target", "ancestors"], "probe.targets: unknown target"),
        (["probe", "{run}", "--target", "depth", "ancestor", "depth"], "lists a value twice"),
        (
            ["probe", "{run}", "--n-test", "1"],
            "probe.n_test must be >= 2, got 1 (given as --n-test)",
        ),
        (["attention", "{run}", "--n-strings", "0"], "(given as --n-strings)"),
        (["probe", "{run}", "--steps", "many"], "probe.steps: expected int, got str"),
        (["probe", "{run}", "--set", "train.lr=0.1"], "takes only analyze.*, probe.* settings"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_run, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=tiny_run) for a in argv]
    before = (
        sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) if tiny_run.exists() else []
    )
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and message in err
    assert "Traceback" not in err
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before
