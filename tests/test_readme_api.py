"""The README's "From Python" section is true: its blocks run, in order, in one namespace, on a
tiny run trained here. The blocks name `runs/quickstart` and `exported/`; the test replaces the
two paths with its own. ```bash blocks are `cfglab` commands (run through cfglab.cli.main);
```python blocks are executed under a file name that nnsight can read the source of. A block
that needs an optional extra (hf, interp) is skipped, with the rest run, when it is absent."""

from __future__ import annotations

import importlib.util
import linecache
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = {"transformers": "hf", "transformer_lens": "interp", "nnsight": "interp"}


def section_blocks(readme: str, heading: str = "## From Python") -> list[tuple[str, str]]:
    """(language, code) of each fenced block between `heading` and the next '## ' heading."""
    start = readme.index(f"\n{heading}\n")
    end = readme.find("\n## ", start + 1)
    body = readme[start : end if end >= 0 else len(readme)]
    return re.findall(r"```(python|bash)\n(.*?)```", body, flags=re.S)


def missing_extras(code: str) -> list[str]:
    """The extras a block imports that are not installed (cfglab's exports import them lazily,
    so their names in the block count too)."""
    wanted = [m for m in EXTRAS if re.search(rf"\b{m}\b", code)]
    if "to_hf" in code:
        wanted.append("transformers")
    if "to_transformer_lens" in code:
        wanted.append("transformer_lens")
    return sorted({EXTRAS[m] for m in wanted if importlib.util.find_spec(m) is None})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from cfglab import cli

    out = tmp_path_factory.mktemp("readme") / "run"
    argv = ["train", str(ROOT / "configs" / "quickstart.yaml"), "--no-progress", "--out", str(out)]
    sets = ["model.preset=tiny", "model.block_size=48", "train.batch_size=4"]
    sets += ["train.max_steps=3", "train.threads=1"]
    assert cli.main([*argv, "--set", *sets]) == 0
    return out


def test_the_section_has_the_calls_a_researcher_uses():
    blocks = section_blocks((ROOT / "README.md").read_text())
    code = "\n".join(c for _, c in blocks)
    for call in ["load_model", "read_run_grammar", "sample(", "next_token_dist", "run_with_cache"]:
        assert call in code, call
    for call in ["run_with_hooks", "probe_model", "to_hf", "to_transformer_lens", "nnsight"]:
        assert call in code, call
    assert 'RUN = "runs/quickstart"' in blocks[0][1]  # the path the test replaces


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_every_block_runs(tiny_run, tmp_path, capsys):
    from cfglab import cli

    blocks = section_blocks((ROOT / "README.md").read_text())
    namespace: dict = {"__name__": "readme"}
    skipped = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only wait for each other on 2 cores
    try:
        for i, (language, code) in enumerate(blocks):
            code = code.replace("runs/quickstart", str(tiny_run))
            code = code.replace("exported/", f"{tmp_path}/exported/")
            absent = missing_extras(code)
            if absent:
                skipped.append(f"block {i + 1} needs the {', '.join(absent)} extra")
                continue
            if language == "bash":
                for line in code.strip().splitlines():
                    assert line.startswith("cfglab "), f"block {i + 1}: {line}"
                    assert cli.main(shlex.split(line)[1:]) == 0, capsys.readouterr().err
                continue
            name = str(tmp_path / f"readme_block_{i + 1}.py")
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # nnsight
            exec(compile(code, name, "exec"), namespace)
    finally:
        torch.set_num_threads(before)
    if skipped:
        pytest.skip("; ".join(skipped))


def test_the_languages_section_runs(tmp_path, monkeypatch, capsys):
    """ "Beyond context-free": its shell lines (run in a fresh folder) and its Python block."""
    import subprocess

    from cfglab import cli

    blocks = section_blocks(
        (ROOT / "README.md").read_text(),
        "## Beyond context-free: languages",
    )
    assert [language for language, _ in blocks] == ["bash", "python"]
    monkeypatch.chdir(tmp_path)
    outputs = []
    for line in blocks[0][1].strip().splitlines():
        if line.startswith("cfglab "):
            assert cli.main(shlex.split(line.split("  #")[0])[1:]) == 0
            outputs.append(capsys.readouterr().out)
        else:
            subprocess.run(line, shell=True, check=True)
    assert outputs[0].splitlines() == [
        "accepted",
        "rejected: a prefix of a sentence, but incomplete",
        "accepted 1 of 2",
    ]
    assert "# line 1: log P = -2.772588722" in outputs[1]  # 1/4 for |w| = 2, then 1/4 for w
    namespace: dict = {}
    exec(blocks[1][1], namespace)
    assert namespace["ok"].all() and len(namespace["rows"]) == 1000
