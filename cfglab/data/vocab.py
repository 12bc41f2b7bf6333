"""Token ids: the bridge between a grammar's terminals and the integer tensors models read.

Layout (the authors' ids for the cfg3 family; BOS=0 as in both public reproductions)::

    0          BOS   begins every string
    1 .. T     the grammar's terminals, in `grammar.terminals` order ('1'..'3' -> 1..3 for cfg3*)
    T+1        EOS   ends every string (the authors' eos_token)
    T+2        MASK  the masked-LM objective's mask (the authors' mask_token)
    T+3        PAD   fills windows in a batch; never a training target

A terminal symbol `s` of the grammar (an int >= grammar.n_nt) has token id `s - n_nt + 1`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cfglab.errors import VocabError
from cfglab.grammar.cfg import Grammar

BOS = 0


@dataclass(frozen=True)
class Vocab:
    terminals: tuple[str, ...]

    @classmethod
    def from_grammar(cls, grammar: Grammar) -> Vocab:
        return cls(grammar.terminals)

    @staticmethod
    def special_ids(size: int) -> dict[str, int]:
        """The special tokens' ids in a vocabulary of `size` ids (the layout above)."""
        return {"bos": BOS, "eos": size - 3, "mask": size - 2, "pad": size - 1}

    @property
    def bos(self) -> int:
        return BOS

    @property
    def eos(self) -> int:
        return len(self.terminals) + 1

    @property
    def mask(self) -> int:
        return len(self.terminals) + 2

    @property
    def pad(self) -> int:
        return len(self.terminals) + 3

    @property
    def size(self) -> int:
        return len(self.terminals) + 4

    def token_names(self) -> list[str]:
        return ["<bos>", *self.terminals, "<eos>", "<mask>", "<pad>"]

    def encode(self, tokens: Iterable[str], where: str = "") -> np.ndarray:
        """Terminal names -> ids (int64). An unknown token is a VocabError naming it."""
        index = self.index
        out = []
        for i, tok in enumerate(tokens):
            tid = index.get(tok)
            if tid is None:
                known = " ".join(self.terminals[:20]) + (" ..." if len(self.terminals) > 20 else "")
                raise VocabError(
                    f"{where}unknown token {tok!r} at position {i + 1}: the grammar's "
                    f"terminals are {known}; separate tokens by spaces"
                )
            out.append(tid)
        return np.asarray(out, dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
        names = self.token_names()
        return [names[int(i)] for i in ids]

    @cached_property
    def index(self) -> dict[str, int]:
        """Terminal name -> token id (built once: encoding a file looks up every token)."""
        return {t: i + 1 for i, t in enumerate(self.terminals)}
