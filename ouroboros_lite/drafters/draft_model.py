"""Classic speculative decoding (`--method sd`): a small model drafts a greedy chain.

The draft context is kept in step with the accepted text: after each verification it is rolled
back to the accepted prefix, and the next proposal first feeds the tokens it has not seen (the
rest of the accepted ones and the target's token). A TreeVerifier on the draft context does the
chain decoding and keeps track of the cached tokens (only its chain calls are used).

Draft length gamma adapts online, as HF's assisted generation does: +2 after a fully accepted
draft, -1 after a rejection, within [1, max_draft].

When the target samples (temperature > 0), the draft samples too, from its own distribution q
under the same sampling parameters, and hands q to the verifier with each token: speculative
sampling then accepts with min(1, p/q) (acceptance.py), which beats a greedy draft's p(token).
"""

from __future__ import annotations

import numpy as np

from ..backend import Context, Model
from ..sampling import Sampler
from ..tree import TokenTree
from ..verify import Outcome, TreeVerifier


class DraftModelDrafter:
    name = "sd"
    runs_draft_model = True

    def __init__(self, model: Model, *, n_ctx: int, options):
        self.model = model
        self.context = Context(model, n_ctx=n_ctx, n_batch=options.n_batch, n_seq_max=1, threads=options.threads,
                               flash_attn=options.flash_attn, kv_type=options.kv_type)
        self.verifier = TreeVerifier(self.context, max_nodes=0, max_paths=1)
        self.max_draft = max(1, options.max_draft)
        self.gamma = min(4, self.max_draft)
        self.draft_forwards = self.draft_tokens = 0
        self._n_cached = 0  # history tokens in the draft KV cache
        self._sampler: Sampler | None = None
        self._drafted: list[int] = []

    def begin(self, prompt: list[int], sampler: Sampler | None = None) -> None:
        """Prefill the draft with the prompt but its last token (the first root), reusing the
        prefix its KV cache already holds (earlier chat turns)."""
        self._sampler = None if sampler is None or sampler.params.plain_greedy else sampler
        self.gamma = min(4, self.max_draft)  # the same seed must give the same drafts, hence the same text
        keep = self.verifier.reuse_prefix(prompt[:-1], leave_one=False)
        if len(prompt) - 1 > keep:
            self._decode(prompt[keep:-1], keep)
        self._n_cached = len(prompt) - 1
        self.draft_forwards = self.draft_tokens = 0  # count drafting only, not the prefill

    def _decode(self, tokens: list[int], pos: int) -> int:
        self.draft_forwards += 1
        self.draft_tokens += len(tokens)
        return self.verifier.prefill(tokens, pos)

    def _next_token(self, greedy: int, history: list[int], drafted: list[int],
                    probs: dict[int, np.ndarray]) -> int:
        """The greedy token, or a sample from the draft's q (recorded for the verifier)."""
        if self._sampler is None:
            return greedy
        q = self._sampler.probabilities(self.verifier.logits_last(), [*history, *drafted])
        token = self._sampler.draw(q)
        probs[len(drafted)] = q
        return token

    def propose(self, history: list[int], budget: int) -> TokenTree:
        # the last drafted token is not decoded: the chain's decodes end at len(history) + n - 2
        n = min(self.gamma, budget, self.context.n_ctx - len(history) + 1)
        self._drafted = []
        if n <= 0:
            return TokenTree()
        probs: dict[int, np.ndarray] = {}
        drafted: list[int] = []
        token = self._next_token(self._decode(history[self._n_cached:], self._n_cached), history, drafted, probs)
        self._n_cached = len(history)
        drafted.append(token)
        while len(drafted) < n and not self.model.is_end_of_generation(token):
            greedy = self._decode([token], len(history) + len(drafted) - 1)
            token = self._next_token(greedy, history, drafted, probs)
            drafted.append(token)
        self._drafted = drafted
        return TokenTree.chain(drafted, "draft", draft_probs=probs)

    def observe(self, outcome: Outcome) -> None:
        if not self._drafted:
            return
        accepted = len(outcome.accepted)
        # The KV holds history + drafted[:-1]; keep history + the accepted drafts.
        keep = self._n_cached + min(accepted, len(self._drafted) - 1)
        self.verifier.rollback(keep)
        self._n_cached = keep
        if accepted == len(self._drafted):
            self.gamma = min(self.max_draft, self.gamma + 2)
        else:
            self.gamma = max(1, self.gamma - 1)

    def close(self) -> None:
        self.verifier.close()
        self.context.close()
