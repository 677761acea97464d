"""Classic speculative decoding (`--method sd`): a small model drafts a greedy chain.

The draft's context (draft_context.DraftContext) is kept in step with the accepted text: after each
verification it is rolled back to the accepted prefix, and the next proposal first feeds the tokens
it has not seen (the rest of the accepted ones and the target's token).

Draft length gamma adapts online (draft_context.next_draft_length).

When the target samples (temperature > 0), the draft samples too, from its own distribution q
under the same sampling parameters, and hands q to the verifier with each token: speculative
sampling then accepts with min(1, p/q) (acceptance.py), which beats a greedy draft's p(token).
"""

from __future__ import annotations

import numpy as np

from ..backend import Model
from ..sampling import Sampler
from ..tree import TokenTree
from ..verify import Outcome
from .draft_context import DraftContext, next_draft_length


class DraftModelDrafter:
    name = "sd"
    pool = None  # learns no phrases
    runs_draft_model = True

    def __init__(self, model: Model, *, n_ctx: int, options):
        self.model = model
        self.draft = DraftContext(model, n_ctx=n_ctx, n_batch=options.n_batch, threads=options.threads,
                                  flash_attn=options.flash_attn, kv_type=options.kv_type)
        self.verifier = self.draft.verifier
        self.max_draft = max(1, options.max_draft)
        self.gamma = min(4, self.max_draft)
        self._sampler: Sampler | None = None
        self._history_length = 0
        self._drafted: list[int] = []

    @property
    def draft_forwards(self) -> int:
        return self.draft.forwards

    @property
    def draft_tokens(self) -> int:
        return self.draft.tokens

    def begin(self, prompt: list[int], sampler: Sampler | None = None, max_tokens: int | None = None) -> None:
        self._sampler = None if sampler is None or sampler.params.plain_greedy else sampler
        self.gamma = min(4, self.max_draft)  # the same seed must give the same drafts, hence the same text
        self.draft.begin(prompt)

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
        n = min(self.gamma, budget, self.draft.n_ctx - len(history) + 1)
        self._drafted = []
        if n <= 0:
            return TokenTree()
        probs: dict[int, np.ndarray] = {}
        drafted: list[int] = []
        token = self._next_token(self.draft.catch_up(history), history, drafted, probs)
        self._history_length = len(history)
        drafted.append(token)
        while len(drafted) < n and not self.model.is_end_of_generation(token):
            greedy = self.draft.decode([token], len(history) + len(drafted) - 1)
            token = self._next_token(greedy, history, drafted, probs)
            drafted.append(token)
        self._drafted = drafted
        return TokenTree.chain(drafted, "draft", draft_probs=probs)

    def observe(self, outcome: Outcome) -> None:
        if not self._drafted:
            return
        accepted = len(outcome.accepted)
        # The KV holds history + drafted[:-1]; keep history + the accepted drafts.
        self.draft.keep(self._history_length + min(accepted, len(self._drafted) - 1))
        self.gamma = next_draft_length(self.gamma, accepted == len(self._drafted), self.max_draft)

    def close(self) -> None:
        self.draft.close()
