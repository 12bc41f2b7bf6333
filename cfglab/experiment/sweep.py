"""`cfglab sweep` as a library: the plan printed before any work, then the runs, their summary,
the exit code, and whether the comparison is written again.

    exp = load_experiment("configs/experiments/smoke.yaml")   # every run config validated
    print("\n".join(plan_sweep(exp)))                          # refuses stale run folders first
    outcome = run_sweep(exp)                                   # status.json, the runs
    print(outcome.summary()); outcome.compare() if outcome.needs_compare else None

The comparison (runs/<experiment>/compare/) is written again when a run ran, when the plan
changed (a grid value added or removed), or when there is none yet. The exit code is 0 when
every selected run is done, 130 when the sweep was interrupted, else 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cfglab import expdir
from cfglab.experiment.grid import Experiment


def plan_sweep(exp: Experiment, *, estimate: bool = True) -> list[str]:
    """The plan's lines (runs, tokens, the time estimate), after checking the run folders
    (before the estimate, which already trains a few steps)."""
    from cfglab.experiment.estimate import plan_lines
    from cfglab.experiment.launch import check_run_folders, pending_stages

    check_run_folders(exp)
    todo = [spec for spec in exp.runs if pending_stages(spec)]
    return plan_lines(exp, todo, estimate=estimate and bool(todo))


@dataclass
class SweepOutcome:
    exp: Experiment
    states: dict[str, dict]  # run folder name -> its state (the runs this sweep selected)
    needs_compare: bool  # whether compare/ is out of date

    @property
    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for state in self.states.values():
            counts[state["state"]] = counts.get(state["state"], 0) + 1
        return counts

    def summary(self) -> str:
        """One line: how many runs ended in each state."""
        counts = self.counts
        return f"sweep {self.exp.name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    def problems(self) -> list[str]:
        """One line per run not done: its state and error."""
        return [
            f"  {name}: {state['state']}: {state.get('error') or ''}"
            for name, state in self.states.items()
            if state["state"] != "done"
        ]

    @property
    def exit_code(self) -> int:
        counts = self.counts
        if counts.get("interrupted"):
            return 130
        return 1 if any(s != "done" for s in counts) else 0

    def compare(self) -> Path:
        """Write runs/<experiment>/compare/ (results.csv, report.md, report.html, ...)."""
        from cfglab.report.compare import compare

        return compare([self.exp.out], self.exp.out / expdir.COMPARE)


def run_sweep(exp: Experiment, *, cluster: str | None = None) -> SweepOutcome:
    """Run every selected run with stages left (cfglab.experiment.launch.sweep)."""
    from cfglab.experiment.launch import sweep

    plan_before = expdir.read_plan_text(exp.out)
    states, ran = sweep(exp, cluster=cluster)
    selected = {spec.dir.name for spec in exp.runs}  # --only: the others are not this sweep's
    states = {name: state for name, state in states.items() if name in selected}
    has_results = (exp.out / expdir.COMPARE / expdir.RESULTS).is_file()
    changed = expdir.read_plan_text(exp.out) != plan_before
    return SweepOutcome(exp, states, needs_compare=bool(ran) or changed or not has_results)
