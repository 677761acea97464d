"""The decode loop, the draft-free drafters, the speed gate and the registry against a fake target:
a deterministic next-token function verified in Python (no model, no libllama decode), so the loop's
logic is checked in a second. The real-model tiers check the same promises on llama.cpp."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from ouroboros_lite import drafters
from ouroboros_lite.drafters.adaptive import AdaptiveDrafter
from ouroboros_lite.drafters.lookahead import LookaheadDrafter
from ouroboros_lite.drafters.pld import PromptLookupDrafter
from ouroboros_lite.generate import generate_tokens
from ouroboros_lite.pool import PhrasePool
from ouroboros_lite.sampling import GREEDY, Sampler
from ouroboros_lite.tree import TokenTree
from ouroboros_lite.verify import Outcome

VOCAB = 23


def target_next(history: list[int]) -> int:
    """The fake target's greedy token: a function of the last two tokens, so its text repeats (as
    real text does) and copy-based drafters have something to find."""
    a, b = (history[-2] if len(history) > 1 else 0), history[-1]
    return (a * 7 + b * 3 + 1) % VOCAB


def greedy_reference(prompt: list[int], n: int) -> list[int]:
    history, out = list(prompt), []
    for _ in range(n):
        out.append(target_next(history))
        history.append(out[-1])
    return out


@dataclass
class FakeVerifier:
    """TreeVerifier's contract in Python: argmax after the root and every node, greedy acceptance
    down the tree, the KV as the list of committed tokens."""

    n_ctx: int = 512
    max_nodes: int = 16
    max_paths: int = 8
    cached: list[int] = field(default_factory=list)
    forwards: int = 0
    tree_sizes: list[int] = field(default_factory=list)

    @property
    def context(self):
        return SimpleNamespace(n_ctx=self.n_ctx)

    def prefill(self, tokens: list[int], pos0: int = 0) -> int:
        assert pos0 == len(self.cached), "prefill must continue the KV"
        self.cached += tokens
        return target_next(self.cached)

    def verify(self, root: int, pos: int, tree: TokenTree, sampler=None, history=None) -> Outcome:
        assert pos == len(self.cached), f"the root must go at the end of the KV ({pos} != {len(self.cached)})"
        assert len(tree) <= self.max_nodes and tree.n_paths <= self.max_paths
        self.forwards += 1
        self.tree_sizes.append(len(tree))
        context = [*self.cached, root]
        argmax = [target_next(context)]
        for node in range(len(tree)):
            path = [tree.tokens[i] for i in tree.path_to(node)]
            argmax.append(target_next(context + path))
        path, parent = [], -1
        while True:
            want = argmax[0] if parent < 0 else argmax[parent + 1]
            child = next((i for i in range(len(tree)) if tree.parents[i] == parent and tree.tokens[i] == want), None)
            if child is None:
                break
            path.append(child)
            parent = child
        self.cached += [root, *(tree.tokens[i] for i in path)]
        next_token = argmax[0] if not path else argmax[path[-1] + 1]
        return Outcome(tree=tree, accepted=tuple(path), tokens=tuple(tree.tokens[i] for i in path) + (next_token,),
                       sources=tuple(tree.sources[i] for i in path) + ("target",), argmax=np.array(argmax))


def run(drafter, prompt: list[int], n: int, verifier: FakeVerifier | None = None) -> tuple[list[int], FakeVerifier]:
    verifier = verifier or FakeVerifier()
    tokens = [t for t, _, _ in generate_tokens(verifier, drafter, prompt, max_tokens=n, sampler=Sampler(GREEDY, 1))]
    return tokens, verifier


PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def draft_free_drafters():
    pool = PhrasePool(phrase_length=3, capacity=4)
    yield "pld", PromptLookupDrafter(draft_length=8)
    yield "lookahead copies", LookaheadDrafter(PhrasePool(3, 4), window=0, guesses=0, max_nodes=16, max_paths=8)
    yield "lookahead W3 G2", LookaheadDrafter(pool, window=3, guesses=2, max_nodes=16, max_paths=8)
    yield "gated lookahead W3 G2", AdaptiveDrafter(LookaheadDrafter(PhrasePool(3, 4), window=3, guesses=2,
                                                                    max_nodes=16, max_paths=8))


@pytest.mark.parametrize("label, drafter", list(draft_free_drafters()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_draft_free_drafter_emits_the_targets_greedy_text_in_fewer_forwards(label, drafter):
    reference = greedy_reference(PROMPT, 200)
    tokens, verifier = run(drafter, PROMPT, 200)
    assert tokens == reference, label
    assert verifier.cached == PROMPT + reference[:-1]  # the KV holds exactly the accepted text
    assert verifier.forwards < 200 * 0.7, f"{label}: {verifier.forwards} forwards for 200 tokens"


def test_budgets_respect_max_tokens_and_the_context():
    drafter = PromptLookupDrafter(draft_length=8)
    tokens, _ = run(drafter, PROMPT, 37)
    assert tokens == greedy_reference(PROMPT, 37)
    small = FakeVerifier(n_ctx=40)
    tokens, verifier = run(PromptLookupDrafter(draft_length=8), PROMPT, 500, small)
    assert len(verifier.cached) <= 40 and tokens == greedy_reference(PROMPT, len(tokens))
    assert len(PROMPT) + len(tokens) - 1 == 40  # the context filled up, no token past it


def test_a_drafter_that_is_always_wrong_costs_forwards_not_text():
    class Wrong:
        name, runs_draft_model, pool, draft_forwards, draft_tokens = "wrong", False, None, 0, 0

        def begin(self, prompt, sampler=None, max_tokens=None):
            pass

        def propose(self, history, budget):
            want = target_next(history)
            return TokenTree.chain([(want + 1) % VOCAB] * min(4, budget), "draft")

        def observe(self, outcome):
            assert outcome.accepted == ()

        def close(self):
            pass

    tokens, verifier = run(Wrong(), PROMPT, 50)
    assert tokens == greedy_reference(PROMPT, 50) and verifier.forwards == 49


def test_the_registry_builds_each_draft_free_method_for_a_session():
    session = SimpleNamespace(options=SimpleNamespace(max_draft=8, target_window=2, target_guesses=1, adaptive=True,
                                                      ouroboros=SimpleNamespace(max_target_nodes=12)),
                              verifier=SimpleNamespace(max_paths=8), draft=None)
    built = {name: entry.build(session, PhrasePool(3, 4)) for name, entry in drafters.METHODS.items()
             if not entry.needs_draft}
    assert set(built) == {"ar", "pld", "lookahead", "ouroboros"}
    assert isinstance(built["ouroboros"], AdaptiveDrafter) and isinstance(built["ouroboros"].inner, LookaheadDrafter)
    for name, drafter in built.items():
        tokens, _ = run(drafter, PROMPT, 64)
        assert tokens == greedy_reference(PROMPT, 64), name
        assert (drafter.pool is None) == (name in ("ar", "pld")), name
    assert [m for m, e in drafters.METHODS.items() if e.needs_draft] == ["sd"]
    with pytest.raises(Exception, match="unknown method 'nope'"):
        drafters.method("nope")
