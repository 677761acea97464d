"""Speculative decoding is token-identical to target-only greedy decoding on real models."""

from __future__ import annotations

import pytest

from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.errors import VocabularyMismatchError
from ouroboros_lite.runtime import Runtime

from conftest import assert_equal_or_tie, generate_ids, options

def test_sd_matches_target_greedy_on_spec_bench(pair):
    prompts = load_prompts(default_prompts(), 20)
    ties = 0
    accepted_any = False
    for index, (category, text) in enumerate(prompts):
        tokens = pair.tokenize_prompt(text, chat=True)
        reference = generate_ids(pair, tokens, 128, "ar")
        responses = list(pair.generate(tokens, max_tokens=128, method="sd"))
        candidate = [r.token for r in responses if r.token >= 0]
        accepted_any |= responses[-1].spec.accepted_tokens > 0
        ties += assert_equal_or_tie(pair, tokens, reference, candidate, f"prompt {index} ({category})")
    assert accepted_any, "the draft never got a token accepted: the test would not test speculation"
    assert ties <= len(prompts) // 4, f"{ties} near-tie divergences in {len(prompts)} prompts"


def test_sd_reports_speculation_statistics(pair):
    tokens = pair.tokenize_prompt("List the planets of the solar system.", chat=True)
    last = list(pair.generate(tokens, max_tokens=64, method="sd"))[-1]
    spec = last.spec
    assert spec.target_forwards > 0 and spec.draft_forwards > 0
    assert 0 < spec.acceptance_rate <= 1
    assert spec.tokens_per_forward > 1.0
    assert spec.accepted_by_source.get("draft", 0) == spec.accepted_tokens


def test_mismatched_vocabularies_are_refused(target_path, gemma_path):
    with pytest.raises(VocabularyMismatchError, match="does not share the target's vocabulary"):
        Runtime(target_path, gemma_path, method="sd", options=options())
