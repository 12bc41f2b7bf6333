"""`cfglab parse` and `cfglab prob` start light (exact/startup.py): no torch, matplotlib,
scipy.linalg or cfglab.config in the process, the garbage collector back on after the command,
and the answers those of the library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cfglab.data.sampler import sample
from cfglab.exact import cyk, inside
from cfglab.grammar.builtin import load

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json, sys
from cfglab.cli import main
rc = [main(["parse", "cfg3f", sys.argv[1]]), main(["prob", "cfg3f", sys.argv[1], "--next"])]
heavy = sorted(
    {m for m in sys.modules if m in ("torch", "matplotlib", "scipy.linalg", "cfglab.config")}
)  # the config machinery too: only other commands' flags need its defaults
# numba imports the scipy package (not scipy.linalg): it must stay importable, not hidden
scipy = [type(sys.modules.get("scipy")).__name__, any(m.startswith("scipy.") for m in sys.modules)]
print(json.dumps({"rc": rc, "heavy": heavy, "gc": gc.isenabled(), "scipy": scipy}))
"""


def test_parse_and_prob_load_no_heavy_module(tmp_path):
    g = load("cfg3f")
    strings = sample(g, 3, seed=4, labels=False).strings()
    bad = strings[0].copy()
    bad[5] = bad[5] % 3 + 1
    strings.append(bad)
    path = tmp_path / "s.txt"
    path.write_text("".join(" ".join(g.terminals[t - 1] for t in x) + "\n" for x in strings))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    *printed, last = out.stdout.splitlines()
    report = json.loads(last)
    assert report["rc"] == [0, 0] and report["heavy"] == [] and report["gc"]
    kind, has_parts = report["scipy"]
    assert kind == ("module" if has_parts else "NoneType")  # NoneType here: absent
    ok = cyk.recognize(g, strings)
    assert ok.tolist() == [True, True, True, False]
    assert printed[:3] == ["accepted"] * 3 and printed[3].startswith("rejected: no sentence")
    log_p = [float(line.split("= ")[1]) for line in printed if line.startswith("# line")]
    assert log_p == [float(f"{v:.10g}") for v in inside.log_prob(g, strings)]
