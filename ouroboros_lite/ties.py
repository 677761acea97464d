"""Near-tie proof: is a divergence from `ar`'s text a kernel near-tie or a bug?

Batched verification and one-token decoding run different kernels (and the KV cache keeps what
each computed), so where two tokens score almost the same the two can rank them differently: on
the Q4_K Qwen target one position scored " eager" 15.749 over " on" 15.719 one token at a time
and " on" 15.737 over " eager" 15.573 prefilled in one batch. A fixed tie band cannot tell such a
tie from a bug (it is too tight on one model, too loose on another), so the tie is measured: the
target recomputes the two tokens' scores after the identical prefix several ways, one token at a
time as plain decoding does, and with the prefix prefilled and its last k tokens batched. It is a
tie if the target itself ranks the two tokens both ways, or their mean gap is within the spread of
one token's own score across those computations (the kernel noise on this model here). A verifier
bug, emitting a token the target clearly ranks lower, fails both. The tests and `bench` share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import Sampler, SamplingParams, keyed_gumbel, resolve_seed
from .tree import TokenTree
from .verify import TreeVerifier

REBATCHINGS = (1, 2, 8, 32)  # batch sizes of the prefix's last tokens; None (one at a time) is added


@dataclass(frozen=True)
class TieCheck:
    index: int  # first token where the two texts differ
    tokens: tuple[int, int]  # (reference's token, candidate's token) there
    gaps: tuple[float, ...]  # score(reference) - score(candidate), per way of computing
    noise: float  # the largest spread of one token's score across the ways

    @property
    def ranked_both_ways(self) -> bool:
        return any(g > 0 for g in self.gaps) and any(g < 0 for g in self.gaps)

    @property
    def is_tie(self) -> bool:
        return self.ranked_both_ways or abs(float(np.mean(self.gaps))) <= self.noise

    def describe(self) -> str:
        verdict = "near-tie" if self.is_tie else "NO tie"
        return (f"{verdict} at token {self.index} ({self.tokens[0]} vs {self.tokens[1]}): score gaps "
                f"{np.round(self.gaps, 4).tolist()}, kernel noise {self.noise:.4f}")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where the lists differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_tie(verifier: TreeVerifier, prompt: list[int], reference: list[int], candidate: list[int],
              sampling: SamplingParams | None = None) -> TieCheck | None:
    """Measure the divergence of `candidate` from `reference` (both continuations of `prompt`).

    None when no token differs (one text only stops earlier). Leaves the verifier's cache empty.
    Greedy scores are logits; sampled ones are the log-probability plus the keyed noise of the draw."""
    i = first_difference(reference, candidate)
    if i is None or i >= min(len(reference), len(candidate)):
        return None
    pair = np.array([reference[i], candidate[i]])
    longest = min(len(prompt) + i - 1, verifier.max_nodes + 1)
    ways = [None] + [k for k in REBATCHINGS if k <= longest]
    history = prompt + reference[:i]
    rows = np.array([_scores(verifier, prompt, reference[:i], k, pair, history, sampling) for k in ways])
    verifier.reset()
    gaps = rows[:, 0] - rows[:, 1]
    return TieCheck(i, (int(pair[0]), int(pair[1])), tuple(float(g) for g in gaps), float(np.max(np.ptp(rows, axis=0))))


def _scores(verifier, prompt, continuation, k, pair, history, sampling) -> np.ndarray:
    logits = logits_after(verifier, prompt, continuation, k)
    if sampling is None or sampling.plain_greedy:
        return logits[pair].astype(np.float64)
    seed = resolve_seed(sampling.seed)
    with np.errstate(divide="ignore"):
        scores = np.log(Sampler(sampling, seed).probabilities(logits, history)[pair])
    if not sampling.greedy:
        scores = scores + keyed_gumbel(seed, len(history), pair)
    return np.where(np.isfinite(scores), scores, -1e30)


def logits_after(verifier: TreeVerifier, prompt: list[int], continuation: list[int], k: int | None) -> np.ndarray:
    """Next-token logits after prompt + continuation; k=None: one token at a time after the prompt,
    else the prefix prefilled with its last k tokens decoded as one batch."""
    prefix = prompt + continuation
    verifier.reset()
    if k is None:
        verifier.prefill(prompt)
        pos = len(prompt)
        for token in continuation:  # feed the given tokens (not the argmaxes) one by one
            verifier.decode(token, pos, TokenTree())
            verifier.commit(-1)
            pos += 1
        return verifier.logits_last().copy()
    verifier.prefill(prefix[:-k])
    tail = prefix[-k + 1:] if k > 1 else []
    verifier.decode(prefix[-k], len(prefix) - k, TokenTree.chain(tail, "draft"))
    logits = verifier.logits(len(tail)).copy()
    verifier.commit(-1)
    return logits
