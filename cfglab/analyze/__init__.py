"""Stage 6b: what a trained model holds inside (linear probes, attention-pattern statistics).

`probe.py` asks whether hidden states linearly encode the parse tree (the NT ancestor of every
token at every level, and the NT boundaries); `attention.py` measures position-based and
boundary-based attention. Both read activations only through the TransformerLens hook names of
`cfglab.model.hooks`, and write `analyze/*.json` in a run directory.
"""
