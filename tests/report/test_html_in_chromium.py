"""A run's report.html in headless Chromium: every image decodes, and the paper's mechanism
figures are there (the probes at NT ends, position-based attention, attention between NT
ends). Runs when Chromium is installed (Debian: `apt-get install chromium`).

`python -m tests.report.test_html_in_chromium runs/quickstart/report/report.html` checks any
report the same way."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.chromium import images_loaded

ROOT = Path(__file__).resolve().parents[2]
MECHANISM = ("probe_ancestor_diagonal", "attention_distance", "attention_end_to_end")


@pytest.mark.skipif(not shutil.which("chromium"), reason="no Chromium installed")
def test_a_run_report_shows_the_mechanism_figures_in_a_browser(tmp_path):
    from cfglab import cli

    run = tmp_path / "run"
    sets = [
        "model.preset=tiny",
        "model.block_size=48",
        "train.batch_size=4",
        "train.max_steps=4",
        "train.tensorboard=false",
        "data.prefetch=0",
        "stages=[train, eval, analyze, report]",
        "eval.n_samples=4",
        "eval.n_kl=4",
        "eval.cuts=[0]",
        "probe.n_train=8",
        "probe.n_test=4",
        "probe.steps=2",
        "attention.n_strings=4",
    ]
    config = str(ROOT / "configs" / "quickstart.yaml")
    assert cli.main(["run", config, "--no-progress", "--out", str(run), "--set", *sets]) == 0
    page = run / "report" / "report.html"
    md = (run / "report" / "report.md").read_text()
    for name in MECHANISM:
        assert f"figures/{name}.png" in md, name
    total, loaded = images_loaded(page, tmp_path / "profile")
    assert total >= 10 and loaded == total


if __name__ == "__main__":  # check a report: python tests/report/test_html_in_chromium.py PAGE
    import tempfile

    page = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        total, loaded = images_loaded(page, Path(tmp) / "profile")
    md = (page.parent / "report.md").read_text()
    missing = [n for n in MECHANISM if f"figures/{n}.png" not in md]
    print(
        f"{page}: {loaded} of {total} images loaded; mechanism figures missing: {missing or 'none'}"
    )
    sys.exit(0 if loaded == total and not missing else 1)
