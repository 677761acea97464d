"""Classic speculative decoding (`--method sd`): a small model drafts a greedy chain.

The draft context is kept in step with the accepted text: after each verification it is rolled
back to the accepted prefix (ouro_rollback), and the next proposal first feeds the tokens it has
not seen (the rest of the accepted ones and the target's token).

Draft length gamma adapts online, as HF's assisted generation does: +2 after a fully accepted
draft, -1 after a rejection, within [1, max_draft].
"""

from __future__ import annotations

from .. import native
from ..backend import Context, Model
from ..tree import TokenTree
from ..verify import Outcome


class DraftModelDrafter:
    name = "sd"

    def __init__(self, model: Model, *, n_ctx: int, options):
        self.model = model
        self.context = Context(model, n_ctx=n_ctx, n_batch=options.n_batch, n_seq_max=1, threads=options.threads,
                               flash_attn=options.flash_attn, kv_type=options.kv_type)
        self._ctx = native.context_pointer(self.context.handle)
        self.max_draft = max(1, options.max_draft)
        self.gamma = min(4, self.max_draft)
        self.draft_forwards = self.draft_tokens = 0
        self._n_cached = 0  # history tokens in the draft KV cache
        self._drafted: list[int] = []
        self._next = native.ffi.new("int32_t *")
        self._rc = native.ffi.new("int32_t *")

    def begin(self, prompt: list[int]) -> None:
        """Prefill the draft with the prompt but its last token (the first root)."""
        self.context.clear()
        self._n_cached = 0
        if len(prompt) > 1:
            self._decode(prompt[:-1], 0)
            self._n_cached = len(prompt) - 1
        self.draft_forwards = self.draft_tokens = 0  # count drafting only, not the prefill

    def _decode(self, tokens: list[int], pos: int) -> int:
        code = native.lib.ouro_decode_chain(self._ctx, tokens, len(tokens), pos, 0, self._next, self._rc)
        native.check(code, f"draft llama_decode returned {self._rc[0]}" if code == -8 else "")
        self.draft_forwards += 1
        self.draft_tokens += len(tokens)
        return int(self._next[0])

    def propose(self, history: list[int], budget: int) -> TokenTree:
        n = min(self.gamma, budget)
        self._drafted = []
        if n <= 0:
            return TokenTree()
        token = self._decode(history[self._n_cached:], self._n_cached)
        self._n_cached = len(history)
        drafted = [token]
        while len(drafted) < n and not self.model.is_end_of_generation(token):
            token = self._decode([token], len(history) + len(drafted) - 1)
            drafted.append(token)
        self._drafted = drafted
        return TokenTree(tuple(drafted), tuple(range(-1, len(drafted) - 1)), ("draft",) * len(drafted))

    def observe(self, outcome: Outcome) -> None:
        if not self._drafted:
            return
        accepted = len(outcome.accepted)
        # The KV holds history + drafted[:-1]; keep history + the accepted drafts.
        keep = self._n_cached + min(accepted, len(self._drafted) - 1)
        native.lib.ouro_rollback(self._ctx, keep)
        self._n_cached = keep
        if accepted == len(self._drafted):
            self.gamma = min(self.max_draft, self.gamma + 2)
        else:
            self.gamma = max(1, self.gamma - 1)

    def close(self) -> None:
        self.context.close()
