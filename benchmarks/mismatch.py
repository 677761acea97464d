"""Replay one bench prompt where a method's text left ar's, and measure the divergence.

    python benchmarks/mismatch.py --prompts humaneval-even --index 0 --temperature 1.0 --tries 3

Loads the pair, runs ar twice (it must agree with itself) and the method `--tries` times on the prompt
with the seed bench gives it (1234 + index), and for each divergence prints the tie check
(ouroboros_lite.ties) and the text on either side. The gate decides from timings, so a divergence that
depends on one cycle's tree may show on some tries only.
"""

from __future__ import annotations

import argparse

from ouroboros_lite.bench import PROMPT_SETS, load_prompts, run_method, shipped_prompts
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.sampling import GREEDY, SamplingParams
from ouroboros_lite.ties import check_tie, first_difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    parser.add_argument("--prompts", default="spec-bench", choices=sorted(PROMPT_SETS))
    parser.add_argument("--limit", type=int, default=26, help="bench's --limit (it decides the prompt order)")
    parser.add_argument("--index", type=int, required=True, help="the prompt's index in bench's table")
    parser.add_argument("--method", default="ouroboros")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args()
    _, text = load_prompts(shipped_prompts(args.prompts), args.limit)[args.index]
    sampling = SamplingParams(temperature=args.temperature, seed=1234 + args.index) if args.temperature > 0 else GREEDY
    with Runtime(args.model, args.draft, method="ar", options=RuntimeOptions(threads=args.threads)) as runtime:
        runtime.drafter_for(args.method)
        tokens = runtime.tokenize_prompt(text, chat=PROMPT_SETS[args.prompts][1])
        reference, _ = run_method(runtime, tokens, "ar", args.n, sampling)
        again, _ = run_method(runtime, tokens, "ar", args.n, sampling)
        print(f"ar: {len(reference)} tokens, the same twice: {again == reference}")
        for attempt in range(args.tries):
            generated, _ = run_method(runtime, tokens, args.method, args.n, sampling)
            i = first_difference(reference, generated)
            print(f"{args.method} try {attempt + 1}: {len(generated)} tokens, "
                  + ("same text as ar" if i is None else f"differs at token {i}"))
            if i is None:
                continue
            tie = check_tie(runtime.verifier, tokens, reference, generated, sampling)
            print("   ", tie.describe() if tie else "only the length differs (one stopped earlier)")
            for name, ids in (("ar", reference), (args.method, generated)):
                print(f"    {name:10s} ...{runtime.target.detokenize(ids[max(0, i - 6):i + 2])!r}")


if __name__ == "__main__":
    main()
