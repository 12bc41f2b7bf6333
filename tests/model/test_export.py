"""Hugging Face export gives the same logits (abs -> GPT-2, rot -> GPT-NeoX); needs the `hf`
extra, so it is skipped where transformers is not installed."""

from __future__ import annotations

import pytest
import torch

from cfglab.errors import ConfigError

from .conftest import VOCAB, tiny

pytest.importorskip("transformers")
from cfglab.model.export import EXPORTERS, export_hf, to_hf  # noqa: E402


@pytest.mark.parametrize("name,kw", [("abs", {}), ("rot", {}), ("rot", {"rotary_fraction": 0.25})])
def test_exported_model_gives_the_same_logits(name, kw):
    assert name in EXPORTERS
    model = tiny(name, n_embd=64, **kw)  # head dim 16: a quarter rotates 4 dims
    x = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    hf = to_hf(model)
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_export_writes_a_loadable_directory(tmp_path):
    import transformers

    model = tiny("abs")
    out = export_hf(model, tmp_path / "hf")
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x), rtol=1e-4, atol=1e-4)


def test_unsupported_variants_are_config_errors():
    with pytest.raises(ConfigError, match="no Hugging Face export for position 'rel'"):
        to_hf(tiny("rel"))
    with pytest.raises(ConfigError, match="causal"):
        to_hf(tiny("abs", causal=False))


@pytest.mark.parametrize("name", ["abs", "rot"])
def test_generate_stops_at_cfglabs_eos(name):
    """A planted model that always predicts EOS: Hugging Face's greedy generate() stops after
    one token with no extra argument (it reads the ids from the exported config; GPT-2's own
    eos id, 50256, lies outside the vocabulary and never stops it)."""
    from cfglab.data.vocab import Vocab

    model = tiny(name)
    eos = Vocab.special_ids(VOCAB)["eos"]
    with torch.no_grad():
        model.ln_final.weight.zero_()
        model.ln_final.bias.zero_()
        model.ln_final.bias[0] = 1.0  # every final state is e_0 ...
        model.unembed.weight.zero_()
        model.unembed.weight[eos, 0] = 10.0  # ... and e_0 reads as EOS
    hf = to_hf(model)
    assert (hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id) == (
        0,
        eos,
        VOCAB - 1,
    )
    out = hf.generate(torch.tensor([[0]]), max_new_tokens=10, do_sample=False)
    assert out.tolist() == [[0, eos]]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pathlib import Path

    from cfglab import cli

    out = tmp_path_factory.mktemp("export") / "run"
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    argv = ["train", str(quickstart), "--no-progress", "--out", str(out), "--set"]
    sets = ["model.preset=tiny", "model.position=abs", "model.block_size=48"]
    sets += ["train.batch_size=4", "train.max_steps=3", "train.threads=1"]
    assert cli.main(argv + sets) == 0
    return out


def test_cfglab_export_writes_a_folder_transformers_reads(trained_run, tmp_path):
    import transformers

    from cfglab import cli, rundir
    from cfglab.data.vocab import Vocab
    from cfglab.train.checkpoint import load_model

    assert cli.main(["export", str(trained_run), "-o", str(tmp_path / "hf")]) == 0
    model, cfg = load_model(trained_run)
    grammar = rundir.read_run_grammar(trained_run, cfg.grammar.name)
    vocab = Vocab.from_grammar(grammar)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    string = list(grammar.terminals[:3]) + [grammar.terminals[0]]
    ids = tok(" ".join(string))["input_ids"]
    assert ids == [vocab.bos, *vocab.encode(string).tolist()]  # BOS prepended, names -> ids
    assert tok.decode(ids[1:]) == " ".join(string)
    assert (tok.eos_token_id, tok.pad_token_id) == (vocab.eos, vocab.pad)
    assert hf.generation_config.eos_token_id == vocab.eos
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-4)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert cfg.grammar.name in card and f"{vocab.eos} `<eos>`" in card
    assert (tmp_path / "hf" / "grammar.cfg").read_text() == grammar.to_text()


def test_cfglab_export_refuses_before_any_write(trained_run, tmp_path, capsys):
    from cfglab import cli

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    assert cli.main(["export", str(trained_run), "-o", str(taken)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    assert cli.main(["export", str(tmp_path / "no_run"), "-o", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cfglab: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_tokenizer_refuses_a_word_that_is_not_a_terminal():
    """No unknown-token id (the model has none): an unknown word is an error, not <pad> or any
    other id the model would read as a real token."""
    from cfglab.data.vocab import Vocab
    from cfglab.model.export import hf_tokenizer

    vocab = Vocab(("a", "b"))
    tok = hf_tokenizer(vocab)
    assert tok("a b a")["input_ids"] == [vocab.bos, 1, 2, 1]
    assert tok.unk_token is None
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):
        tok("a zz b")
