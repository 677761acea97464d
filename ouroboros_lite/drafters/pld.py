"""Prompt-lookup decoding (`--method pld`): drafts copied from the context itself.

The longest n-gram (2 <= n <= 6) ending the context that occurred earlier in the prompt or output
is found in a ContextIndex; the tokens that followed its most recent occurrence become the draft
chain. Costs no model forward, so it wins on text that repeats its context (summaries, code edits,
RAG answers), and proposes nothing where the context has no such match.
"""

from __future__ import annotations

from ..ngram import ContextIndex
from ..tree import TokenTree
from ..verify import Outcome


class PromptLookupDrafter:
    name = "pld"
    pool = None  # learns no phrases
    runs_draft_model = False
    draft_forwards = 0
    draft_tokens = 0

    def __init__(self, *, min_ngram: int = 2, max_ngram: int = 6, draft_length: int = 8):
        self.index = ContextIndex(min_ngram, max_ngram)
        self.draft_length = draft_length

    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        self.index.reset()

    def close(self) -> None:
        pass  # holds no llama.cpp state

    def propose(self, history: list[int], budget: int) -> TokenTree:
        self.index.sync(history)
        draft, _ = self.index.continuation(history, max_length=min(self.draft_length, budget))
        return TokenTree.chain(draft, "pool")

    def observe(self, outcome: Outcome) -> None:
        pass
