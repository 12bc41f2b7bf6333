"""A run directory's result files as plain tables (no torch): the report's only input.

Everything is read through `cfglab.rundir` (the one reader of each file): config.json,
metrics.jsonl, eval/*.json (one file per metric family, summary.json with the summary rows),
analyze/*.json (one per analysis family, and the dynamics stage's). Everything is optional
except the directory itself, so a report can be built for a run that has only trained, or only
been evaluated.

`run_state` ties the results to the training record: a run is unfinished (no checkpoint, or
its latest one short of train.max_steps) or stale (a result file's provenance, the fingerprint
and step it was measured on, is not the run's current ones); compare keeps such runs out of
its seed aggregates and the report says so at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cfglab import rundir
from cfglab.errors import CfglabError


@dataclass
class RunResults:
    """Everything the report shows, as read from disk."""

    run_dir: Path
    config: dict = field(default_factory=dict)  # config.json, or {} if absent
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl rows, in file order
    eval: dict[str, dict] = field(default_factory=dict)  # eval/<name>.json bodies by name
    analyze: dict[str, dict] = field(default_factory=dict)  # analyze/<name>.json bodies by name
    # (each analysis family's, and the dynamics stage's)

    @property
    def name(self) -> str:
        return self.config.get("name") or self.run_dir.name

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metrics.jsonl key, skipping rows without it."""
        rows = [r for r in self.metrics if isinstance(r.get(key), (int, float))]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]

    def family(self, name: str):
        """One metric family's result (eval/<name>.json's <name> key), or None."""
        return self.eval.get(name, {}).get(name)

    @property
    def accuracy(self) -> list[dict]:
        return self.family("accuracy") or []

    @property
    def distribution(self) -> dict:
        return self.family("distribution") or {}

    @property
    def diversity(self) -> dict:
        return self.family("diversity") or {}

    @property
    def robustness(self) -> list[dict]:
        return self.family("robustness") or []

    @property
    def loss_floor(self) -> dict | None:
        return self.family("loss_floor")

    @property
    def summary_rows(self) -> list[dict]:
        return self.eval.get("summary", {}).get("rows", [])

    @property
    def definitions(self) -> dict[str, str]:
        """Every family's definitions (eval and analysis), merged."""
        out: dict[str, str] = {}
        for body in [*self.eval.values(), *self.analyze.values()]:
            out.update(body.get("definitions") or {})
        return out


NUM = (int, float)
ACC_ROW = {
    "cut": int,
    "temperature": NUM,
    "n": int,
    "n_correct": int,
    "accuracy": NUM,
    "ci_low": NUM,
    "ci_high": NUM,
    "cp_low": NUM,
    "cp_high": NUM,
    "n_unfinished": int,
    "n_bad_token": int,
    "first_error": list,
}
RATE = {"n": int, "accuracy": NUM, "ci_low": NUM, "ci_high": NUM}
# the shape of each result the report reads: a key -> type, or a nested shape ([shape]: a list
# of them); a file that does not have it is refused with its name (re-run its stage)
SHAPES: dict[str, dict] = {
    "eval/accuracy": {"accuracy": [ACC_ROW]},
    "eval/distribution": {
        "distribution": {
            "kl": NUM,
            "kl_stderr": NUM,
            "seq_kl": NUM,
            "cross_entropy": NUM,
            "entropy_rate": NUM,
            "entropy_rate_rb": NUM,
            "n_strings": int,
            "n_rows": int,
            "kl_by_position": [{"lo": int, "kl": NUM, "n_rows": int}],
        }
    },
    "eval/loss_floor": {"loss_floor": {"value": NUM, "stderr": NUM, "n_strings": int}},
    "eval/diversity": {
        "diversity": {"generations": {"n": int, "distinct": int, "equal_pairs": int}}
    },
    "eval/robustness": {
        "robustness": [
            {"cut": int, "gamma": NUM, "temperature": NUM, "clean": RATE, "no_new_errors": RATE}
        ]
    },
    "eval/summary": {"rows": [{"metric": str, "n": int}]},
}
# every analysis result file (analyze/<family>.json, analyze/dynamics.json) has this shape: its
# rows, tables and figures are read the same way whatever family wrote them
ANALYSIS_SHAPE = {
    "rows": [{"metric": str}],
    "tables": [{"header": list, "rows": list}],
    "figures": [{"name": str, "kind": str, "panels": list}],
    "compare": [{"name": str, "kind": str, "metric": str}],
}


def _check_shape(value, shape, where: str) -> str | None:
    """Where `value` departs from `shape`, or None."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} is not a mapping"
        for key, sub in shape.items():
            if key not in value:
                return f"{where}.{key} is missing"
            bad = _check_shape(value[key], sub, f"{where}.{key}")
            if bad:
                return bad
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} is not a list"
        for i, item in enumerate(value):
            bad = _check_shape(item, shape[0], f"{where}[{i}]")
            if bad:
                return bad
        return None
    ok = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
    ok = ok or (shape == NUM and value is None)  # NaN is written as null by some encoders
    return None if ok else f"{where} is not {getattr(shape, '__name__', 'a number')}"


def read_checked(run_dir: Path, folder: str) -> dict[str, dict]:
    """Every result file of a run's folder (eval, analyze) by name, each checked against the
    shape cfglab writes: CfglabError naming the file and the command that rewrites it."""
    bodies = rundir.read_results(run_dir, folder)
    for name, body in bodies.items():
        shape = SHAPES.get(f"{folder}/{name}", ANALYSIS_SHAPE if folder == rundir.ANALYZE else None)
        bad = _check_shape(body, shape, name) if shape else None
        if bad:
            stage = "cfglab eval" if folder == rundir.EVAL else "cfglab analyze"
            stage = "cfglab dynamics" if name == "dynamics" else stage
            stage = "cfglab intervene" if name == "interventions" else stage
            raise CfglabError(
                f"{run_dir / folder / (name + '.json')}: not the shape cfglab writes ({bad}); "
                f"re-run `{stage} {run_dir}`"
            )
    return bodies


def result_provenance(run_dir: Path) -> dict[str, dict | None]:
    """Every result file's provenance {fingerprint, step} (None: the file carries none), by
    its name in the run ("eval/accuracy.json"): eval files keep it in their settings, analysis
    files in their header."""
    out: dict[str, dict | None] = {}
    for folder in (rundir.EVAL, rundir.ANALYZE):
        for name, body in rundir.read_results(run_dir, folder).items():
            holder = body.get("settings") if folder == rundir.EVAL else body
            prov = holder.get("provenance") if isinstance(holder, dict) else None
            out[f"{folder}/{name}.json"] = prov if isinstance(prov, dict) else None
    return out


def stale_results(run_dir: Path) -> list[str]:
    """The result files not measured on the run's current training record, each with why:
    another fingerprint (the run was retrained or resumed with changes since), another step
    (trained on since), or no provenance at all (written by an older cfglab). [] for a run
    with no training record (fingerprint.json): then there is nothing to hold them to."""
    fingerprint = rundir.read_fingerprint(run_dir).get("config")
    if fingerprint is None:
        return []
    step = rundir.latest_step(run_dir)
    out = []
    for name, prov in result_provenance(run_dir).items():
        if prov is None:
            out.append(f"{name} (no provenance: written by an older cfglab)")
        elif prov.get("fingerprint") != fingerprint:
            out.append(f"{name} (measured on another training record of this folder)")
        elif prov.get("step") != step:
            out.append(f"{name} (measured at step {prov.get('step')}, the run is at {step})")
    return out


def run_state(run_dir: Path) -> tuple[str, str]:
    """(state, why) of a run's results: "current"; "not started" (no config.json);
    "unfinished" (no checkpoint, or the latest short of train.max_steps); "stale" (a result
    file measured on another training record or step: stale_results). A folder of results
    with no training record (no fingerprint.json, which training writes before its first step:
    results written by other means) is "current": there is nothing to hold it to."""
    d = Path(run_dir)
    if not (d / rundir.CONFIG).is_file():
        return "not started", "no run folder yet" if not d.exists() else "no config.json"
    if not rundir.read_fingerprint(d):
        return "current", ""
    step = rundir.latest_step(d)
    max_steps = rundir.read_run_config(d).train.max_steps
    if step is None:
        return "unfinished", "no checkpoint (killed before its first, or ckpt/ removed)"
    if step < max_steps:
        return "unfinished", f"trained to step {step} of {max_steps}"
    stale = stale_results(d)
    if stale:
        more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
        return "stale", f"{stale[0]}{more}"
    return "current", ""


def load_run(run_dir: str | Path) -> RunResults:
    """Read a run directory. CfglabError if it does not exist or a result file is corrupt."""
    d = Path(run_dir)
    if not d.is_dir():
        raise CfglabError(
            f"no run directory {d}; give the folder `cfglab train` wrote (runs/<name>)"
        )
    res = RunResults(run_dir=d)
    if (d / rundir.CONFIG).is_file():
        res.config = rundir.read_run_config(d).to_dict()
    res.metrics = rundir.read_metrics(d)
    res.eval = read_checked(d, rundir.EVAL)
    res.analyze = read_checked(d, rundir.ANALYZE)
    if not res.metrics and not res.eval and not res.analyze:
        raise CfglabError(
            f"{d} has no metrics.jsonl, eval/*.json or analyze/*.json: train it "
            "(`cfglab train`) or evaluate it (`cfglab eval`) first"
        )
    return res
