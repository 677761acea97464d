"""Sampling on the real test pair: exact target distribution, seeds, and temperature 0.

The exactness test samples the first two tokens after a fixed chat prompt many times. The first
comes from the prompt's own forward; the second from one speculative cycle (a drafted tree and
its acceptance walk), so it is what each method could bias. The statistic is Pearson's
chi-square of the (first, second) pairs against the target's exact probabilities, p(a) * p(b|a),
computed from one-token decodes."""

from __future__ import annotations

import numpy as np
import pytest

from ouroboros_lite.sampling import Sampler, SamplingParams

from chisquare import goodness_of_fit

TRIALS = 400
PLAIN_T1 = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)  # the whole distribution, untruncated


def exact_pairs(runtime, prompt: list[int], trials: int) -> dict[tuple[int, int], float]:
    sampler = Sampler(SamplingParams(**PLAIN_T1), seed=0)
    verifier = runtime.verifier
    verifier.reset()
    verifier.prefill(prompt)
    first = sampler.probabilities(verifier.logits_last(), prompt)
    expected = {}
    for a in np.flatnonzero(first * trials >= 1.0):
        verifier.rollback(len(prompt))
        verifier.prefill([int(a)], len(prompt))
        second = sampler.probabilities(verifier.logits_last(), [*prompt, int(a)])
        for b in np.flatnonzero(first[a] * second * trials >= 1.0):
            expected[(int(a), int(b))] = float(first[a] * second[b])
    return expected


def sampled_pairs(runtime, prompt: list[int], method: str, trials: int) -> list[tuple[int, int]]:
    pairs = []
    for seed in range(trials):
        params = SamplingParams(**PLAIN_T1, seed=seed)
        # max_tokens 4: trees of up to 2 nodes keep each trial short; reuse_cache: decode only the last token
        stream = runtime.generate(prompt, max_tokens=4, method=method, sampling=params, reuse_cache=True)
        pairs.append((next(stream).token, next(stream).token))
        stream.close()
    return pairs


@pytest.mark.parametrize("method", ["sd", "ouroboros", "pld"])
def test_second_token_follows_the_target_distribution(pair, method):
    prompt = pair.tokenize_prompt("Name a fruit.", chat=True)
    expected = exact_pairs(pair, prompt, TRIALS)
    samples = sampled_pairs(pair, prompt, method, TRIALS)
    stat, dof, p = goodness_of_fit(samples, expected)
    print(f"{method}: chi-square {stat:.1f} on {dof} dof, p = {p:.3f}")
    assert dof >= 5
    assert p > 0.01, f"{method}: chi-square {stat:.1f} on {dof} dof, p = {p:.2g}"


def test_a_biased_sampler_fails_the_same_check(pair):
    """Control: drawing the second token at temperature 0.7 instead of 1 must be rejected."""
    prompt = pair.tokenize_prompt("Name a fruit.", chat=True)
    expected = exact_pairs(pair, prompt, TRIALS)
    hot = dict(PLAIN_T1, temperature=0.7)
    samples = []
    for seed in range(TRIALS):
        stream = pair.generate(prompt, max_tokens=2, method="ar", sampling=SamplingParams(**hot, seed=seed),
                               reuse_cache=True)
        samples.append((next(stream).token, next(stream).token))
    assert goodness_of_fit(samples, expected)[2] < 0.01


def tokens(runtime, prompt, method, params, n=48):
    return [r.token for r in runtime.generate(prompt, max_tokens=n, method=method, sampling=params)]


def test_same_seed_same_text_and_fixed_drafts_match_plain_sampling(pair):
    """Methods whose drafts are fixed by the prefix (pool, prompt lookup, the coupled Ouroboros
    draft) emit exactly what `ar` samples with the same seed; sd repeats itself for a seed."""
    prompt = pair.tokenize_prompt("Write two sentences about the sea.", chat=True)
    for seed in (1, 2, 3):
        params = SamplingParams(temperature=0.8, seed=seed)
        reference = tokens(pair, prompt, "ar", params)
        for method in ("ouroboros", "pld", "lookahead"):
            assert tokens(pair, prompt, method, params) == reference, (method, seed)
        assert tokens(pair, prompt, "sd", params) == tokens(pair, prompt, "sd", params)
    texts = {tuple(tokens(pair, prompt, "ar", SamplingParams(temperature=0.8, seed=s))) for s in range(4)}
    assert len(texts) > 1  # the seed matters


def test_temperature_zero_is_greedy_for_every_method(pair):
    prompt = pair.tokenize_prompt("Write two sentences about the sea.", chat=True)
    greedy = tokens(pair, prompt, "ar", SamplingParams())
    for method in ("ar", "sd", "ouroboros"):
        assert tokens(pair, prompt, method, SamplingParams(temperature=0.0, seed=5)) == greedy


def test_repetition_penalty_applies_on_accepted_history(pair):
    """Greedy with a penalty: every method equals ar under the same penalty, which differs from plain greedy."""
    prompt = pair.tokenize_prompt("Repeat the word 'blue' ten times.", chat=True)
    penalised = SamplingParams(temperature=0.0, repeat_penalty=1.5)
    reference = tokens(pair, prompt, "ar", penalised)
    assert reference != tokens(pair, prompt, "ar", SamplingParams())
    for method in ("sd", "ouroboros", "pld"):
        assert tokens(pair, prompt, method, penalised) == reference, method


def test_presence_and_frequency_penalties_apply_on_accepted_history(pair):
    prompt = pair.tokenize_prompt("Repeat the word 'blue' ten times.", chat=True)
    penalised = SamplingParams(temperature=0.0, presence_penalty=1.0, frequency_penalty=0.5)
    reference = tokens(pair, prompt, "ar", penalised)
    assert reference != tokens(pair, prompt, "ar", SamplingParams())
    for method in ("sd", "ouroboros", "pld"):
        assert tokens(pair, prompt, method, penalised) == reference, method
