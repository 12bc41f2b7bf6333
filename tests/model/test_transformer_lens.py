"""The TransformerLens export computes what cfglab computes: equal logits and, under every hook
name cfglab has (all of them are TransformerLens names), equal activations; the variants it
cannot express are refused; `cfglab export --to transformer-lens` writes a folder that
TransformerLens loads back (no pickle). Needs the `interp` extra; skipped without it."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cfglab.errors import ConfigError
from cfglab.model import POSITIONS, GPTConfig, build_model
from cfglab.model.hooks import hook_names, run_with_cache

from .conftest import VOCAB, tiny

pytest.importorskip("transformer_lens")
from cfglab.model.export_tl import TL_POSITIONS, to_transformer_lens  # noqa: E402

CASES = [
    ("abs", {}),
    ("nope", {}),
    ("rot", {}),
    ("rot", {"rotary_fraction": 0.25, "n_embd": 64, "rotary_base": 500.0}),  # 4 of 16 dims
    ("alibi", {}),  # 4 heads: a power of two
    ("abs", {"causal": False}),
    ("rot", {"causal": False}),
    ("nope", {"bias": False}),
]


def compare(model, ht, x) -> tuple[list[str], dict]:
    """Assert equal logits and equal activations under every cfglab hook name; returns the names
    and both caches."""
    names = hook_names(model)
    ours, cache = run_with_cache(model, x, names)
    theirs, tl_cache = ht.run_with_cache(x)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert set(names) <= set(tl_cache.keys()), "cfglab's hook names are TransformerLens names"
    for name in names:  # ln_final.hook_normalized included: both before the LayerNorm's affine
        torch.testing.assert_close(tl_cache[name], cache[name], rtol=0, atol=1e-5, msg=name)
    return names, (cache, tl_cache)


@pytest.mark.parametrize("position,kw", CASES, ids=[f"{p}-{k}" for p, k in CASES])
def test_same_logits_and_same_activations_under_every_hook(position, kw):
    model = tiny(position, **kw)
    x = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    ht = to_transformer_lens(model)
    names, _ = compare(model, ht, x)
    assert len(names) == 2 + 13 * model.config.n_layer  # q/k/v/z, scores, pattern, ... per block


def test_every_expressible_variant_is_tested():
    assert set(TL_POSITIONS) == {p for p, _ in CASES}


def test_a_wrong_weight_is_caught():
    """The oracle can fail: one head's W_O changed in the export shows in hook_attn_out and the
    logits, while everything before it still agrees."""
    model = tiny("rot")
    ht = to_transformer_lens(model)
    with torch.no_grad():
        ht.blocks[1].attn.W_O[2] += 0.1
    x = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(1))
    with pytest.raises(AssertionError):
        compare(model, ht, x)
    _, cache = run_with_cache(model, x, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    _, tl_cache = ht.run_with_cache(x)
    torch.testing.assert_close(tl_cache["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_z"])
    assert not torch.allclose(tl_cache["blocks.1.hook_attn_out"], cache["blocks.1.hook_attn_out"])


def test_rotary_tables_are_cfglabs():
    """The exported sin/cos tables are cfglab's own, bit for bit (float64 angles, cast):
    TransformerLens's float32 angles differ by up to ~3e-6 over 1024 positions."""
    model = tiny("rot", block_size=1024)
    ht = to_transformer_lens(model)
    r = ht.cfg.rotary_dim
    assert torch.equal(ht.blocks[0].attn.rotary_cos, model.position.cos[:, :r])
    sign = torch.cat([-torch.ones(r // 2), torch.ones(r // 2)])  # cfglab's sin carries it
    assert torch.equal(ht.blocks[1].attn.rotary_sin, model.position.sin[:, :r] * sign)
    x = torch.randint(0, VOCAB, (1, 1024), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ht(x), model(x), rtol=0, atol=1e-5)


REFUSED = [p for p in POSITIONS if p not in TL_POSITIONS]


@pytest.mark.parametrize("position", REFUSED)
def test_inexpressible_variants_are_refused(position):
    with pytest.raises(ConfigError, match=f"no TransformerLens export for position '{position}'"):
        to_transformer_lens(tiny(position))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"family": "lstm"}, "family 'lstm'"),
        ({"family": "ssm"}, "family 'ssm'"),
        ({"canon": "AC"}, "canon 'AC'"),
        ({"position": "alibi", "n_head": 2, "n_embd": 24, "causal": False}, "causal=False"),
        ({"position": "alibi", "n_head": 3, "n_embd": 24}, "n_head=3"),
    ],
)
def test_other_families_canon_and_alibi_shapes_are_refused(kw, match):
    kw = {"position": "rot", "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16, **kw}
    model = build_model(GPTConfig(vocab_size=VOCAB, **kw))
    with pytest.raises(ConfigError, match=match):
        to_transformer_lens(model)


def train_tiny(out: Path, position: str) -> Path:
    """A run of 3 steps of a tiny model on the quickstart grammar (under a second)."""
    from cfglab import cli

    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    argv = ["train", str(quickstart), "--no-progress", "--out", str(out), "--set"]
    sets = ["model.preset=tiny", f"model.position={position}", "model.block_size=48"]
    sets += ["train.batch_size=4", "train.max_steps=3", "train.threads=1"]
    assert cli.main(argv + sets) == 0
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("tl") / "run", "rot")


def test_cfglab_export_writes_a_folder_transformer_lens_loads(trained_run, tmp_path):
    """The README's loading recipe, on the written folder: same logits as the run's model."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from cfglab import cli, rundir
    from cfglab.train.checkpoint import load_model

    out = tmp_path / "tl"
    argv = ["export", str(trained_run), "--to", "transformer-lens", "-o", str(out)]
    assert cli.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "grammar.cfg",
        "model.safetensors",
    ]
    config = HookedTransformerConfig(**json.loads((out / "config.json").read_text()))
    with pytest.warns(DeprecationWarning, match="removed in 4.0"):  # why the extra pins < 4
        ht = HookedTransformer(config)
    ht.load_state_dict(load_file(out / "model.safetensors"))  # strict: every key, no extra
    model, cfg = load_model(trained_run)
    x = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator())
    with torch.no_grad():
        torch.testing.assert_close(ht(x), model(x), rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "exported to TransformerLens" in card and "HookedTransformerConfig" in card
    grammar = rundir.read_run_grammar(trained_run, cfg.grammar.name)
    assert (out / "grammar.cfg").read_text() == grammar.to_text()


def test_cfglab_export_refuses_before_any_write(trained_run, tmp_path, capsys):
    from cfglab import cli

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    argv = ["export", str(trained_run), "--to", "transformer-lens", "-o"]
    assert cli.main([*argv, str(taken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and "is not an empty folder" in err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert cli.main(["export", str(trained_run), "--to", "onnx", "-o", str(tmp_path / "x")]) == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    rel = train_tiny(tmp_path / "rel", "rel")
    assert cli.main([*argv, str(tmp_path / "y")]) == 0  # the same command exports rot ...
    assert (
        cli.main(["export", str(rel), "--to", "transformer-lens", "-o", str(tmp_path / "z")]) == 2
    )
    err = capsys.readouterr().err  # ... and refuses rel, naming why, with nothing written
    assert err.startswith("cfglab: error: no TransformerLens export for position 'rel'")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z").exists()


def _small_disk() -> None:
    """In the child: files may not grow past 4 KB (EFBIG, as a full disk gives ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.slow  # a fresh process that imports TransformerLens (~5 s)
def test_an_export_on_a_disk_that_fills_leaves_nothing_behind(trained_run, tmp_path):
    out = tmp_path / "exports"
    out.mkdir()
    argv = ["export", str(trained_run), "--to", "transformer-lens", "-o", str(out / "tl")]
    result = subprocess.run(
        [sys.executable, "-m", "cfglab", *argv],
        capture_output=True,
        text=True,
        preexec_fn=_small_disk,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("cfglab: error: cannot write "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert list(out.iterdir()) == []  # the folder being written is removed
