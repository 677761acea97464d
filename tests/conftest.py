"""Shared fixtures: the real test models from the catalog (fetched by .ci/run, cached after)."""

from __future__ import annotations

import numpy as np
import pytest

from ouroboros_lite.catalog import pull
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.tree import TokenTree

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


@pytest.fixture(scope="session")
def target_path():
    return pull(TARGET)


@pytest.fixture(scope="session")
def draft_path():
    return pull(DRAFT)


@pytest.fixture(scope="session")
def gemma_path():
    return pull(GEMMA)


@pytest.fixture(scope="session")
def pair(target_path, draft_path):
    """The test pair: F32 target, Q4_1 draft, both methods available."""
    with Runtime(target_path, draft_path, method="ar", options=options()) as runtime:
        yield runtime


@pytest.fixture(scope="session")
def q4(draft_path):
    with Runtime(draft_path, options=options()) as runtime:
        yield runtime


@pytest.fixture(scope="session")
def gemma(gemma_path):
    with Runtime(gemma_path, options=options()) as runtime:
        yield runtime


def generate_ids(runtime: Runtime, prompt_tokens: list[int], max_tokens: int, method: str = "ar") -> list[int]:
    out = []
    for response in runtime.generate(prompt_tokens, max_tokens=max_tokens, method=method):
        if response.token >= 0:
            out.append(response.token)
    return out


# Batched verification and one-token decoding run different kernels (and the KV cache keeps what
# each computed), so at a near-tie the two can rank two tokens differently. A divergence counts as
# such a tie only when the data shows it. The target alone recomputes the logits of the two tokens
# after the identical prefix several ways: one token at a time as plain decoding does, and with the
# prefix prefilled and its last k tokens batched. The tie is shown if the target itself ranks the
# two tokens both ways, or their mean gap is within the spread of one token's own logit across
# those computations (the measured kernel noise). A verifier bug, emitting a token the target
# clearly ranks lower, fails both.
REBATCHINGS = (1, 2, 8, 32)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _logits_after(runtime, prompt: list[int], continuation: list[int], k: int | None) -> np.ndarray:
    """Next-token logits after prompt + continuation; k=None: one token at a time after the prompt."""
    verifier, prefix = runtime.verifier, prompt + continuation
    runtime.context.clear()
    if k is None:
        root, pos = verifier.prefill(prompt), len(prompt)
        for token in continuation:  # feed the given tokens (not the argmaxes) one by one
            verifier.decode(token, pos, TokenTree())
            verifier.commit(-1)
            pos += 1
        return verifier.logits_last().copy()
    verifier.prefill(prefix[:-k])
    tail = prefix[-k + 1:] if k > 1 else []
    chain = TokenTree(tuple(tail), tuple(range(-1, len(tail) - 1)), ("draft",) * len(tail))
    verifier.decode(prefix[-k], len(prefix) - k, chain)
    logits = verifier.logits(len(tail)).copy()
    verifier.commit(-1)
    return logits


def assert_equal_or_tie(runtime, prompt_tokens, reference, candidate, label) -> int:
    i = first_difference(reference, candidate)
    if i is None:
        return 0
    assert i < min(len(reference), len(candidate)), f"{label}: one output stops early without a token difference"
    pair = (reference[i], candidate[i])
    ways = [None] + [k for k in REBATCHINGS if k <= min(len(prompt_tokens) + i - 1, runtime.verifier.max_nodes + 1)]
    rows = np.array([[float(row[t]) for t in pair] for row in
                     (_logits_after(runtime, prompt_tokens, reference[:i], k) for k in ways)])
    gaps = rows[:, 0] - rows[:, 1]
    noise = float(np.max(np.ptp(rows, axis=0)))
    ranked_both_ways = bool((gaps > 0).any() and (gaps < 0).any())
    assert ranked_both_ways or abs(float(np.mean(gaps))) <= noise, (
        f"{label}: token {i} differs ({reference[i]} vs {candidate[i]}) and is no tie: "
        f"logit gaps {np.round(gaps, 4).tolist()}, kernel noise {noise:.4f}"
    )
    print(f"\n{label}: near-tie at token {i}: gap {np.mean(gaps):.4f} vs noise {noise:.4f}, "
          f"ranked both ways: {ranked_both_ways}")
    return 1
