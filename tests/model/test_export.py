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
