"""Our target-only greedy loop equals llama-cpp-python's own `Llama` greedy generation."""

from __future__ import annotations

import pytest
from llama_cpp import Llama

from conftest import PROMPTS, THREADS, generate_ids

N_TOKENS = 64


def reference_greedy(path, prompt_tokens: list[int], n: int) -> list[int]:
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS, flash_attn=True,
                verbose=False)
    try:
        out = []
        for token in llm.generate(prompt_tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
            if llm._model.token_is_eog(token) if hasattr(llm._model, "token_is_eog") else token == llm.token_eos():
                out.append(token)
                break
            out.append(token)
            if len(out) >= n:
                break
        return out
    finally:
        llm.close()


@pytest.mark.parametrize("runtime_name", ["pair", "q4", "gemma"])
def test_greedy_matches_llama_cpp_python(runtime_name, request):
    runtime = request.getfixturevalue(runtime_name)
    for prompt in PROMPTS:
        # SmolLM2 is an instruct model (chat-formatted prompts), Gemma-3-270M a base model
        tokens = runtime.tokenize_prompt(prompt, chat=runtime_name != "gemma")
        ours = generate_ids(runtime, tokens, N_TOKENS)
        theirs = reference_greedy(runtime.target.path, tokens, N_TOKENS)
        assert ours == theirs, f"{runtime.target.path.name}: diverged on {prompt!r}"
        assert len(ours) >= 8
