"""A whole run on a language beyond context-free: `cfglab run` trains, evaluates (accuracy and KL
against the language's exact rows, grouped by segment), probes the language's own labels,
measures the dynamics and reports; the settings that need a grammar's trees are refused before
any work, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from cfglab.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = [
    "grammar.name=copy m_max=4 alphabet=2",
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=4",
    "train.max_steps=6",
    "train.threads=1",
    "train.keep_steps=[3]",
    "eval.n_samples=8",
    "eval.n_kl=8",
    "eval.cuts=[0, 2]",
    "probe.n_train=16",
    "probe.n_test=8",
    "probe.steps=3",
    "attention.n_strings=2",
    "dynamics.n_samples=4",
    "dynamics.n_kl=4",
    "dynamics.analyses=[probe]",
    "stages=[train, eval, analyze, dynamics, report]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lang") / "run"
    assert main(["run", QUICKSTART, "--no-progress", "--out", str(out), "--set", *TINY]) == 0
    return out


def test_every_stage_runs_on_a_language(run):
    assert (run / "grammar.cfg").read_text().startswith("%language copy")
    acc = json.loads((run / "eval" / "accuracy.json").read_text())["accuracy"]
    assert [a["cut"] for a in acc] == [0, 2] and all(a["n"] == 8 for a in acc)
    dist = json.loads((run / "eval" / "distribution.json").read_text())["distribution"]
    assert set(dist["kl_by_level"]) <= {"start", "block0", "block1"} and dist["kl"] > 0
    probe = json.loads((run / "analyze" / "probe.json").read_text())
    assert {t["target"] for t in probe["probe"]["tables"]} == {"block", "offset"}
    assert not (run / "analyze" / "attention.json").exists()  # skipped: no trees
    assert (run / "analyze" / "dynamics.json").exists()
    assert "## " in (run / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    "setting,named",
    [
        ("eval.corrupt=[0.1]", "eval.corrupt"),
        ("data.sampler=physicslm4", "physicslm4"),
        ("data.exclude=['A -> B C']", "data.exclude"),
        ("stages=[train, intervene]", "intervene"),
        ("grammar.implicit.tokens=6", "grammar.implicit"),
    ],
)
def test_what_needs_a_grammars_trees_is_refused_at_once(setting, named, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", QUICKSTART, "--no-progress", "--out", str(out), "--set", *TINY, setting]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cfglab: error:") and named in err[0]
    assert not out.exists()  # nothing written
