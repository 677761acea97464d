"""Speculative decoding: statistics and the vocabulary check (exactness: tests/test_methods.py)."""

from __future__ import annotations

import pytest

from ouroboros_lite.errors import VocabularyMismatchError
from ouroboros_lite.runtime import Runtime

from support import options

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
