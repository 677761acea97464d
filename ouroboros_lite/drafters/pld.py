"""Prompt-lookup decoding (`--method pld`): drafts copied from the context itself.

The last n tokens (n = max_ngram down to 1) are searched for earlier in the prompt and output; the
tokens that followed the most recent earlier occurrence become the draft chain. Costs no model
forward, so it wins on text that repeats its context (summaries, code edits, RAG answers).
"""

from __future__ import annotations

from ..tree import TokenTree
from ..verify import Outcome


def lookup_continuation(history: list[int], max_ngram: int, length: int) -> list[int]:
    """Tokens that followed the most recent earlier occurrence of history's last n-gram."""
    for n in range(min(max_ngram, len(history) - 1), 0, -1):
        tail = history[-n:]
        for start in range(len(history) - n - 1, -1, -1):
            if history[start:start + n] == tail:
                follow = history[start + n:start + n + length]
                if follow:
                    return follow
    return []


class PromptLookupDrafter:
    name = "pld"
    draft_forwards = 0
    draft_tokens = 0

    def __init__(self, *, max_ngram: int = 3, draft_length: int = 8):
        self.max_ngram = max_ngram
        self.draft_length = draft_length

    def begin(self, prompt: list[int], sampler=None) -> None:
        pass

    def propose(self, history: list[int], budget: int) -> TokenTree:
        draft = lookup_continuation(history, self.max_ngram, min(self.draft_length, budget))
        return TokenTree(tuple(draft), tuple(range(-1, len(draft) - 1)), ("pool",) * len(draft))

    def observe(self, outcome: Outcome) -> None:
        pass
