"""Lossless acceptance of a token tree under sampling: every emitted token is an exact sample of the target.

The walk goes from the root down; at each node with target distribution p it either accepts
one child and descends, or emits one token drawn from what is left of p and stops. Two rules,
both exact, chosen by what the children are:

1. Fixed children (pool phrases, lookahead guesses, greedy drafts, and drafts a model sampled
   with the *keyed* noise of sampling.Sampler: anything that is a function of the accepted
   prefix and the seed): draw one token x = argmax_v(log p(v) + g_t(v)) (Gumbel-max, with noise
   g_t that depends only on the seed, the position t and v), and accept the child equal to x if
   there is one, else emit x. The emitted token is that draw whatever was proposed, and g_t is
   independent of the prefix, so it is an exact sample of p, and the output equals plain `ar`
   sampling with the same seed whatever the pool holds. This is the one-sample-per-node rule
   of the Ouroboros maintainers; for fixed children SpecInfer's recursive residuals (below,
   with q = a point mass) accept exactly as often (the sum of p over the children), so nothing
   is lost by using it. A draft that samples its chain from its own q with the same noise
   (Gumbel coupling) proposes the target's token whenever q is close enough to p that both
   argmaxes agree, with probability at least (1 - TV) / (1 + TV) (Daliri et al. 2024, "coupling
   without communication and drafter-invariant speculative decoding"); that is how the
   Ouroboros draft keeps its greedy machinery (lookahead, pool guesses) at temperature > 0.

2. Children sampled from a draft distribution q with independent randomness (TokenTree.draft_probs;
   `--method sd`): SpecInfer's multi-draft rejection sampling (Miao et al. 2024), which is
   chain speculative sampling (Leviathan et al. 2023) for one child:

       for each child c_i with proposal q_i (fixed children first, as point masses):
           accept c_i with probability min(1, p(c_i) / q_i(c_i)); if accepted, descend
           else p <- normalise(max(0, p - q_i))
       nothing accepted: emit a draw from the residual p

   One sampled child is accepted with probability 1 - TV(p, q), the most any coupling of p and
   q can agree, so at least rule 1's coupled draft; the price is that the text then depends on
   the draft's draws (still reproducible from the seed), and a pool cannot take part.

   Fixed children must not depend on the draft's draws: never merge a sampled node into a
   fixed one (or drop a fixed one because a sampled node has its token). A duplicate token is
   fine: the fixed node is tried first, and if it is rejected the residual has p = 0 there.

At temperature 0 p is one-hot and both rules are greedy acceptance, whatever the draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .sampling import Sampler
from .tree import TokenTree


def choose_child(
    p: np.ndarray, children: list[tuple[int, int, np.ndarray | None]], sampler: Sampler, position: int
) -> tuple[int | None, int]:
    """children: (node, token, q or None) below one node; position: the position of their token.

    Returns (accepted node, its token) or (None, the token to emit)."""
    if all(q is None for _, _, q in children):
        token = sampler.draw(p, position)
        return next((node for node, t, _ in children if t == token), None), token
    ordered = [c for c in children if c[2] is None] + [c for c in children if c[2] is not None]
    residual = p
    for node, token, q in ordered:
        proposal = 1.0 if q is None else q[token]
        accept = min(1.0, residual[token] / proposal) if proposal > 0 else 0.0
        if accept >= 1.0 or (accept > 0.0 and sampler.uniform() < accept):
            return node, token
        if q is None:
            residual = residual.copy()
            residual[token] = 0.0
        else:
            residual = np.maximum(residual - q, 0.0)
        total = residual.sum()
        if total <= 0.0:  # p <= q everywhere with equal sums means p == q, which always accepts: rounding
            residual = p
            break
        residual = residual / total
    return None, sampler.draw(residual)


def accept_sampled(
    tree: TokenTree,
    target_probs: Callable[[int], np.ndarray],
    sampler: Sampler,
    position: int,
    draft_probs: Mapping[int, np.ndarray] | None = None,
) -> tuple[list[int], int]:
    """Walk the tree from the root. target_probs(node) is p after `node` (-1: after the root);
    position: the position of the token after the root.

    Returns the accepted node indices (root's child first) and the token drawn after the last one."""
    draft_probs = draft_probs or {}
    children: dict[int, list[int]] = {}
    for node, parent in enumerate(tree.parents):
        children.setdefault(parent, []).append(node)
    path: list[int] = []
    node = -1
    while True:
        kids = [(k, tree.tokens[k], draft_probs.get(k)) for k in children.get(node, ())]
        child, token = choose_child(target_probs(node), kids, sampler, position + len(path))
        if child is None:
            return path, token
        path.append(child)
        node = child
