"""`cfglab probe` / `cfglab attention` on a tiny trained run: files, tables, figures, errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from cfglab import cli, rundir
from cfglab.config import load_config, read_config
from cfglab.report.plots_analyze import analyze_markdown, compare_runs, write_analyze_figures
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


def test_probe_command_writes_tables_and_figures(tiny_run, capsys):
    rc = cli.main(
        [
            "probe",
            str(tiny_run),
            "--n-train",
            "24",
            "--n-test",
            "12",
            "--steps",
            "3",
            "--window",
            "all",
            "diagonal",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    probe = json.loads((tiny_run / "analyze" / "probe.json").read_text())
    assert probe["layers"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    kinds = {(t["target"], t["window"], t["where"]) for t in probe["tables"]}
    # the boundary probe at NT ends would be trivial, so the diagonal window has none
    assert kinds == {
        ("ancestor", "all", "all"),
        ("boundary", "all", "all"),
        ("ancestor", "diagonal", "ends"),
    }
    for t in probe["tables"]:
        assert t["levels"] == [1, 2]  # quickstart.cfg: root + two NT levels
        for key in ("model", "random_init"):
            acc = np.array(t["accuracy"][key])
            assert acc.shape == (2, 2) and ((acc >= 0) & (acc <= 1)).all()
        assert all(0 < m <= 1 for m in t["majority"])
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
    for name in ("probe_ancestor", "probe_boundary"):
        image = plt.imread(tiny_run / "report" / "figures" / f"{name}.png")  # (H, W, 4)
        assert image.shape[1] > image.shape[0] > 100  # panels side by side
        assert image[..., :3].std() > 0.05  # drawn, not blank


def test_attention_command_writes_statistics_and_figures(tiny_run):
    assert cli.main(["attention", str(tiny_run), "--n-strings", "6", "--threads", "1"]) == 0
    att = json.loads((tiny_run / "analyze" / "attention.json").read_text())
    for key in ("model", "random_init"):
        res = att[key]
        scores = np.array(res["head_scores"]["boundary_l2"])
        assert scores.shape == (2, 4)  # tiny preset: 2 layers x 4 heads
        assert ((scores >= 0) & (scores <= 1 + 1e-9)).all()
        mean = np.array(res["mean_by_distance"], dtype=float)
        assert res["distances"][0] == 0  # causal: keys at or before the query
        assert mean.shape[:2] == (2, 4) and (np.nan_to_num(mean) >= 0).all()
    analyze = rundir.read_results(tiny_run, "analyze")
    figs = write_analyze_figures(analyze, tiny_run / "report" / "figures")
    assert {"attention_distance", "attention_boundary", "attention_examples"} <= set(figs)
    md = analyze_markdown(analyze, figs, tiny_run / "report")
    assert md[0] == "## Inside the model"
    assert any("boundary_l1" in line for line in md)
    assert any(line.startswith("![") for line in md)


def test_compare_runs_puts_runs_side_by_side(tiny_run, tmp_path):
    if not (tiny_run / "analyze" / "probe.json").exists():
        cli.main(["probe", str(tiny_run), "--n-train", "8", "--n-test", "4", "--steps", "1"])
    md = compare_runs([tiny_run, tiny_run], tmp_path)
    assert md[0].startswith("**ancestor probe, last layer**")
    assert (tmp_path / "probe_compare.png").stat().st_size > 1000


def test_cfglab_run_analyzes_before_the_report():
    names = list(STAGES)
    assert names.index("eval") < names.index("probe") < names.index("report")
    assert names.index("attention") < names.index("report")
    assert names.index("dynamics") < names.index("report")
    assert load_config(None).stages == [n for n in names if n != "dynamics"]  # opt-in


@pytest.mark.slow
def test_probe_stage_reads_its_config_section(tiny_run):
    cfg = read_config(tiny_run / "config.json")
    cfg.probe.n_test, cfg.probe.n_train, cfg.probe.steps = 4, 12, 2
    (tiny_run / "analyze" / "probe.json").unlink(missing_ok=True)
    STAGES["probe"](cfg, tiny_run)
    probe = json.loads((tiny_run / "analyze" / "probe.json").read_text())
    assert probe["n_test"] == 4 and probe["n_train"] == 12 and probe["settings"]["steps"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["probe", "{missing}"], "no run directory"),
        (["attention", "{missing}"], "no run directory"),
        (["probe", "{run}", "--window", "wide"], "probe.windows: unknown value 'wide'"),
        (
            ["probe", "{run}", "--n-test", "1"],
            "probe.n_test must be >= 2, got 1 (given as --n-test)",
        ),
        (["attention", "{run}", "--n-strings", "0"], "(given as --n-strings)"),
        (["probe", "{run}", "--steps", "many"], "probe.steps: expected int, got str"),
        (["probe", "{run}", "--set", "train.lr=0.1"], "takes only probe.* settings"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_run, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=tiny_run) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and message in err
    assert "Traceback" not in err
