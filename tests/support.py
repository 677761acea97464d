"""Helpers the tests share: the test models' names, runtime options, greedy references, the tie proof.

Fixtures live in conftest.py; tests import these by name (`from support import ...`)."""

from __future__ import annotations

from ouroboros_lite import ties
from ouroboros_lite.runtime import Runtime, RuntimeOptions

TARGET = "smollm2-135m-instruct-f32"
DRAFT = "smollm2-135m-instruct-q4_1"
GEMMA = "gemma-3-270m-q4_k_m"
THREADS = 2

PROMPTS = [
    "The history of the Roman Empire begins",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Here is a recipe for pancakes. Ingredients:",
    "Question: Why is the sky blue?\nAnswer:",
    "Once upon a time, in a small village by the sea,",
]


def options(**kwargs) -> RuntimeOptions:
    # flash attention on (the CPU default of llama.cpp's "auto"); the Llama reference uses it too
    kwargs.setdefault("flash_attn", True)
    # F32 KV cells: batched and one-token decoding then differ only by float32 summation order
    kwargs.setdefault("kv_type", "f32")
    return RuntimeOptions(threads=THREADS, n_ctx=2048, **kwargs)


def generate_ids(runtime: Runtime, prompt_tokens: list[int], max_tokens: int, method: str = "ar") -> list[int]:
    out = []
    for response in runtime.generate(prompt_tokens, max_tokens=max_tokens, method=method):
        if response.token >= 0:
            out.append(response.token)
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    return ties.first_difference(a, b)


def assert_equal_or_tie(runtime, prompt_tokens, reference, candidate, label) -> int:
    """0 if the texts are equal, 1 if they part at a measured near-tie (ouroboros_lite/ties.py); fails otherwise."""
    i = first_difference(reference, candidate)
    if i is None:
        return 0
    assert i < min(len(reference), len(candidate)), f"{label}: one output stops early without a token difference"
    check = ties.check_tie(runtime.verifier, prompt_tokens, reference, candidate)
    assert check.is_tie, f"{label}: token {i} differs and is no tie: {check.describe()}"
    print(f"\n{label}: {check.describe()}")
    return 1
