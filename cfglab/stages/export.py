"""`cfglab export RUN --to hf|transformer-lens -o DIR`: a trained run as a Hugging Face or a
TransformerLens folder (cfglab.model.export), with a model card that names the run, its grammar,
its token ids and how to load it."""

from __future__ import annotations

from pathlib import Path

from cfglab import rundir

HF_LOAD = (
    "Load it with `transformers.AutoModelForCausalLM.from_pretrained(DIR)` and "
    "`AutoTokenizer.from_pretrained(DIR)`. A string is its terminals separated by spaces; the "
    "tokenizer prepends `<bos>` and refuses a word that is not a terminal (there is no unknown "
    "token), and `generate()` stops at `<eos>`."
)
TL_LOAD = (
    "`model.safetensors` is a TransformerLens 3.x `HookedTransformer`'s state dict and "
    "`config.json` its `HookedTransformerConfig` arguments:\n\n"
    "```python\n"
    "import json\n\n"
    "from safetensors.torch import load_file\n"
    "from transformer_lens import HookedTransformer, HookedTransformerConfig\n\n"
    'config = HookedTransformerConfig(**json.load(open("DIR/config.json")))\n'
    "model = HookedTransformer(config)\n"
    'model.load_state_dict(load_file("DIR/model.safetensors"))\n'
    "```\n\n"
    "Its inputs are token ids (no tokenizer): `<bos>` first, then the terminals' ids."
)
# --to value -> (the model.export writer's name, the card's name of the format, how to load)
FORMATS: dict[str, tuple[str, str, str]] = {
    "hf": ("export_folder", "Hugging Face", HF_LOAD),
    "transformer-lens": ("export_tl_folder", "TransformerLens", TL_LOAD),
}


def export_run(run_dir: str | Path, out_dir: str | Path, to: str = "hf") -> Path:
    """The run's latest checkpoint, its grammar and a model card -> out_dir (new or empty), in
    the format `to` (a FORMATS key)."""
    from cfglab.data.vocab import Vocab
    from cfglab.model import export
    from cfglab.train.checkpoint import load_model

    writer, _, _ = FORMATS[to]
    if rundir.read_run_config(run_dir).data.metadata.levels:
        from cfglab.errors import CfglabError

        raise CfglabError(
            f"{run_dir} was trained with data.metadata: its metadata tokens (ids after <pad>) "
            "have no place in an exported tokenizer or model card yet; export a run trained "
            "without metadata"
        )
    model, cfg = load_model(run_dir)
    grammar = rundir.read_run_grammar(run_dir, cfg.grammar.name)
    vocab = Vocab.from_grammar(grammar)
    card = model_card(Path(run_dir), cfg, vocab, rundir.latest_step(run_dir), to)
    return getattr(export, writer)(model, grammar, out_dir, card)


def model_card(run_dir: Path, cfg, vocab, step: int | None, to: str = "hf") -> str:
    m = cfg.model
    t = len(vocab.terminals)
    _, name, load = FORMATS[to]
    from cfglab.languages import is_language_spec

    language = "context-free grammar", "NLTK syntax"
    if is_language_spec(cfg.grammar.name):
        language = "language beyond context-free", "cfglab.languages spec"
    return (
        f"# {run_dir.name}: a cfglab run exported to {name}\n\n"
        f"A `{m.position}` GPT ({m.n_layer} layers, {m.n_head} heads, {m.n_embd} dims) trained "
        f"by cfglab for {step} steps on the {language[0]} `{cfg.grammar.name}` "
        f"(`grammar.cfg`, {language[1]}; {t} terminals), from the run `{run_dir}`.\n\n"
        f"Token ids: 0 `<bos>`; 1..{t} the terminals, in `grammar.cfg`'s order; {vocab.eos} "
        f"`<eos>`; {vocab.mask} `<mask>`; {vocab.pad} `<pad>`.\n\n"
        f"{load}\n\n"
        "Exact next-token distributions of the grammar, to compare the model with: "
        "`cfglab prob --next grammar.cfg FILE`.\n"
    )
