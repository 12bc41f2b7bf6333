"""The analysis-family protocol: every family of ANALYSES keeps it (tested by iterating the
registry, so a new family is tested automatically), and the report and `cfglab compare` render
a family they have never heard of from its result file alone."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from cfglab import cli, rundir
from cfglab.analyze.context import AnalysisContext
from cfglab.analyze.families import ANALYSES
from cfglab.analyze.run import analyze
from cfglab.config import load_config
from cfglab.grammar import load
from cfglab.model import build_model, gpt_config
from cfglab.report.figures import draw

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "probe.n_train=16",
    "probe.n_test=8",
    "probe.steps=3",
    "attention.n_strings=4",
    "model.preset=tiny",
    "model.block_size=48",
]


def _context(grammar_name: str) -> AnalysisContext:
    from cfglab.data.vocab import Vocab

    cfg = load_config(None, [f"grammar.name={grammar_name}", *TINY])
    grammar = cfg.grammar.load()
    model = build_model(gpt_config(cfg.model, Vocab.from_grammar(grammar).size), seed=0).eval()
    twin = build_model(model.config, seed=1).eval()
    return AnalysisContext(model, grammar, cfg, twin=lambda: twin)


@pytest.mark.parametrize(
    "grammar", ["configs/grammars/quickstart.cfg", "configs/grammars/english.cfg"]
)
@pytest.mark.parametrize("name", list(ANALYSES))
def test_every_family_keeps_the_protocol(name, grammar, tmp_path):
    family = ANALYSES[name]
    assert isinstance(family.TITLE, str) and family.TITLE
    ctx = _context(str(ROOT / grammar))
    assert family.supports(ctx) is None
    (part,) = analyze(ctx, [name]).values()
    json.dumps(part, allow_nan=True)  # JSON-ready, as written to analyze/<name>.json
    assert part["rows"], name
    for row in part["rows"]:
        assert row["metric"] in family.DEFINITIONS, row["metric"]
        assert isinstance(row["n"], int) and (row["value"] is None or np.isfinite(row["value"]))
        assert all(isinstance(v, (str, int, float, type(None))) for v in row.values())
    for table in part["tables"]:
        assert all(len(r) == len(table["header"]) for r in table["rows"])
    for spec in part["figures"]:
        assert draw(spec, tmp_path / f"{spec['name']}.png").stat().st_size > 1000
    for view in family.COMPARE:
        assert view["metric"] in family.DEFINITIONS and view["kind"] in ("lines", "table")
    # the twin is measured once per memo: a second analysis reuses it
    calls = []
    ctx.twin = lambda orig=ctx.twin: calls.append(1) or orig()
    analyze(ctx, [name])
    assert not calls


def _family(tmp_path):
    """A family module nobody has seen: a new qualifier ("shape"), a table and a figure."""
    fake = types.ModuleType("cfglab_test_fake_family")
    fake.TITLE = "Planted family"
    fake.DEFINITIONS = {"planted_score": "the number of model parameters in millions"}
    fake.supports = lambda ctx: None
    fake.measure = lambda ctx: {"millions": sum(p.numel() for p in ctx.model.parameters()) / 1e6}
    fake.summary_rows = lambda r: [
        {"metric": "planted_score", "shape": s, "value": r["millions"] * k, "n": 1}
        for s, k in (("round", 1), ("square", 2))
    ]
    fake.tables = lambda r: [
        {"title": "planted", "header": ["m"], "rows": [[f"{r['millions']:.6f}"]]}
    ]
    fake.figures = lambda r: [
        {"name": "planted", "kind": "lines", "caption": "the planted figure",
         "panels": [{"series": [{"x": [0, 1], "y": [0, r["millions"]]}]}]}
    ]  # fmt: skip
    fake.COMPARE = [
        {"name": "planted_view", "kind": "lines", "metric": "planted_score", "where": {},
         "x": ["shape"], "panels": [], "caption": "planted across runs"}
    ]  # fmt: skip
    return fake


def test_report_and_compare_render_a_family_they_do_not_know(tmp_path, monkeypatch, capsys):
    fake = _family(tmp_path)
    monkeypatch.setitem(ANALYSES, "planted", fake)
    config = str(ROOT / "configs" / "quickstart.yaml")
    sets = [
        "model.preset=tiny", "model.block_size=48", "train.batch_size=4", "train.max_steps=2",
        "train.tensorboard=false", "data.prefetch=0", "stages=[train, analyze, report]",
        "probe.n_train=8", "probe.n_test=4", "probe.steps=1", "attention.n_strings=2",
    ]  # fmt: skip
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"seed{seed}"
        argv = ["run", config, "--no-progress", "--out", str(run), "--set", *sets]
        assert cli.main([*argv, f"train.seed={seed}"]) == 0
        runs.append(run)
    body = rundir.read_result(runs[0], "analyze/planted")
    millions = body["planted"]["millions"]
    md = (runs[0] / "report" / "report.md").read_text()
    assert "## Planted family" in md and f"| {millions:.6f} |" in md
    assert "![the planted figure](figures/planted.png)" in md
    assert "- **planted_score**: the number of model parameters in millions" in md
    out = tmp_path / "cmp"
    assert cli.main(["compare", *map(str, runs), "--out", str(out)]) == 0
    import csv

    with open(out / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["metric"] == "planted_score"]
    assert len(rows) == 4 and {r["shape"] for r in rows} == {"round", "square"}
    for r in rows:
        assert float(r["value"]) == pytest.approx(millions * (1 if r["shape"] == "round" else 2))
    report = (out / "report.md").read_text()
    assert "![planted across runs](figures/planted_view.png)" in report
    assert "| run | shape=round | shape=square |" in report


def test_every_target_has_fixed_classes_on_any_grammar():
    from cfglab.analyze.targets import TARGETS, build_targets
    from cfglab.data.sampler import sample

    for name in ("cfg3b", str(ROOT / "configs/grammars/english.cfg")):
        g = load(name)
        names = [t for t, spec in TARGETS.items() if spec.supports(g)]
        assert ("ancestor" in names) == (g.levels is not None)
        cap = None if g.levels is not None else 40
        a = build_targets(g, sample(g, 30, 1, labels=True, max_len=cap), names)
        b = build_targets(g, sample(g, 7, 2, labels=True, max_len=cap), names)
        assert [(t.target, t.column, t.n_classes) for t in a] == [
            (t.target, t.column, t.n_classes) for t in b
        ]  # train and test strings agree on the probes and their classes
        for t in a:
            assert t.y.min() >= 0 and t.y.max() < t.n_classes


def test_stages_check_the_config_before_any_work(tmp_path, capsys):
    """An encoder asked for eval, a probe target its grammar lacks, an unknown family: one line
    at `cfglab run`, exit 2, nothing written."""
    config = str(ROOT / "configs" / "quickstart.yaml")
    for sets, message in [
        (["train.objective=mlm", "stages=[train, eval]"], "does not generate"),
        (["probe.targets=[ancestor]", f"grammar.name={ROOT}/configs/grammars/english.cfg"],
         "probe.targets: 'ancestor' needs a layered grammar"),
        (["dynamics.analyses=[probes]", "stages=[train, dynamics]"],
         "dynamics.analyses: unknown family 'probes'"),
        (["train.objective=mlm", "stages=[train, dynamics]"], "dynamics.eval"),
    ]:  # fmt: skip
        run = tmp_path / "run"
        assert cli.main(["run", config, "--no-progress", "--out", str(run), "--set", *sets]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cfglab: error: ") and message in err, err
        assert not run.exists()
