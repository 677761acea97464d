"""Every drafter's tree is one the verifier accepts, over a grid of window, guesses, tree size and
place in the context (its middle and its last tokens), in a 256-cell context on the test pair.

A rejected tree raises NativeError out of the generation; the trees are also checked against the
budget and the verifier's path count directly.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

from ouroboros_lite.drafters.draft_model import DraftModelDrafter
from ouroboros_lite.drafters.lookahead import LookaheadDrafter, PhraseHarvester
from ouroboros_lite.drafters.ouroboros import OuroborosDrafter, OuroborosParams
from ouroboros_lite.generate import stream_generate
from ouroboros_lite.pool import PhrasePool
from ouroboros_lite.runtime import Runtime

from support import options

N_CTX = 256
# (window, guesses, max target nodes, copy_match, ngram): pairwise coverage of W in {0, 4, 12},
# G in {0, 2, 8}, nodes in {8, 48}; copy_match 0 makes the Ouroboros draft run every cycle; with
# ngram 3 (phrases of 2 tokens) W12 G8 fits 20 paths in 48 nodes, more than the 16 sequences.
GRID = [(12, 8, 48, 0, 3), (4, 2, 48, 0, 5), (4, 2, 8, 3, 5), (0, 8, 48, 0, 4), (12, 0, 8, 0, 5)]
PLACES = {"middle": 40, "end": N_CTX - 16}  # prompt lengths
MIDDLE_CYCLES = 3  # in the middle, trees as large as the grid allows: a few cycles suffice


@pytest.fixture(scope="module")
def pair256(target_path, draft_path):
    # one thread: on a busy shared machine two threads wait on each other (measured 60x slower)
    with Runtime(target_path, draft_path, options=dataclasses.replace(options(), n_ctx=N_CTX, threads=1)) as runtime:
        assert runtime.context.n_ctx == N_CTX
        yield runtime


@pytest.fixture(scope="module")
def text_tokens(pair256):
    """Varied natural text (Spec-Bench questions), long enough to fill the context."""
    lines = (Path(__file__).resolve().parents[1] / "data" / "spec_bench_even.jsonl").read_text().splitlines()
    text = "\n".join(json.loads(line)["turns"][0] for line in lines[:12])
    tokens = pair256.target.tokenize(text)
    assert len(tokens) >= N_CTX
    return tokens


class Recorder:
    """A drafter that checks every tree it proposes against the verifier's limits."""

    def __init__(self, drafter, verifier):
        self.drafter, self.verifier, self.trees = drafter, verifier, 0

    def __getattr__(self, name):
        return getattr(self.drafter, name)

    def propose(self, history, budget):
        tree = self.drafter.propose(history, budget)
        assert len(tree) <= budget and tree.n_paths <= self.verifier.max_paths, (len(tree), budget, tree.n_paths)
        self.trees += 1
        return tree


def warm_pool(ngram: int, capacity: int, tokens: list[int]) -> PhrasePool:
    """A pool that already holds the text's phrases (as one loaded from an earlier run): guesses
    for almost every root, so trees are as wide as the grid allows."""
    pool = PhrasePool(phrase_length=ngram - 1, capacity=capacity)
    PhraseHarvester(pool).feed(tokens)
    return pool


def drafters(runtime: Runtime, tokens: list[int]):
    """(label, drafter) for every grid point and method."""
    o, paths = runtime.options, runtime.verifier.max_paths
    for window, guesses, nodes, copy_match, ngram in GRID:
        pool = warm_pool(ngram, o.pool_capacity, tokens)
        yield f"lookahead W{window} G{guesses} n{nodes} N{ngram}", LookaheadDrafter(
            pool, window=window, guesses=guesses, max_nodes=nodes, max_paths=paths)
        params = OuroborosParams(window=window, draft_guesses=guesses, max_target_nodes=nodes, copy_match=copy_match,
                                 candidates=2)
        pool = warm_pool(ngram, o.pool_capacity, tokens)
        yield f"ouroboros W{window} G{guesses} n{nodes} c{copy_match} N{ngram}", OuroborosDrafter(
            runtime.draft, pool, n_ctx=runtime.context.n_ctx, threads=o.threads, params=params,
            flash_attn=o.flash_attn, kv_type=o.kv_type, max_paths=paths)
    yield "sd", DraftModelDrafter(runtime.draft, n_ctx=runtime.context.n_ctx, options=o)


@pytest.mark.parametrize("place", sorted(PLACES))
def test_every_drafter_tree_is_accepted_by_the_verifier(pair256, text_tokens, place):
    prompt = text_tokens[:PLACES[place]]
    for label, drafter in drafters(pair256, text_tokens):
        start = time.perf_counter()
        recorder = Recorder(drafter, pair256.verifier)
        responses = stream_generate(pair256.target, pair256.verifier, recorder, prompt, max_tokens=N_CTX,
                                    reuse_cache=True)
        try:
            for response in responses:
                if place == "middle" and recorder.trees >= MIDDLE_CYCLES:
                    break
        finally:
            responses.close()
            drafter.close() if hasattr(drafter, "close") else None
        assert recorder.trees > 0, label
        print(f"\n{place} {label}: {recorder.trees} trees in {time.perf_counter() - start:.1f} s", end="")
        if place == "end":
            assert response.finish_reason == "length", label
            assert len(pair256.verifier.cached) >= N_CTX - 1, label  # it did reach the end
