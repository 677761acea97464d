"""The drafter interface: every method (ar, sd, ...) proposes a token tree and learns from the outcome.

A drafter never touches the target context; one that runs a draft model owns that context and
keeps it in step with the accepted tokens.
"""

from __future__ import annotations

from typing import Protocol

from ..pool import PhrasePool
from ..tree import TokenTree
from ..verify import Outcome


class Drafter(Protocol):
    name: str
    runs_draft_model: bool  # whether proposing may cost draft-model forwards
    draft_forwards: int  # draft-model forwards so far in this generation
    draft_tokens: int  # tokens those forwards processed (batch widths summed)
    pool: PhrasePool | None  # the phrase pool it learns into and drafts from (None: it keeps none)

    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        """A new generation starts from `prompt` (all tokens, the last one is the first root); its
        cycles will emit at most `max_tokens` tokens (None: unknown).

        sampler: the generation's draft-side random stream when it samples (temperature > 0). A
        drafter that samples its tokens from a distribution q must record q in
        TokenTree.draft_probs; one that ignores it proposes fixed tokens (see acceptance.py)."""

    def propose(self, history: list[int], budget: int) -> TokenTree:
        """A tree of guesses for the tokens after history[-1], at most `budget` nodes.

        An empty tree is a normal answer: the cycle is then a plain target step."""

    def observe(self, outcome: Outcome) -> None:
        """What the target accepted; used to roll back draft state and tune."""

    def close(self) -> None:
        """Free what the drafter holds (a draft model's context)."""


class NoDraft:
    """Target-only decoding (`--method ar`): the baseline every speed-up is measured against."""

    name = "ar"
    runs_draft_model = False
    draft_forwards = 0
    draft_tokens = 0
    pool = None

    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass  # holds no llama.cpp state

    def propose(self, history: list[int], budget: int) -> TokenTree:
        return TokenTree()

    def observe(self, outcome: Outcome) -> None:
        pass
