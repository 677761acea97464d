"""Ouroboros (`--method ouroboros`): phrase-level drafting, draft lengthening, phrases from verification.

One cycle (Zhao et al. 2024, built as ../shared/docs/ouroboros-algorithm.md describes, without the
reference code's bugs):

1. Draft: the draft model continues greedily, but each draft forward also verifies up to G pool
   phrases keyed by its current token and, with W > 0, a Jacobi window (lookahead decoding). It
   yields exactly the draft's greedy tokens, often several per forward.
2. Tree: the draft chain; the K most recent phrases keyed by the last draft token hang after it
   (lengthening); the K most recent phrases keyed by the root hang beside it (they can replace
   a wrong draft). Shared prefixes merge into one trie; the target verifies it in one forward.
   Copy instead of drafting: when the last `copy_match` (3) tokens occurred earlier in the context,
   the tokens that followed them (ngram.ContextIndex) are sent as the chain and the draft model
   does not run that cycle; it catches up on the accepted tokens in one batch next time. On a
   CPU, where the draft's batches cost as much as its single steps, this is the one kind of
   draft that is free; it took the test pair from 1.33x to 1.43x ar (26 Spec-Bench prompts).
3. Learn: rule A (the rejected draft tail with the target's argmaxes there), rule B (the target's
   corrections of the lengthening candidates, inserted with LRU/dedup instead of overwriting slots,
   and only when their context was right), the window's phrases (rule C), and the accepted output.

The pool outlives a generation (warm start); the caller may save it between runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backend import Model
from ..ngram import ContextIndex
from ..pool import PhrasePool
from ..tree import DEFAULT_MAX_PATHS, TokenTree, TreeBuilder
from ..verify import Outcome
from .draft_context import DraftContext, next_draft_length
from .lookahead import JacobiWindow, PhraseHarvester, WindowPlacement


@dataclass(frozen=True)
class OuroborosParams:
    """Hyper-parameters, with the paper's letters."""

    draft_length: int = 4  # gamma: first draft length; adapts within [1, max_draft_length]
    max_draft_length: int = 8
    # Defaults measured best on a 2-core CPU with the test pair (bench sweep in the issue notes):
    # there every extra batch token costs, so draft guesses and a window do not pay.
    window: int = 0  # W: Jacobi columns on the draft (nearly free on a GPU, costly on 2 CPU cores)
    draft_guesses: int = 0  # G: pool phrases the draft verifies per forward
    candidates: int = 1  # K: pool phrases that lengthen (and may replace) the draft
    max_target_nodes: int = 8  # tree size sent to the target per cycle
    # When the last `copy_match` tokens occurred earlier in the context, what followed them is
    # sent instead of a draft: no draft forward that cycle (0: always draft). 3 measured best of
    # 0, 2, 3, 4, 5 on the test pair (2: copies too often wrong; 4, 5: too rarely taken).
    copy_match: int = 3
    # A copy after an n-token match sends up to n + copy_extra tokens (2 measured best on the test pair,
    # whose every extra batch token costs; a flat stretch of the target's curve may pay for longer ones).
    copy_extra: int = 2


class OuroborosDrafter:
    name = "ouroboros"
    runs_draft_model = True

    def __init__(self, model: Model, pool: PhrasePool, *, n_ctx: int, threads: int, params: OuroborosParams,
                 flash_attn: bool | None = None, kv_type: str = "f16", max_paths: int = DEFAULT_MAX_PATHS):
        self.model = model
        self.pool = pool
        self.params = params
        self.max_paths = max_paths  # root-to-leaf paths of a target tree (the target verifier's)
        self.gamma = params.draft_length
        self.window = JacobiWindow(params.window, pool.phrase_length + 1)
        draft_nodes = max(1, params.window * pool.phrase_length + params.draft_guesses * pool.phrase_length)
        self.draft = DraftContext(model, n_ctx=n_ctx, n_batch=512, threads=threads, flash_attn=flash_attn,
                                  kv_type=kv_type, max_nodes=draft_nodes,
                                  max_paths=params.window + params.draft_guesses + 1)
        self.verifier = self.draft.verifier  # the draft's trees (guesses, window) are verified on it
        self.harvester = PhraseHarvester(pool)
        self.context_index = ContextIndex(min_n=max(1, params.copy_match), max_n=max(6, params.copy_match))
        self._history_length = 0
        self.copy_match_length = 0  # tokens the last proposal's context copy matched (0: not a copy)
        self._drafted: list[int] = []
        self._lengthening: list[list[int]] = []
        self._sampler = None

    # --- lifecycle --------------------------------------------------------------------------------
    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        """Ready the draft for the prompt, reusing the prefix its KV holds (the rest is prefilled
        when it first drafts).

        When the target samples, the draft samples with the same keyed uniforms (coupled
        sampling, acceptance.py rule 1): its tokens stay a function of the prefix and the seed,
        so lookahead and pool guesses keep working on the draft and the target's text does not
        depend on them."""
        self._sampler = None if sampler is None or sampler.params.plain_greedy else sampler
        self.draft.begin(prompt)
        self.window.reset(prompt)
        self.harvester.restart()
        self.context_index.reset()

    @property
    def draft_forwards(self) -> int:
        return self.draft.forwards

    @property
    def draft_tokens(self) -> int:
        return self.draft.tokens

    def close(self) -> None:
        self.draft.close()

    def draft_prompt_seconds(self) -> float:
        """What the draft's prompt prefill, still to come this generation, should cost (timed on a
        few of its tokens if it never ran)."""
        return self.draft.prompt_seconds_estimate()

    def prefill_draft_prompt(self) -> None:
        self.draft.prefill_prompt()

    # --- 1 draft ------------------------------------------------------------------------------------
    def _draft(self, history: list[int], length: int) -> list[int]:
        """The draft's greedy continuation of history, >= length tokens, in as few forwards as it can."""
        root, pos = history[-1], len(history) - 1
        drafted: list[int] = []
        if self.draft.n_cached < pos:  # catch up on the accepted tokens and draft the first one in one batch
            first = self.draft.catch_up(history)
            if self._sampler is not None:
                probs = self._sampler.probabilities(self.verifier.logits_last(), history)
                first = self._sampler.draw(probs, position=len(history))
            drafted.append(first)
            root, pos = first, len(history)
        while (len(drafted) < length and pos < self.draft.n_ctx
               and not any(self.model.is_end_of_generation(t) for t in drafted)):
            builder = TreeBuilder(self._room_at(pos), max_paths=self.verifier.max_paths)
            for phrase in self.pool.recent(root, self.params.draft_guesses):
                builder.add(phrase, "pool")
            placement = self.window.place(builder, root) if self.params.window else WindowPlacement()
            tree = builder.build()
            outcome = self.draft.verify(root, pos, tree, self._sampler, [*history, *drafted])
            if placement.tops:
                self.window.learn(placement, outcome.argmax, self.pool)
            drafted.extend(outcome.tokens)
            root, pos = outcome.next_token, pos + len(outcome.tokens)
        return drafted  # the draft's KV now holds history + drafted[:-1]

    def _room_at(self, pos: int) -> int:
        """Nodes a draft tree with its root at pos may have: the draft KV holds pos cells and the
        root takes one more (the draft context is as long as the target's, its trees are wider)."""
        return max(0, min(self.verifier.max_nodes, self.draft.n_ctx - pos - 1))

    # --- 2 tree -------------------------------------------------------------------------------------
    def propose(self, history: list[int], budget: int, *, draft_model: bool = True) -> TokenTree:
        """draft_model=False: only what costs no draft forward (a context copy), else an empty tree."""
        self.harvester.feed(history)
        self._history_length = len(history)
        self._drafted, self._lengthening = [], []
        self.copy_match_length = 0
        budget = min(budget, self.params.max_target_nodes)
        if budget <= 0:
            return TokenTree()
        if self.params.copy_match:
            self.context_index.sync(history)
            copied, matched = self.context_index.continuation(history, max_length=budget,
                                                              extra=self.params.copy_extra)
            if copied:  # the draft catches up on what the target accepts in one batch, next cycle
                self.copy_match_length = matched  # the speed gate judges copies by it
                return TokenTree.chain(copied, "pool")
        if not draft_model:
            return TokenTree()
        drafted = self._draft(history, min(self.gamma, budget))[:budget]
        builder = TreeBuilder(budget, max_paths=self.max_paths)
        chain = builder.add(drafted, "draft")
        self._drafted = drafted
        for phrase in self.pool.recent(drafted[-1], self.params.candidates):
            self._lengthening.append(builder.add(phrase, "pool", parent=chain[-1]))
        for phrase in self.pool.recent(history[-1], self.params.candidates):
            builder.add(phrase, "pool")
        return builder.build()

    # --- 3 learn ------------------------------------------------------------------------------------
    def observe(self, outcome: Outcome) -> None:
        drafted = self._drafted
        if not drafted:
            return
        n_chain = len(drafted)
        accepted = 0  # chain nodes are 0..n_chain-1, added first, so the accepted path starts there
        while accepted < len(outcome.accepted) and outcome.accepted[accepted] == accepted:
            accepted += 1
        self._roll_back_draft(accepted)
        argmax = outcome.argmax
        if accepted < n_chain:
            self._rule_a(drafted, accepted, argmax)
        else:
            self._rule_b(drafted, argmax)
        self.gamma = next_draft_length(self.gamma, accepted == n_chain, self.params.max_draft_length)

    def _roll_back_draft(self, accepted: int) -> None:
        self.draft.keep(self._history_length + min(accepted, len(self._drafted) - 1))

    def _rule_a(self, drafted: list[int], first_rejected: int, argmax) -> None:
        """Rejected tail r_j with the target's argmax y_j after it: a phrase keyed by r_j that
        follows y while the draft agreed with y (so each y was predicted on a context T agrees with)."""
        n = self.pool.phrase_length
        for j in range(first_rejected, len(drafted)):
            phrase, k = [], j
            while len(phrase) < n:
                phrase.append(int(argmax[k + 1]))
                if k + 1 < len(drafted) and drafted[k + 1] == phrase[-1]:
                    k += 1
                else:
                    break
            if len(phrase) == n:
                self.pool.insert(drafted[j], tuple(phrase))

    def _rule_b(self, drafted: list[int], argmax) -> None:
        """Each lengthening candidate as the target would have written it after the full draft."""
        n = self.pool.phrase_length
        after_draft = int(argmax[len(drafted)])  # entry of the last chain node = its index + 1
        for nodes in self._lengthening:
            real = (after_draft,) + tuple(int(argmax[node + 1]) for node in nodes[: n - 1])
            if len(real) == n:
                self.pool.insert(drafted[-1], real)
