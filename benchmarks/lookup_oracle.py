"""Which context-copy rule pays on this machine: replay rules offline against real greedy outputs.

    python benchmarks/lookup_oracle.py --limit 39 -n 128

Runs `ar` once per prompt, measures the target's batch-cost curve (as `ouroboros-lite tune` does),
then replays each rule "after an n-token match (min_n <= n <= 6), copy L(n) tokens" over the
outputs: per cycle it charges one target batch of 1 + L tokens and advances by the copied tokens
that match the output, plus the target's own. It prints the speed-up each rule would give over
`ar` in the cost model (no Python overhead), overall and per category. This is what chose
min_n = 2 and L = n + 2 for ngram.ContextIndex; bench measures the real thing.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.costs import CostProfile, measure_curve
from ouroboros_lite.ngram import ContextIndex
from ouroboros_lite.runtime import Runtime, RuntimeOptions

RULES = {  # name -> (min_n, copy length after an n-token match)
    "n>=1, copy 8 (classic prompt lookup)": (1, lambda n: 8),
    "n>=1, copy n+2": (1, lambda n: n + 2),
    "n>=2, copy 3": (2, lambda n: 3),
    "n>=2, copy n+2": (2, lambda n: n + 2),
    "n>=2, copy 8": (2, lambda n: 8),
    "n>=3, copy n+2": (3, lambda n: n + 2),
    "n>=4, copy n+2": (4, lambda n: n + 2),
}


def replay(prompt: list[int], output: list[int], min_n: int, length, cost) -> tuple[int, float]:
    """(tokens after the first, cost in single-token target steps) of decoding `output` by the rule."""
    index = ContextIndex(min_n=min_n, max_n=6)
    i, spent = 1, 0.0
    while i < len(output):
        history = prompt + output[:i]
        index.sync(history)
        copied, n = index.continuation(history, max_length=64, extra=64)
        copied = copied[:length(n)] if n else []
        accepted = 0
        while accepted < len(copied) and i + accepted < len(output) and copied[accepted] == output[i + accepted]:
            accepted += 1
        spent += cost(1 + len(copied))
        i += accepted + 1
    return len(output) - 1, spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="smollm2-135m-instruct-f32")
    parser.add_argument("--limit", type=int, default=39)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    with Runtime(args.target, options=RuntimeOptions(threads=args.threads)) as runtime:
        prompts = load_prompts(default_prompts(), args.limit)
        runs = []
        for category, text in prompts:
            tokens = runtime.tokenize_prompt(text, chat=True)
            output = [r.token for r in runtime.generate(tokens, max_tokens=args.n, method="ar") if r.token >= 0]
            runs.append((category, tokens, output))
        profile = CostProfile(source="this machine", target=measure_curve(runtime.verifier, runs[0][1]), draft={})
    one = profile.target_step(1)
    print("target batch cost, x one token: " + ", ".join(
        f"{k}: {profile.target[k] / profile.target[1]:.2f}" for k in sorted(profile.target)))
    for name, (min_n, length) in RULES.items():
        totals, by_category = [0, 0.0], defaultdict(lambda: [0, 0.0])
        for category, prompt, output in runs:
            tokens, spent = replay(prompt, output, min_n, length, lambda k: profile.target_step(k) / one)
            for bucket in (totals, by_category[category]):
                bucket[0] += tokens
                bucket[1] += spent
        detail = " ".join(f"{c[:8]} {t / s:.2f}" for c, (t, s) in by_category.items())
        print(f"{name:38s} {totals[0] / totals[1]:.2f}x   {detail}")


if __name__ == "__main__":
    main()
