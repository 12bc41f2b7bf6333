"""`cfglab export RUN -o DIR`: a trained run as a Hugging Face folder (cfglab.model.export), with
a model card that names the run, its grammar and its token ids."""

from __future__ import annotations

from pathlib import Path

from cfglab import rundir


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """The run's latest checkpoint, its grammar and a model card -> out_dir (new or empty)."""
    from cfglab.data.vocab import Vocab
    from cfglab.model.export import export_folder
    from cfglab.train.checkpoint import load_model

    model, cfg = load_model(run_dir)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    card = model_card(Path(run_dir), cfg, Vocab.from_grammar(grammar), rundir.latest_step(run_dir))
    return export_folder(model, grammar, out_dir, card)


def model_card(run_dir: Path, cfg, vocab, step: int | None) -> str:
    m = cfg.model
    t = len(vocab.terminals)
    return (
        f"# {run_dir.name}: a cfglab run exported to Hugging Face\n\n"
        f"A `{m.position}` GPT ({m.n_layer} layers, {m.n_head} heads, {m.n_embd} dims) trained "
        f"by cfglab for {step} steps on the context-free grammar `{cfg.grammar.name}` "
        f"(`grammar.cfg`, NLTK syntax; {t} terminals), from the run `{run_dir}`.\n\n"
        f"Token ids: 0 `<bos>`; 1..{t} the terminals, in `grammar.cfg`'s order; {vocab.eos} "
        f"`<eos>`; {vocab.mask} `<mask>`; {vocab.pad} `<pad>`. A string is its terminals "
        "separated by spaces; the tokenizer prepends `<bos>`, and `generate()` stops at "
        "`<eos>`.\n\n"
        "Exact next-token distributions of the grammar, to compare the model with: "
        "`cfglab prob --next grammar.cfg FILE`.\n"
    )
