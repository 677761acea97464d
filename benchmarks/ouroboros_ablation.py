"""Ouroboros hyper-parameters side by side: variants of OuroborosParams against ar and sd.

    python benchmarks/ouroboros_ablation.py '{"default": {}, "no copy": {"copy_match": 0}}' --limit 26
    python benchmarks/ouroboros_ablation.py '{"default": {}, "no candidates": {"candidates": 0}}' --temperature 1
    python benchmarks/ouroboros_ablation.py '{"8": {}, "16": {"max_target_nodes": 16}}' --gated --no-sd \
        --target qwen2.5-coder-1.5b-instruct-q4_k_m --draft qwen2.5-coder-0.5b-instruct-q4_k_m \
        --prompts humaneval-even --limit 10

--gated puts each variant behind the speed gate, as `--method ouroboros` runs it (each its own gate).

Each variant gets its own draft context and pool. All run in one process on the same prompts with the
same seed per prompt, each prompt through ar, sd and every variant in turn, so the speed-ups are ratios
measured under the same load. This is how copy_match and the CPU defaults were chosen.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

from ouroboros_lite.bench import PROMPT_SETS, load_prompts, shipped_prompts
from ouroboros_lite.drafters.adaptive import AdaptiveDrafter
from ouroboros_lite.drafters.ouroboros import OuroborosDrafter, OuroborosParams
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.generate import stream_generate
from ouroboros_lite.pool import PhrasePool
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.sampling import SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", help='JSON: {"name": {OuroborosParams field: value, ...}, ...}')
    parser.add_argument("--target", default="smollm2-135m-instruct-f32")
    parser.add_argument("--draft", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--limit", type=int, default=26)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--prompts", choices=sorted(PROMPT_SETS), default="spec-bench")
    parser.add_argument("--gated", action="store_true", help="each variant behind its own speed gate")
    parser.add_argument("--no-sd", action="store_true", help="leave sd out")
    args = parser.parse_args()
    try:
        variants = {name: replace(OuroborosParams(), **fields) for name, fields in json.loads(args.variants).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        parser.error(f"variants must be a JSON object of OuroborosParams fields: {exc}")

    options = RuntimeOptions(threads=args.threads)
    with Runtime(args.target, args.draft, options=options) as runtime:
        drafters = {"ar": runtime.drafter_for("ar"), **({} if args.no_sd else {"sd": runtime.drafter_for("sd")})}
        for name, params in variants.items():
            pool = PhrasePool(options.ngram - 1, options.pool_capacity)
            drafter = OuroborosDrafter(runtime.draft, pool, n_ctx=runtime.context.n_ctx, threads=args.threads,
                                       params=params, flash_attn=options.flash_attn, kv_type=options.kv_type)
            drafters[name] = AdaptiveDrafter(drafter) if args.gated else drafter
        totals = {name: [0, 0.0] for name in drafters}
        ratios = {name: [] for name in drafters}
        chat = PROMPT_SETS[args.prompts][1]
        for index, (_, text) in enumerate(load_prompts(shipped_prompts(args.prompts), args.limit)):
            prompt = runtime.tokenize_prompt(text, chat=chat)
            speed = {}
            sampling = SamplingParams(temperature=args.temperature, seed=1234 + index)
            for name, drafter in drafters.items():
                last = None
                for last in stream_generate(runtime.target, runtime.verifier, drafter, prompt,
                                            max_tokens=args.n, sampling=sampling):
                    pass
                totals[name][0] += last.generation_tokens - 1
                totals[name][1] += last.generation_seconds
                speed[name] = (last.generation_tokens - 1) / last.generation_seconds
            for name in drafters:
                ratios[name].append(speed[name] / speed["ar"])
        for name in variants:
            drafters[name].close()

    base = totals["ar"][0] / totals["ar"][1]
    print(f"{args.limit} prompts x {args.n} tokens, temperature {args.temperature}, {args.threads} threads")
    for name, (tokens, seconds) in totals.items():
        print(f"{name:20s} {tokens / seconds:6.1f} tok/s {tokens / seconds / base:5.2f}x   per prompt: median "
              f"{statistics.median(ratios[name]):.2f}x, min {min(ratios[name]):.2f}x")


if __name__ == "__main__":
    try:
        main()
    except OuroborosError as exc:
        sys.exit(f"error: {exc}")
