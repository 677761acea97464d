"""Where the decode loop's time goes: target forwards, draft forwards, everything else (Python).

    python benchmarks/profile_decode.py --methods ar,sd,ouroboros --limit 6 -n 128

Wraps the three places that call llama_decode (TreeVerifier.decode / prefill on the target or the
draft context, and the sd drafter's chain decode) with timers; the rest of the wall time is the
Python loop (tree building, acceptance bookkeeping, pool updates, detokenizing).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.drafters.draft_model import DraftModelDrafter
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.verify import TreeVerifier

spent: dict[str, float] = defaultdict(float)


def timed(function, label_of):
    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return function(self, *args, **kwargs)
        finally:
            spent[label_of(self)] += time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="smollm2-135m-instruct-f32")
    parser.add_argument("--draft", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--methods", default="ar,sd,ouroboros")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()

    with Runtime(args.target, args.draft, options=RuntimeOptions(threads=args.threads)) as runtime:
        def which(verifier):
            return "target forward" if verifier is runtime.verifier else "draft forward"

        TreeVerifier.decode = timed(TreeVerifier.decode, which)
        TreeVerifier.prefill = timed(TreeVerifier.prefill, lambda v: "prefill (" + which(v).split()[0] + ")")
        DraftModelDrafter._decode = timed(DraftModelDrafter._decode, lambda d: "draft forward")
        prompts = [runtime.tokenize_prompt(p, chat=True) for _, p in load_prompts(default_prompts(), args.limit)]
        print(f"{'method':10s} {'wall s':>7s} {'tok/s':>6s}  share of wall time")
        for method in args.methods.split(","):
            spent.clear()
            tokens, start = 0, time.perf_counter()
            for prompt in prompts:
                tokens += sum(1 for r in runtime.generate(prompt, max_tokens=args.n, method=method) if r.token >= 0)
            wall = time.perf_counter() - start
            spent["python and the rest"] = wall - sum(spent.values())
            shares = ", ".join(f"{k} {v / wall:.0%}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1]))
            print(f"{method:10s} {wall:7.1f} {tokens / wall:6.1f}  {shares}")


if __name__ == "__main__":
    main()
