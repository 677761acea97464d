"""What a tree's logits rows cost: ms of one target forward of k tokens with logits on every row (what
tree verification needs), only on the last row (what llama-bench's pp-k and a prompt prefill compute),
and on every other row, medians of 7 interleaved repeats.

    python benchmarks/logit_rows.py [MODEL]   (default: qwen2.5-coder-1.5b-instruct-q4_k_m, 2 threads)
"""

from __future__ import annotations

import statistics
import sys
import time

import llama_cpp

from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime, RuntimeOptions

SIZES = (1, 2, 4, 8, 12, 16)
MODES = ("all", "last", "half")
PREFIX = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def wants_logits(mode: str, i: int, k: int) -> bool:
    return mode == "all" or i == k - 1 or (mode == "half" and i % 2 == 0)


def measure(name: str, repeats: int = 7) -> dict[tuple[int, str], float]:
    """Median seconds per (k, mode); each repeat runs every cell, forwards and backwards in turn."""
    with Runtime(name, None, options=RuntimeOptions(threads=2)) as runtime:
        verifier = runtime.verifier
        prefix = runtime.tokenize_prompt(PREFIX, chat=False)
        verifier.reset()
        verifier.prefill(prefix)
        ctx = verifier.context.handle
        memory = llama_cpp.llama_get_memory(ctx)
        batch = llama_cpp.llama_batch_init(max(SIZES), 0, 1)
        cells = [(k, mode) for k in SIZES for mode in MODES]
        times: dict[tuple[int, str], list[float]] = {cell: [] for cell in cells}
        try:
            for repeat in range(repeats + 1):  # the first pass warms up and is not kept
                for k, mode in cells if repeat % 2 else cells[::-1]:
                    batch.n_tokens = k
                    for i in range(k):
                        batch.token[i], batch.pos[i], batch.n_seq_id[i] = prefix[-1], len(prefix) + i, 1
                        batch.seq_id[i][0], batch.logits[i] = 0, wants_logits(mode, i, k)
                    start = time.perf_counter()
                    if llama_cpp.llama_decode(ctx, batch) != 0:
                        raise OuroborosError(f"llama_decode failed on a batch of {k} tokens")
                    elapsed = time.perf_counter() - start
                    llama_cpp.llama_memory_seq_rm(memory, 0, len(prefix), -1)
                    if repeat:
                        times[(k, mode)].append(elapsed)
        finally:
            llama_cpp.llama_batch_free(batch)
    return {cell: statistics.median(ts) for cell, ts in times.items()}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-1.5b-instruct-q4_k_m"
    median = measure(name)
    one = median[(1, "all")]
    print(name)
    print("k      " + "".join(f"{k:>8d}" for k in SIZES))
    for mode in MODES:
        print(f"{mode:6s} " + "".join(f"{1e3 * median[(k, mode)]:8.1f}" for k in SIZES))
        print("  /T1  " + "".join(f"{median[(k, mode)] / one:8.2f}" for k in SIZES))


if __name__ == "__main__":
    try:
        main()
    except OuroborosError as exc:
        sys.exit(f"error: {exc}")
