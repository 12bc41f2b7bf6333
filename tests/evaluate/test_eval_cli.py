"""The torch side of evaluation: model adapters, `cfglab generate`, `cfglab eval`, `cfglab report`
on a run directory holding an (untrained) checkpoint of the quickstart grammar."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cfglab.evaluate.adapters as AD  # noqa: E402
from cfglab import rundir  # noqa: E402
from cfglab.cli import main  # noqa: E402
from cfglab.config import load_config  # noqa: E402
from cfglab.data.vocab import Vocab  # noqa: E402
from cfglab.model import build_model, gpt_config  # noqa: E402
from cfglab.train.checkpoint import save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `cfglab train` leaves it: config.json, metrics.jsonl, a checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "qs"
    cfg = load_config(
        ROOT / "configs" / "quickstart.yaml", ["model.block_size=64", "train.threads=1"]
    )
    vocab = Vocab.from_grammar(cfg.grammar.load())
    torch.manual_seed(0)
    model = build_model(gpt_config(cfg.model, vocab.size))
    rundir.write_run_record(run, cfg, cfg.grammar.load())
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.5 - s / 100}) + "\n" for s in range(10, 60, 10))
    )
    save_checkpoint(run, 50, model, None, {})
    return run


def test_torch_logprob_fn_padding_does_not_change_rows(run_dir):
    from cfglab.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    vocab = Vocab.from_grammar(cfg.grammar.load())
    fn = AD.torch_logprob_fn(model, pad_id=vocab.pad)
    a, b = np.array([0, 1, 2, 3, 1]), np.array([0, 2])
    together = fn([a, b])
    alone = [fn([a])[0], fn([b])[0]]
    for x, y in zip(together, alone, strict=True):
        assert np.allclose(x, y, atol=1e-5)
        assert np.allclose(np.exp(x).sum(axis=1), 1.0)
    assert together[0].shape == (5, vocab.size)


def test_generate_prints_strings_with_their_prompts(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 3 1\n\n2 2\n")
    assert (
        main(["generate", str(run_dir), "-n", "3", "--prompts", str(prompts), "--seed", "5"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert all(line.split()[:3] == ["1", "3", "1"] for line in lines[:3])
    assert all(line.split()[:2] == ["2", "2"] for line in lines[3:])
    known = {"1", "2", "3", "<bos>", "<mask>", "<pad>"}
    assert all(set(line.split()) <= known for line in lines)
    # same seed, same strings
    main(["generate", str(run_dir), "-n", "3", "--prompts", str(prompts), "--seed", "5"])
    assert capsys.readouterr().out.splitlines() == lines


def test_generations_stream_in_bounded_memory(run_dir):
    """A billion generations are an iterator: the first ones come at once (a list would hold
    them all first), the same as those of -n 64 (one batch) with that seed."""
    import itertools

    from cfglab.stages import generate_from_run

    first = list(itertools.islice(generate_from_run(run_dir, 10**9, seed=3), 5))
    assert first == list(generate_from_run(run_dir, 64, seed=3))[:5]


def test_generate_rejects_unknown_prompt_tokens(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 2\n\n1 x 2\n")
    assert main(["generate", str(run_dir), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and f"{prompts}:3" in err and "'x'" in err
    assert "Traceback" not in err


def test_eval_writes_results_and_report_builds(run_dir, capsys):
    args = ["eval", str(run_dir), "--n", "12", "--n-kl", "10", "--cut", "0", "4"]
    assert main([*args, "--corrupt", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "accuracy cut=0 temperature=1" in out and "accuracy cut=4 temperature=1" in out
    assert "robust_clean cut=4 gamma=0.2 temperature=1" in out and "\nkl " in out
    acc = json.loads((run_dir / "eval" / "accuracy.json").read_text())["accuracy"]
    assert [a["cut"] for a in acc] == [0, 4] and all(a["n"] == 12 for a in acc)
    dist = json.loads((run_dir / "eval" / "distribution.json").read_text())["distribution"]
    assert dist["n_strings"] == 10 and dist["kl"] > 0  # an untrained model is far from the truth
    assert dist["seq_kl"] == pytest.approx(dist["cross_entropy"] - dist["entropy_rate"])
    rob = json.loads((run_dir / "eval" / "robustness.json").read_text())["robustness"]
    assert [(r["cut"], r["gamma"], r["clean"]["n"]) for r in rob] == [(4, 0.2, 12)]
    # the stage hands memorisation the run and its step: the 50 trained steps are replayed
    assert "seen_test" in out and "seen_generated cut=0 temperature=1" in out
    assert (run_dir / "eval" / "memorisation.json").exists()
    assert main(["report", str(run_dir)]) == 0
    figs = {p.name for p in (run_dir / "report" / "figures").iterdir()}
    assert {"loss.png", "accuracy.png", "kl_by_position.png"} <= figs
    md = (run_dir / "report" / "report.md").read_text()
    assert "## Definitions" in md and "## Corrupted prompts" in md
    # evaluating again without --corrupt leaves no stale robustness results behind
    assert main([*args, "--cut", "0"]) == 0
    assert not (run_dir / "eval" / "robustness.json").exists()


def test_eval_errors_are_clear(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--cut", "64"]) == 2
    assert "block_size" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "no run directory" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "-n", "0"]) == 2
    assert "at least one" in capsys.readouterr().err
