"""A run directory's result files as plain tables (no torch): the report's only input.

Everything is read through `cfglab.rundir` (the one reader of each file): config.json,
metrics.jsonl, eval/*.json (one file per metric family, summary.json with the summary rows),
analyze/*.json (probe, attention). Everything is optional except the directory itself, so a
report can be built for a run that has only trained, or only been evaluated.
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
        """Every family's definitions, merged."""
        out: dict[str, str] = {}
        for body in self.eval.values():
            out.update(body.get("definitions") or {})
        return out


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
    res.eval = rundir.read_results(d, rundir.EVAL)
    res.analyze = rundir.read_results(d, rundir.ANALYZE)
    if not res.metrics and not res.eval and not res.analyze:
        raise CfglabError(
            f"{d} has no metrics.jsonl, eval/*.json or analyze/*.json: train it "
            "(`cfglab train`) or evaluate it (`cfglab eval`) first"
        )
    return res
