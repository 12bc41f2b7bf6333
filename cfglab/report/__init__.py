"""Stage 7: results -> tables and figures (no torch). `build_report(run_dir)` is the entry point."""

from cfglab.report.report import build_report
from cfglab.report.results import RunResults, load_run

__all__ = ["RunResults", "build_report", "load_run"]
