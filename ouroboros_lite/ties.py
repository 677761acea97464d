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
bug, emitting a token the target clearly ranks lower, fails both.

Those recomputations build the prefix's KV cache in one or two batches; the run under test built
it cycle by cycle in batches of every size, and its rounding can differ more than theirs. So a run
may also bring its witness: the logits row its verifier chose the token from (TreeVerifier records
it). It proves a tie when that row ranks the candidate first (the verifier obeyed the target) and
differs from the one-token-at-a-time row by no more than twice as much as the recomputations differ
from it among themselves (the row is the target's, computed another way, not a corrupted cache).
The tests and `bench` share the recomputations; only `bench` brings witnesses (run_witnessed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import Sampler, SamplingParams, keyed_gumbel, resolve_seed
from .tree import TokenTree
from .verify import TreeVerifier

REBATCHINGS = (1, 2, 8, 32)  # batch sizes of the prefix's last tokens; None (one at a time) is added
WITNESS_DRIFT = 2.0  # a witness row may drift this many times the recomputations' own row drift
FILTERED = -1e30  # the score of a token the sampling filters (top-k, top-p, min-p) dropped in a computation


@dataclass(frozen=True)
class TieCheck:
    index: int  # first token where the two texts differ
    tokens: tuple[int, int]  # (reference's token, candidate's token) there
    gaps: tuple[float, ...]  # score(reference) - score(candidate), per way of computing
    noise: float  # the largest spread of one token's score across the ways
    row_noise: float = 0.0  # the largest |difference| of a recomputed logits row from the one-at-a-time row
    witness_gap: float | None = None  # the gap in the row the run chose from (None: no witness)
    witness_drift: float | None = None  # that row's largest |difference| from the one-at-a-time row
    filtered: int = 0  # computations in which a sampling filter dropped one of the two tokens

    @property
    def ranked_both_ways(self) -> bool:
        return any(g > 0 for g in self.gaps) and any(g < 0 for g in self.gaps)

    @property
    def witnessed(self) -> bool:
        return (self.witness_gap is not None and self.witness_gap <= 0
                and self.witness_drift <= WITNESS_DRIFT * self.row_noise)

    @property
    def is_tie(self) -> bool:
        return self.ranked_both_ways or abs(float(np.mean(self.gaps))) <= self.noise or self.witnessed

    def describe(self) -> str:
        verdict = "near-tie" if self.is_tie else "NO tie"
        text = (f"{verdict} at token {self.index} ({self.tokens[0]} vs {self.tokens[1]}): score gaps "
                f"[{', '.join(_gap_text(g) for g in self.gaps)}], kernel noise {self.noise:.4f}")
        if self.filtered:
            text += f" (a sampling filter dropped one of the two in {self.filtered} of {len(self.gaps)} computations)"
        if self.witness_gap is not None:
            text += (f"; the run's own row: gap {_gap_text(self.witness_gap)}, row drift {self.witness_drift:.4f} "
                     f"(recomputed rows drift up to {self.row_noise:.4f})")
        return text


def _gap_text(gap: float) -> str:
    """A gap, or which token a filter dropped: its sign still ranks the two, its size means nothing."""
    if abs(gap) < -FILTERED / 2:
        return f"{gap:.4f}"
    return "candidate filtered" if gap > 0 else "reference filtered"


def score_noise(rows: np.ndarray) -> tuple[float, int]:
    """(the largest spread of one token's score across the computations, leaving out those where a
    filter dropped it; the number of computations where one of the two was dropped). rows: one
    (reference, candidate) score pair per computation."""
    kept = rows > FILTERED / 2
    spreads = [float(np.ptp(column[keep])) for column, keep in zip(rows.T, kept.T) if keep.any()]
    return max(spreads, default=0.0), int(np.sum(~kept.all(axis=1)))


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where the lists differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_tie(verifier: TreeVerifier, prompt: list[int], reference: list[int], candidate: list[int],
              sampling: SamplingParams | None = None,
              witness: tuple[int, np.ndarray] | None = None) -> TieCheck | None:
    """Measure the divergence of `candidate` from `reference` (both continuations of `prompt`).

    None when no token differs (one text only stops earlier). Leaves the verifier's cache empty.
    Greedy scores are logits; sampled ones are the log-probability plus the keyed noise of the draw.
    witness: (index, logits row) from the candidate's run (TreeVerifier.departure, the index counted
    in the continuation); weighed when its index is the divergence's."""
    i = first_difference(reference, candidate)
    if i is None or i >= min(len(reference), len(candidate)):
        return None
    pair = np.array([reference[i], candidate[i]])
    longest = min(len(prompt) + i - 1, verifier.max_nodes + 1)
    ways = [None] + [k for k in REBATCHINGS if k <= longest]
    history = prompt + reference[:i]
    logits = [logits_after(verifier, prompt, reference[:i], k) for k in ways]
    verifier.reset()
    rows = np.array([_scores(row, pair, history, sampling) for row in logits])
    gaps = rows[:, 0] - rows[:, 1]
    row_noise = max((_drift(row, logits[0]) for row in logits[1:]), default=0.0)
    witness_gap = witness_drift = None
    if witness is not None and witness[0] == i:
        scores = _scores(witness[1], pair, history, sampling)
        witness_gap, witness_drift = float(scores[0] - scores[1]), _drift(witness[1], logits[0])
    noise, filtered = score_noise(rows)
    return TieCheck(i, (int(pair[0]), int(pair[1])), tuple(float(g) for g in gaps),
                    noise, row_noise, witness_gap, witness_drift, filtered)


def _drift(row: np.ndarray, base: np.ndarray) -> float:
    return float(np.max(np.abs(row.astype(np.float64) - base)))


def _scores(logits: np.ndarray, pair: np.ndarray, history: list[int], sampling: SamplingParams | None) -> np.ndarray:
    if sampling is None or sampling.plain_greedy:
        return logits[pair].astype(np.float64)
    seed = resolve_seed(sampling.seed)
    with np.errstate(divide="ignore"):
        scores = np.log(Sampler(sampling, seed).probabilities(logits, history)[pair])
    if not sampling.greedy:
        scores = scores + keyed_gumbel(seed, len(history), pair)
    return np.where(np.isfinite(scores), scores, FILTERED)


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
