"""Our target-only greedy loop next to llama-cpp-python's own `Llama` greedy generation.

    python benchmarks/ar_vs_llama.py -n 128 --prompts 3

Same model file, threads, flash attention and prompts; the two alternate prompt by prompt so
machine noise hits both. tok/s counts generated tokens after the first over the time after it.
"""

from __future__ import annotations

import argparse
import time

from llama_cpp import Llama

from ouroboros_lite.backend import apply_repack_to_llama_cpp_python
from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.catalog import pull
from ouroboros_lite.runtime import Runtime, RuntimeOptions


def llama_tps(llm: Llama, tokens: list[int], n: int) -> tuple[list[int], float]:
    out, first = [], None
    llm.reset()
    for token in llm.generate(tokens, temp=0.0, top_k=1, repeat_penalty=1.0):
        out.append(token)
        first = first or time.perf_counter()
        if len(out) >= n:  # n = how many our loop produced (it stops at end-of-generation)
            break
    return out, (len(out) - 1) / (time.perf_counter() - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="smollm2-135m-instruct-f32,smollm2-135m-instruct-q4_1")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    apply_repack_to_llama_cpp_python("auto")  # Llama would crash where ggml's AMX path is active
    prompts = [p for _, p in load_prompts(default_prompts(), args.prompts)]
    print(f"{'model':34s} {'ours tok/s':>10s} {'Llama tok/s':>12s} {'ratio':>6s} same tokens")
    for name in args.models.split(","):
        path = pull(name)
        options = RuntimeOptions(threads=args.threads, n_ctx=2048, flash_attn=True)
        with Runtime(path, options=options) as runtime:
            llm = Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                        flash_attn=True, verbose=False)
            ours_tps, theirs_tps, same = [], [], True
            for prompt in prompts:
                tokens = runtime.tokenize_prompt(prompt, chat=True)
                last, ours = None, []
                for response in runtime.generate(tokens, max_tokens=args.n):
                    ours.append(response.token)
                    last = response
                ours_tps.append(last.generation_tps)
                theirs, tps = llama_tps(llm, tokens, len(ours))
                theirs_tps.append(tps)
                same &= theirs == ours
            llm.close()
        a, b = sum(ours_tps) / len(ours_tps), sum(theirs_tps) / len(theirs_tps)
        print(f"{name:34s} {a:10.1f} {b:12.1f} {a / b:6.2f} {same}")


if __name__ == "__main__":
    main()
