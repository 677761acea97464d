"""A draft model's own context, kept in step with the text the target accepted (sd and ouroboros).

Its KV cache holds the accepted text, less the newest tokens (which `catch_up` feeds in one batch
before the next draft), plus whatever the last draft decoded past it (which `keep` drops after each
verification). Until the first draft of a generation it may hold only part of the prompt
(`prefill_prompt` feeds the rest then). The verifier's `cached` tokens are the one record of what it holds.
"""

from __future__ import annotations

import time

from ..backend import Context, Model
from ..sampling import Sampler
from ..tree import TokenTree
from ..verify import Outcome, TreeVerifier

PREFILL_SAMPLE = 16  # prompt tokens per sample that times the draft's prefill before it is first asked for


class DraftContext:
    def __init__(self, model: Model, *, n_ctx: int, n_batch: int, threads: int, flash_attn: bool | None,
                 kv_type: str, max_nodes: int = 0, max_paths: int = 1):
        self.model = model
        self.context = Context(model, n_ctx=n_ctx, n_batch=n_batch, n_seq_max=max_paths, threads=threads,
                               flash_attn=flash_attn, kv_type=kv_type)
        self.verifier = TreeVerifier(self.context, max_nodes=max_nodes, max_paths=max_paths)
        self.forwards = self.tokens = 0  # draft forwards of this generation and the tokens they processed
        self._prompt: list[int] = []  # the prompt but its last token; what the KV lacks of it is fed on first use
        self._prompt_seconds_per_token = 0.0
        self._warm_up()

    def _warm_up(self) -> None:
        """Decode one token and forget it, as llama.cpp's tools do after loading: a context's first
        decode pays its one-time set-up (and the weights' first touch), which would otherwise land
        in the timing sample of `prompt_seconds_estimate`, inside a generation."""
        self.verifier.prefill([0], 0)
        self.verifier.reset()

    @property
    def n_ctx(self) -> int:
        return self.context.n_ctx

    @property
    def n_cached(self) -> int:
        return len(self.verifier.cached)

    def begin(self, prompt: list[int]) -> None:
        """Keep the prefix of the prompt the KV already holds (earlier chat turns) and note the rest,
        which `prefill_prompt` feeds when the draft is first asked for a draft: a generation whose
        speed gate never drafts never pays for it (on the Qwen pair, 2 CPU cores, the draft's prompt
        prefill cost 12 % of a 128-token HumanEval generation that then took plain steps only)."""
        self._prompt = prompt[:-1]
        self.verifier.reuse_prefix(self._prompt, leave_one=False)
        self.forwards = self.tokens = 0

    def prompt_seconds_estimate(self) -> float:
        """What `prefill_prompt` would cost now, at the rate its last prefill ran. Before any was
        timed, a sample of `PREFILL_SAMPLE` tokens it lacks is prefilled now and timed (the context's
        set-up was paid at load, `_warm_up`). It is what the prefill would feed first, so nothing is
        decoded twice. On the Qwen pair, 2 cores, a sample cost 0.21-0.23 s, and a second one after a
        cold first (what this did before the warm-up) as much again; the warm-up costs ~40 ms at load."""
        if not self._prompt_seconds_per_token:
            self.prefill_prompt(limit=PREFILL_SAMPLE)
        return max(0, len(self._prompt) - self.n_cached) * self._prompt_seconds_per_token

    def prefill_prompt(self, limit: int | None = None) -> None:
        """Feed what the KV lacks of the prompt but its last token (at most `limit` tokens of it);
        not counted as drafting. Until then nothing else is decoded, and after it the KV only grows
        past the prompt within a generation, so what it lacks is what it holds short of the prompt's length."""
        pos = self.n_cached
        end = len(self._prompt) if limit is None else min(len(self._prompt), pos + limit)
        if pos < end:
            started = time.perf_counter()
            self.verifier.prefill(self._prompt[pos:end], pos)
            self._prompt_seconds_per_token = (time.perf_counter() - started) / (end - pos)

    def decode(self, tokens: list[int], pos: int) -> int:
        """Decode tokens at pos.. in one forward; returns the draft's greedy next token."""
        self.forwards += 1
        self.tokens += len(tokens)
        return self.verifier.prefill(tokens, pos)

    def catch_up(self, history: list[int]) -> int:
        """Feed the accepted tokens the KV has not seen (at least the target's newest) in one forward;
        returns the draft's greedy token after history."""
        self.prefill_prompt()
        return self.decode(history[self.n_cached:], self.n_cached)

    def verify(self, root: int, pos: int, tree: TokenTree, sampler: Sampler | None,
               history: list[int]) -> Outcome:
        """One forward over root + a tree of guesses (phrase drafting), committed like the target's."""
        self.forwards += 1
        self.tokens += 1 + len(tree)
        return self.verifier.verify(root, pos, tree, sampler, history)

    def keep(self, n: int) -> None:
        """Drop what the KV holds past its first n tokens (a rejected draft)."""
        if n < self.n_cached:
            self.verifier.rollback(n)

    def close(self) -> None:
        self.verifier.close()
        self.context.close()


def next_draft_length(length: int, fully_accepted: bool, longest: int) -> int:
    """Draft length gamma adapts online, as HF's assisted generation does: +2 after a fully accepted
    draft, -1 after a rejection, within [1, longest]."""
    return min(longest, length + 2) if fully_accepted else max(1, length - 1)
