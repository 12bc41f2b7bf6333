"""Every stage on every kind of grammar and objective either runs or is refused at load: one
line `cfglab: error: ...`, exit 2, before any work, nothing written (`cfglab run` and every grid
point of a sweep). The combinations no model can run are known independently of the checks: an
encoder (mlm) does not generate, so neither eval nor the dynamics stage's eval families can run
on it; every other stage runs on both grammars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cfglab.cli import main
from cfglab.config import STAGE_NAMES

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TINY = [
    "model.preset=tiny",
    "model.block_size=48",
    "train.batch_size=4",
    "train.max_steps=4",
    "train.ckpt_every=2",
    "train.log_every=1",
    "train.eval_every=0",
    "train.threads=1",
    "train.tensorboard=false",
    "train.keep_steps=[2]",
    "data.prefetch=0",
    "data.max_len=40",
    "eval.n_samples=4",
    "eval.n_kl=4",
    "eval.cuts=[0, 3]",
    "eval.n_fixed_prompt=2",
    "probe.n_train=8",
    "probe.n_test=4",
    "probe.steps=2",
    "attention.n_strings=2",
    "dynamics.n_samples=4",
    "dynamics.n_kl=4",
    "intervene.n_fit=8",
    "intervene.n_strings=4",
    "intervene.random_draws=1",
    "intervene.n_pool=32",
    "intervene.n_pairs=2",
    "intervene.window=2",
    "intervene.n_bootstrap=10",
    "intervene.n_generate=4",
]
GRAMMARS = {"layered": "grammars/quickstart.cfg", "not_layered": "grammars/english.cfg"}
# the stage's own output, seen when it ran
WROTE = {
    "train": "ckpt/latest",
    "eval": "eval/summary.json",
    "analyze": "analyze/probe.json",
    "intervene": "analyze/interventions.json",
    "dynamics": "analyze/dynamics.json",
    "report": "report/report.md",
}
# an encoder does not generate, nor predict a next token for intervene to score
CANNOT_RUN = {("eval", "mlm"), ("dynamics", "mlm"), ("intervene", "mlm")}


def run_or_refused(capsys, out: Path, sets: list[str]) -> tuple[int, str]:
    """`cfglab run` of the quickstart with TINY and `sets` into `out`: (exit code, error line);
    a refusal must be one line with no traceback and leave no folder behind."""
    capsys.readouterr()
    argv = ["run", str(QUICKSTART), "--no-progress", "--out", str(out), "--set", *TINY, *sets]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        return 0, ""
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("cfglab: error: "), err
    assert not out.exists(), f"refused, yet {out} was written"
    return 2, err[0]


def test_the_matrix_covers_every_stage():
    assert set(WROTE) == set(STAGE_NAMES)


@pytest.mark.parametrize("objective", ["next_token", "mlm"])
@pytest.mark.parametrize("grammar", list(GRAMMARS))
@pytest.mark.parametrize("stage", list(WROTE))
def test_every_stage_runs_or_is_refused_at_load(tmp_path, capsys, stage, grammar, objective):
    out = tmp_path / "run"
    stages = "[train]" if stage == "train" else f"[train, {stage}]"
    sets = [f"grammar.name={GRAMMARS[grammar]}", f"train.objective={objective}", f"stages={stages}"]
    code, line = run_or_refused(capsys, out, sets)
    if (stage, objective) in CANNOT_RUN:
        assert code == 2 and "masked-LM encoder" in line, line
    else:
        assert code == 0 and (out / WROTE[stage]).exists()


# a setting a stage cannot run under on some grammar or objective -> the refusal's words
REFUSED = {
    "rule noise, not layered": (
        ["grammar.name=grammars/english.cfg", "data.noise.fraction=0.5", "data.noise.kind=rule"],
        "rule noise needs a layered grammar",
    ),
    "authors' sampler, weighted grammar": (
        ["grammar.name=grammars/english.cfg", "data.sampler=physicslm4", "data.max_len=null"],
        "physicslm4",
    ),
    "layered probe target, not layered": (
        [
            "grammar.name=grammars/english.cfg",
            "probe.targets=[ancestor]",
            "stages=[train, analyze]",
        ],
        "'ancestor' needs a layered grammar",
    ),
    "the same in the dynamics stage": (
        [
            "grammar.name=grammars/english.cfg",
            "probe.targets=[boundary]",
            "stages=[train, dynamics]",
        ],
        "'boundary' needs a layered grammar",
    ),
    "a window at NT ends, no target with ends": (
        ["probe.targets=[depth]", "probe.windows=[all, diagonal]", "stages=[train, analyze]"],
        "no target of probe.targets ['depth'] has NT ends",
    ),
    "an unknown probe target": (
        ["probe.targets=[ancestors]", "stages=[train, analyze]"],
        "did you mean",
    ),
    "eval families in the dynamics of an encoder": (
        ["train.objective=mlm", "dynamics.eval=[accuracy]", "stages=[train, dynamics]"],
        "dynamics.eval",
    ),
    "eval of an encoder": (["train.objective=mlm", "stages=[train, eval]"], "does not generate"),
    "prompts longer than the window": (["eval.cuts=[60]", "stages=[train, eval]"], "room"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_stage_that_cannot_run_is_refused_before_training(tmp_path, capsys, case):
    sets, needle = REFUSED[case]
    code, line = run_or_refused(capsys, tmp_path / "run", sets)
    assert code == 2 and needle in line, line


def test_what_can_run_on_those_grammars_runs(tmp_path, capsys):
    """The neighbours of the refused settings run: token noise on the non-layered grammar, an
    encoder's dynamics without eval families, a restricted window with a target that has NT
    ends."""
    for i, sets in enumerate(
        [
            ["grammar.name=grammars/english.cfg", "data.noise.fraction=0.5", "stages=[train]"],
            ["train.objective=mlm", "dynamics.eval=[]", "stages=[train, dynamics]"],
            [
                "probe.targets=[depth, ancestor]",
                "probe.windows=[diagonal]",
                "stages=[train, analyze]",
            ],
        ]
    ):
        assert run_or_refused(capsys, tmp_path / f"run{i}", sets) == (0, "")


def test_every_grid_point_of_a_sweep_is_checked_before_anything_runs(tmp_path, capsys):
    """A grid over train.objective with an eval stage: the mlm point is refused at load, naming
    it; no run folder and no plan is written."""
    data = yaml.safe_load((ROOT / "configs" / "experiments" / "smoke.yaml").read_text())
    data["base"] = str(QUICKSTART)
    data["out_dir"] = str(tmp_path / "runs")
    data["grid"] = {"train.objective": ["next_token", "mlm"]}
    data["stages"] = ["train", "eval"]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["sweep", str(exp), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid point {'train.objective': 'mlm'}" in err[0], err
    assert "masked-LM encoder" in err[0]
    assert not (tmp_path / "runs").exists()
    assert json.dumps(data)  # the file itself is valid: only the point is refused
