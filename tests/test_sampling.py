"""Sampling: llama.cpp's parameter meanings, and statistical exactness of the acceptance rules.

The acceptance code is driven here with tiny fake vocabularies (the same functions the verifier
calls), so thousands of trials run in a second; tests/test_sampling_models.py does the same on
the real test pair."""

from __future__ import annotations

import numpy as np
import pytest

from ouroboros_lite.acceptance import accept_sampled, choose_child
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.sampling import Sampler, SamplingParams
from ouroboros_lite.tree import TokenTree

from chisquare import chi2_sf, goodness_of_fit

FREE = dict(top_k=0, top_p=1.0, min_p=0.0)  # temperature only


def test_chi2_sf_matches_known_quantiles():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(6.6348966010212145, 1) == pytest.approx(0.01, abs=1e-9)
    assert chi2_sf(100.0, 60) == pytest.approx(0.00091682886, rel=1e-6)  # Simpson's rule on the density


def test_bad_parameters_are_named():
    with pytest.raises(OuroborosError, match="top-p must be in"):
        SamplingParams(top_p=0.0)
    with pytest.raises(OuroborosError, match="repeat-penalty must be positive"):
        SamplingParams(repeat_penalty=0)
    with pytest.raises(OuroborosError, match="top-k"):
        SamplingParams(top_k=-1)


def probs(logits, history=(), **params):
    return Sampler(SamplingParams(**params), seed=0).probabilities(np.asarray(logits, dtype=np.float32), list(history))


def test_greedy_is_the_first_largest_logit_after_the_penalty():
    assert probs([1.0, 3.0, 3.0, 2.0]).tolist() == [0, 1, 0, 0]
    # penalty 2 on token 1 (positive logit: divided) makes token 3 the best
    assert probs([1.0, 3.0, 0.5, 2.0], history=[1], repeat_penalty=2.0).tolist() == [0, 0, 0, 1]
    # a negative logit is multiplied, as in llama.cpp
    assert probs([-1.0, -0.6, -3.0], history=[1], repeat_penalty=2.0).tolist() == [1, 0, 0]


def test_temperature_top_k_top_p_min_p_follow_llama_cpp():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    p = probs(logits, temperature=1.0, **FREE)
    assert p == pytest.approx([0.5, 0.2, 0.15, 0.1, 0.05])
    p = probs(logits, temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)
    assert p == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    # top-p 0.8 keeps the smallest prefix whose mass reaches 0.8: 0.5 + 0.2 + 0.15
    p = probs(logits, temperature=1.0, top_k=0, top_p=0.8, min_p=0.0)
    assert p == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    # min-p 0.25: keep p >= 0.25 * 0.5 = 0.125
    p = probs(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.25)
    assert p == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0])
    # temperature 0.5 squares the kept probabilities before normalising
    p = probs(logits, temperature=0.5, top_k=2, top_p=1.0, min_p=0.0)
    assert p == pytest.approx([0.25 / 0.29, 0.04 / 0.29, 0, 0, 0])


def test_presence_and_frequency_penalties_subtract_as_openai_and_llama_cpp_do():
    # token 0 seen three times, token 1 once: 3.0 - 3 x 0.5 - 0.25 = 1.25, 2.0 - 0.5 - 0.25 = 1.25
    p = probs([3.0, 2.0, 1.0], history=[0, 0, 1, 0], temperature=1.0, frequency_penalty=0.5,
              presence_penalty=0.25, **FREE)
    expected = np.exp([1.25, 1.25, 1.0])
    assert p == pytest.approx(expected / expected.sum())
    # after the multiplicative repeat penalty, in llama.cpp's order: 3.0 / 2 - 0.25 = 1.25 < 1.5
    assert probs([3.0, 1.5], history=[0], repeat_penalty=2.0, presence_penalty=0.25).tolist() == [0, 1]
    # negative values reward repeats
    assert probs([1.0, 1.2], history=[0], presence_penalty=-0.5).tolist() == [1, 0]
    assert not SamplingParams(presence_penalty=0.5).plain_greedy
    assert SamplingParams(presence_penalty=0.5, repeat_last_n=0).plain_greedy
    with pytest.raises(OuroborosError, match="presence-penalty must be in"):
        SamplingParams(presence_penalty=3.0)


def test_penalty_only_sees_the_last_n_tokens():
    logits = [2.0, 2.0]
    assert probs(logits, history=[0, 1, 1, 1], repeat_penalty=2.0, repeat_last_n=3).tolist() == [1, 0]
    assert probs(logits, history=[0, 1], repeat_penalty=2.0, repeat_last_n=0).tolist() == [1, 0]


# --- statistical exactness on a fake vocabulary -----------------------------------------------------

V = 6
rng_tables = np.random.default_rng(1234)
TARGET = {ctx: rng_tables.dirichlet(np.ones(V) * 0.8) for ctx in range(-1, V)}  # p after root / after token
DRAFT = {ctx: 0.6 * TARGET[ctx] + 0.4 * rng_tables.dirichlet(np.ones(V)) for ctx in range(-1, V)}  # close, not equal


def target_after(tree: TokenTree):
    return lambda node: TARGET[-1 if node < 0 else tree.tokens[node]]


def expected_pairs():
    return {(a, b): TARGET[-1][a] * TARGET[a][b] for a in range(V) for b in range(V)}


def run_trials(make_tree, n=6000, seed=7):
    """Emit two tokens per trial (one cycle, or two when the first is rejected), like the loop does."""
    out = []
    for trial in range(n):
        sampler = Sampler(SamplingParams(temperature=1.0, **FREE), seed=seed * 100003 + trial)
        draft_rng = np.random.default_rng([seed, trial, 99])
        tree = make_tree(draft_rng, sampler)
        path, nxt = accept_sampled(tree, target_after(tree), sampler, position=10, draft_probs=tree.draft_probs)
        tokens = [tree.tokens[i] for i in path] + [nxt]
        if len(tokens) < 2:  # a second cycle with an empty tree
            tokens.append(sampler.draw(TARGET[tokens[0]], position=11))
        out.append(tuple(tokens[:2]))
    return out


def chain_from_draft(rng, sampler, length=3):
    """A draft chain sampled from q with the draft's own randomness (chain speculative sampling)."""
    tokens, dists, ctx = [], {}, -1
    for i in range(length):
        q = DRAFT[ctx]
        ctx = int(rng.choice(V, p=q))
        tokens.append(ctx)
        dists[i] = q
    return TokenTree(tuple(tokens), tuple(range(-1, length - 1)), ("draft",) * length, draft_probs=dists)


def fixed_tree(rng, sampler):
    """Pool-like children: several fixed candidates below the root and below one of them."""
    return TokenTree((0, 1, 2, 3, 4), (-1, -1, -1, 0, 0), ("pool",) * 5)


def mixed_tree(rng, sampler):
    """A sampled draft chain plus fixed pool candidates beside it and after its first token.

    The fixed ones are there whatever the draft drew (never merged with a sampled node)."""
    chain = chain_from_draft(rng, sampler, length=2)
    tokens = list(chain.tokens)
    parents = list(chain.parents)
    for t in (0, 5):
        tokens.append(t)
        parents.append(-1)
    for t in (1, 2):
        tokens.append(t)
        parents.append(0)
    return TokenTree(tuple(tokens), tuple(parents), ("draft",) * len(tokens), draft_probs=chain.draft_probs)


def coupled_chain(rng, sampler, length=3):
    """A draft that samples q with the verifier's keyed uniforms (what the Ouroboros draft does)."""
    tokens, ctx = [], -1
    for i in range(length):
        ctx = sampler.draw(DRAFT[ctx], position=10 + i)
        tokens.append(ctx)
    return TokenTree(tuple(tokens), tuple(range(-1, length - 1)), ("draft",) * length)


@pytest.mark.parametrize("make_tree", [chain_from_draft, fixed_tree, mixed_tree, coupled_chain])
def test_emitted_pairs_follow_the_target_distribution(make_tree):
    stat, dof, p = goodness_of_fit(run_trials(make_tree), expected_pairs())
    assert dof >= 20
    assert p > 0.01, f"chi-square {stat:.1f} on {dof} dof: p = {p:.2g}"


def test_speculative_sampling_accepts_more_than_a_greedy_draft():
    tree_sampled = [chain_from_draft(np.random.default_rng(i), None, 1) for i in range(3000)]
    sampler = Sampler(SamplingParams(temperature=1.0, **FREE), seed=3)
    accepted = sum(choose_child(TARGET[-1], [(0, t.tokens[0], t.draft_probs[0])], sampler, 0)[0] == 0
                   for t in tree_sampled)
    greedy = int(np.argmax(DRAFT[-1]))
    one_minus_tv = 1 - 0.5 * np.abs(TARGET[-1] - DRAFT[-1]).sum()
    assert accepted / 3000 == pytest.approx(one_minus_tv, abs=0.03)
    assert one_minus_tv > TARGET[-1][greedy]


def test_a_biased_rule_is_caught():
    """The pitfall the algorithm notes warn about: an independent sample per candidate, taking any match.

    The same statistic must reject it, which shows the exactness tests above can fail."""
    samples = []
    for trial in range(6000):
        sampler = Sampler(SamplingParams(temperature=1.0, **FREE), seed=trial)
        candidates = (0, 1, 2)
        draws = [sampler.draw(TARGET[-1]) for _ in candidates]
        match = next((c for c, d in zip(candidates, draws) if c == d), None)
        samples.append(match if match is not None else draws[-1])
    stat, dof, p = goodness_of_fit(samples, {t: TARGET[-1][t] for t in range(V)})
    assert p < 1e-6


def test_temperature_zero_walk_is_greedy_whatever_the_seed():
    p = np.array([0.1, 0.6, 0.3])
    one_hot = np.eye(3)[1]
    tree = TokenTree((2, 1, 0), (-1, -1, 1), ("pool",) * 3)
    for seed in range(20):
        sampler = Sampler(SamplingParams(), seed=seed)
        path, nxt = accept_sampled(tree, lambda node: one_hot if node < 0 else np.eye(3)[0], sampler, 0)
        assert path == [1, 2] and nxt == 0
    assert p.argmax() == 1
