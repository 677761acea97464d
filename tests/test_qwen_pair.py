"""The reference pair (Qwen2.5-Coder 1.5B target, 0.5B draft, Q4_K_M): every method, and each drafting
feature switched on, is token-identical to target-only greedy decoding, near-ties shown as ties.

Q4_K's batched and one-token kernels differ by up to ~0.16 logit on this target, so divergences at
near-ties happen; each must be proven one (ouroboros_lite/ties.py). Skipped where the pair is not
cached (`ouroboros-lite pull qwen2.5-coder-1.5b-instruct-q4_k_m`)."""

from __future__ import annotations

import pytest

from ouroboros_lite.catalog import is_verified, load_catalog
from ouroboros_lite.drafters.lookahead import LookaheadDrafter
from ouroboros_lite.drafters.ouroboros import OuroborosDrafter, OuroborosParams
from ouroboros_lite.generate import stream_generate
from ouroboros_lite.pool import PhrasePool
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.ties import check_tie

from support import THREADS, assert_equal_or_tie, first_difference, generate_ids, options

TARGET, DRAFT = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
N_TOKENS = 64
HAWAII = ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
          "experiences and must-see attractions.")
PROMPTS = [  # (text, chat template?)
    ("Write a Python function that checks whether a string is a palindrome, with a docstring and tests.", True),
    (HAWAII, True),
    ("def running_mean(values: list[float], window: int) -> list[float]:\n"
     "    \"\"\"Return the mean of each window of `window` consecutive values.\"\"\"\n", False),
]

catalog = load_catalog()
pytestmark = pytest.mark.skipif(
    not (is_verified(catalog.get(TARGET)) and is_verified(catalog.get(DRAFT))),
    reason=f"the Qwen pair is not cached (ouroboros-lite pull {TARGET}; pull {DRAFT})")


@pytest.fixture(scope="module")
def qwen():
    with Runtime(catalog.get(TARGET).path, catalog.get(DRAFT).path, method="ar", options=options()) as runtime:
        yield runtime


def feature_drafters(runtime):
    """Drafters with each feature on: Jacobi window, draft guesses, lengthening candidates, wide trees,
    context copies (on by default), and the draft-free mode with a window and guesses on the target."""
    def pool():
        return PhrasePool(phrase_length=runtime.options.ngram - 1, capacity=runtime.options.pool_capacity)

    def ouroboros(**params):
        return OuroborosDrafter(runtime.draft, pool(), n_ctx=runtime.context.n_ctx, threads=THREADS,
                                params=OuroborosParams(**params), flash_attn=True, kv_type="f32")

    return {
        "ouroboros W4 G2 K2 16 nodes": ouroboros(window=4, draft_guesses=2, candidates=2, max_target_nodes=16),
        "ouroboros G4 K3 24 nodes, no copies": ouroboros(draft_guesses=4, candidates=3, max_target_nodes=24,
                                                         copy_match=0),
        "draft-free W2 G2": LookaheadDrafter(pool(), window=2, guesses=2, max_nodes=16),
    }


def assert_ar_through_ties(runtime, prompt, reference, candidate, label, max_ties: int = 8) -> int:
    """Every token of `candidate` is ar's: where it leaves `reference` at a proven near-tie, the rest is
    checked against ar's own continuation of the candidate's text up to there, so a tie early in
    a reply does not end the check. Returns the number of ties met."""
    n_ties = 0
    while True:
        n_ties_before = n_ties
        n_ties += assert_equal_or_tie(runtime, prompt, reference, candidate, label)
        if n_ties == n_ties_before:
            return n_ties
        assert n_ties <= max_ties, f"{label}: more than {max_ties} near-ties in {len(candidate)} tokens"
        i = first_difference(reference, candidate) + 1  # the tie token is the candidate's from here on
        prompt, candidate = prompt + candidate[:i], candidate[i:]
        reference = generate_ids(runtime, prompt, len(candidate), "ar") if candidate else []


# The README's test command runs the code prompt; the sweep (`-m sweep`, in .ci/run) the other two.
@pytest.mark.parametrize("prompts", [pytest.param(PROMPTS[2:], id="code"),
                                     pytest.param(PROMPTS[:2], marks=pytest.mark.sweep, id="sweep")])
def test_every_method_and_feature_matches_greedy_on_the_qwen_pair(qwen, prompts):
    extra = feature_drafters(qwen)
    accepted = dict.fromkeys([*("sd", "pld", "lookahead", "ouroboros"), *extra], 0)
    n_ties = 0
    try:
        for text, chat in prompts:
            tokens = qwen.tokenize_prompt(text, chat=chat)
            reference = generate_ids(qwen, tokens, N_TOKENS, "ar")  # computed once, reused by every method
            for label in accepted:
                if label in extra:
                    responses = list(stream_generate(qwen.target, qwen.verifier, extra[label], tokens,
                                                     max_tokens=N_TOKENS))
                else:
                    responses = list(qwen.generate(tokens, max_tokens=N_TOKENS, method=label))
                candidate = [r.token for r in responses if r.token >= 0]
                accepted[label] += responses[-1].spec.accepted_tokens
                n_ties += assert_ar_through_ties(qwen, tokens, reference, candidate, f"{label} on {text[:30]!r}")
    finally:
        for drafter in extra.values():
            drafter.close()
    assert all(n > 0 for n in accepted.values()), f"a drafter never had a token accepted: {accepted}"
    print(f"\nQwen pair: {n_ties} proven near-ties over {len(prompts) * len(accepted)} runs")


def test_the_known_hawaii_divergence_is_a_proven_tie():
    """With the defaults users get (f16 KV), ouroboros --window 2 left ar's text at byte 79 of this
    prompt (" on" vs " eager"), which a fixed 0.05 band called a bug; the measured proof calls it a tie."""
    # without the speed gate, so the trees (and the divergence) do not depend on its timings
    opts = RuntimeOptions(threads=THREADS, ouroboros=OuroborosParams(window=2), adaptive=False)
    with Runtime(catalog.get(TARGET).path, catalog.get(DRAFT).path, method="ouroboros", options=opts) as runtime:
        tokens = runtime.tokenize_prompt(HAWAII, chat=True)
        reference = generate_ids(runtime, tokens, 96, "ar")
        candidate = generate_ids(runtime, tokens, 96, "ouroboros")
        check = check_tie(runtime.verifier, tokens, reference, candidate)
        if check is None:
            pytest.skip("ouroboros matched ar on this CPU: no divergence to prove")
        print("\n" + check.describe())
        assert check.is_tie, check.describe()
