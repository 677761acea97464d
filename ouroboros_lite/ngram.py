"""Context lookup: what followed the most recent earlier occurrence of the last n tokens.

A drafter that copies from the context (prompt lookup, Ouroboros) asks this index for a
continuation. It keeps, for every n-gram of the generation's tokens with min_n <= n <= max_n, the
position right after its most recent occurrence, so a lookup costs max_n - min_n + 1 dictionary
probes however long the context is.

Why min_n defaults to 2: a match on the last token alone is a weak signal. On the test pair's
Spec-Bench outputs (39 prompts x 128 tokens), copying after one-token matches made prompt lookup
a net loss on a CPU, where every extra batch token costs; requiring two matching tokens and
copying n + 2 tokens after an n-token match was the best rule of those tried
(benchmarks/lookup_oracle.py replays the choices offline).
"""

from __future__ import annotations


class ContextIndex:
    def __init__(self, min_n: int = 2, max_n: int = 6):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n (got {min_n}, {max_n})")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}

    def reset(self) -> None:
        self.tokens = []
        self._after = {}

    def sync(self, tokens: list[int]) -> None:
        """Index `tokens`, which extends what was indexed before (otherwise start over)."""
        known = len(self.tokens)
        if tokens[:known] != self.tokens:
            self.reset()
            known = 0
        self.tokens.extend(tokens[known:])
        for end in range(max(known, 1), len(self.tokens)):  # an n-gram ending before `end` is followed by it
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._after[tuple(self.tokens[end - n:end])] = end

    def continuation(self, tail: list[int], *, max_length: int, extra: int = 2) -> tuple[list[int], int]:
        """(tokens, n): up to min(max_length, n + extra) tokens that followed the longest n-gram
        ending `tail` seen before; ([], 0) when even min_n tokens never occurred."""
        for n in range(min(self.max_n, len(tail)), self.min_n - 1, -1):
            start = self._after.get(tuple(tail[-n:]))
            if start is not None:
                return self.tokens[start:start + min(max_length, n + extra)], n
        return [], 0
