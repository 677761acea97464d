"""Our target-only greedy loop equals llama-cpp-python's own `Llama` greedy generation."""

from __future__ import annotations

import pytest
from support import PROMPTS, THREADS, generate_ids
from llama_reference import reference_greedy

N_TOKENS = 64


@pytest.mark.parametrize("runtime_name", ["pair", "q4", "gemma"])
def test_greedy_matches_llama_cpp_python(runtime_name, request):
    runtime = request.getfixturevalue(runtime_name)
    for prompt in PROMPTS:
        # SmolLM2 is an instruct model (chat-formatted prompts), Gemma-3-270M a base model
        tokens = runtime.tokenize_prompt(prompt, chat=runtime_name != "gemma")
        ours = generate_ids(runtime, tokens, N_TOKENS)
        theirs = reference_greedy(runtime.target.path, tokens, N_TOKENS, threads=THREADS)
        assert ours == theirs, f"{runtime.target.path.name}: diverged on {prompt!r}"
        assert len(ours) >= 8
