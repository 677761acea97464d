"""Lookahead decoding: a Jacobi window plus pool phrases, verified in the same forward.

Used two ways: on the draft model inside Ouroboros (phrase-level drafting: the draft's greedy
continuation in fewer draft forwards), and on the target itself (`--method lookahead`, the
draft-free mode: single-model users get phrases that cost nothing but batch width).

Window layout (W columns, N-1 levels, root r = current token at position p):

    level 2   a2 b2 c2 d2        column c is a chain from its level-0 node upward,
    level 1   a1 b1 c1 d1        so the token at (level l, column c) sits at p + l + c
    level 0   r  b0 c0 d0        and sees level 0 up to column c, then its own column.

Level 0 is a chain from the root. The argmax at the top of column c predicts the token after it;
(level-0 token of c) -> (levels 1.. of c, that prediction) is a phrase of N-1 tokens for the pool.
Every node is a tree node, so the whole window goes through the C verifier as one tree, and any
window token that matches the model's argmax is accepted like a draft (lossless either way).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..ngram import ContextIndex
from ..pool import PhrasePool
from ..tree import DEFAULT_MAX_PATHS, TokenTree, TreeBuilder
from ..verify import Outcome


class PhraseHarvester:
    """Feeds the pool every complete (token, next N-1 tokens) of a growing token list, once."""

    def __init__(self, pool: PhrasePool):
        self.pool = pool
        self._next_key = 0

    def restart(self) -> None:
        self._next_key = 0

    def feed(self, tokens: list[int]) -> None:
        n = self.pool.phrase_length
        for i in range(self._next_key, len(tokens) - n):
            self.pool.insert(tokens[i], tuple(tokens[i + 1:i + 1 + n]))
        self._next_key = max(self._next_key, len(tokens) - n)


@dataclass
class WindowPlacement:
    """Where one step put the window: per column, its key token and its top node (-1: the root)."""

    keys: list[int] = field(default_factory=list)
    tops: list[int] = field(default_factory=list)


class JacobiWindow:
    def __init__(self, width: int, ngram: int, seed: int = 0):
        self.width = width
        self.levels_up = max(0, ngram - 2)  # levels above level 0
        self._rng = random.Random(seed)
        self.level0: list[int] = []  # W-1 tokens (column 0's level-0 token is the root)
        self.upper: list[list[int]] = []  # levels 1..N-2, W tokens each

    def reset(self, tokens: list[int]) -> None:
        """Fill the window with tokens drawn from the prompt (any guess is valid, good ones pay)."""
        pick = (lambda: self._rng.choice(tokens)) if tokens else (lambda: 0)
        self.level0 = [pick() for _ in range(max(0, self.width - 1))]
        self.upper = [[pick() for _ in range(self.width)] for _ in range(self.levels_up)]

    def place(self, builder: TreeBuilder, root: int) -> WindowPlacement:
        placement = WindowPlacement()
        if self.width == 0:
            return placement
        bases = [-1] + builder.add(self.level0, "window")  # level-0 node of each column
        for c, base in enumerate(bases[:self.width]):
            column = builder.add([level[c] for level in self.upper], "window", parent=base)
            if len(column) < self.levels_up:
                break  # out of budget
            placement.keys.append(root if c == 0 else self.level0[c - 1])
            placement.tops.append(column[-1] if column else base)
        return placement

    def learn(self, placement: WindowPlacement, argmax, pool: PhrasePool) -> None:
        """Harvest one phrase per column (rule C), then advance the window one column."""
        new = [int(argmax[top + 1]) for top in placement.tops]  # batch entry = node + 1
        for c, key in enumerate(placement.keys):
            phrase = tuple(level[c] for level in self.upper) + (new[c],)
            if len(phrase) == pool.phrase_length:
                pool.insert(key, phrase)
        if len(new) < self.width:
            return  # the window did not fit this time: keep it as it is
        if self.levels_up == 0:
            self.level0 = new[1:]
        else:
            self.level0 = self.upper[0][1:]
            self.upper = self.upper[1:] + [new]


class LookaheadDrafter:
    """Draft-free mode (`--method lookahead`, and `ouroboros` without a draft model).

    One target forward verifies: the context's own continuation (ContextIndex: what followed the
    longest earlier occurrence of the last 2-6 tokens), then, where the context has none, up to
    `guesses` pool phrases keyed by the root, and a Jacobi window of `window` columns, within
    `max_nodes` nodes and `max_paths` root-to-leaf paths (the verifier's sequence count)."""

    name = "lookahead"
    runs_draft_model = False
    draft_forwards = 0
    draft_tokens = 0

    def __init__(self, pool: PhrasePool, *, window: int = 0, guesses: int = 4, max_nodes: int = 12,
                 max_paths: int = DEFAULT_MAX_PATHS):
        self.pool = pool
        self.window = JacobiWindow(window, pool.phrase_length + 1)
        self.guesses = guesses
        self.max_nodes = max_nodes
        self.max_paths = max_paths
        self.harvester = PhraseHarvester(pool)
        self.context = ContextIndex()
        self.copy_match_length = 0  # tokens the last proposal's context copy matched (the speed gate's)
        self._placement = WindowPlacement()

    def begin(self, prompt: list[int], sampler=None, max_tokens: int | None = None) -> None:
        self.window.reset(prompt)
        self.harvester.restart()
        self.context.reset()

    def close(self) -> None:
        pass  # holds no llama.cpp state

    def propose(self, history: list[int], budget: int) -> TokenTree:
        self.harvester.feed(history)  # the prompt and the output so far: target-quality phrases
        self.context.sync(history)
        builder = TreeBuilder(min(budget, self.max_nodes), max_paths=self.max_paths)
        root = history[-1]
        copied, self.copy_match_length = self.context.continuation(history, max_length=self.max_nodes)
        builder.add(copied, "pool")
        for phrase in self.pool.recent(root, 0 if copied else self.guesses):
            builder.add(phrase, "pool")
        self._placement = self.window.place(builder, root)
        return builder.build()

    def observe(self, outcome: Outcome) -> None:
        self.window.learn(self._placement, outcome.argmax, self.pool)
