"""What one `ouroboros-lite generate` sees: every generation in freshly loaded models (a new process's
speed gate, which has measured nothing), against `ar`, interleaved per prompt.

    python benchmarks/first_generation.py --limit 8 -n 128

Per prompt, three generations, each in its own `Runtime` (models loaded anew, load time not counted):
- ar: plain decoding;
- cold: the default method with an empty phrase pool and no saved gate estimates (a first run ever);
- saved: the default method starting from the pool and gate file the previous prompts' `saved`
  runs left in a scratch directory (what the CLI's warm pool does from its second run on).
Prints tok/s per prompt and the median ratios; greedy, so all three must give the same text
(a difference is reported, with the position).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from ouroboros_lite.bench import PROMPT_SETS, load_prompts, shipped_prompts
from ouroboros_lite.errors import OuroborosError
from ouroboros_lite.runtime import Runtime, RuntimeOptions
from ouroboros_lite.ties import first_difference


def generation(target: str, draft: str, method: str, prompt: str, chat: bool, n: int, threads: int,
               pool: Path | None) -> tuple[list[int], float]:
    with Runtime(target, draft, method=method, options=RuntimeOptions(threads=threads)) as runtime:
        if pool is not None and runtime.has_pool(method):
            runtime.load_pool(pool)
        tokens = runtime.tokenize_prompt(prompt, chat=chat)
        last, output = None, []
        for response in runtime.generate(tokens, max_tokens=n):
            last = response
            if response.token >= 0:
                output.append(response.token)
        if pool is not None and runtime.has_pool(method):
            runtime.save_pool(pool)
    return output, last.generation_tps if last else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    parser.add_argument("--method", default="ouroboros")
    parser.add_argument("--prompts", choices=sorted(PROMPT_SETS), default="humaneval-even")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("-n", type=int, default=128)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    chat = PROMPT_SETS[args.prompts][1]
    prompts = load_prompts(shipped_prompts(args.prompts), args.limit)
    ratios: dict[str, list[float]] = {"cold": [], "saved": []}
    with tempfile.TemporaryDirectory() as scratch:
        saved_pool, cold_pool = Path(scratch) / "saved.pool", Path(scratch) / "cold.pool"
        print(f"{'prompt':>6s} {'ar tok/s':>9s} {'cold':>7s} {'saved':>7s}")
        for index, (_, prompt) in enumerate(prompts):
            reference, ar = generation(args.target, args.draft, "ar", prompt, chat, args.n, args.threads, None)
            cold_pool.unlink(missing_ok=True)
            Path(f"{cold_pool}.gate.json").unlink(missing_ok=True)
            row = {}
            for name, pool in (("cold", cold_pool), ("saved", saved_pool)):
                output, tps = generation(args.target, args.draft, args.method, prompt, chat, args.n,
                                         args.threads, pool)
                row[name] = tps / ar
                ratios[name].append(tps / ar)
                at = first_difference(output, reference)
                if at is not None:
                    print(f"  prompt {index} {name}: differs from ar at token {at} (check it with benchmarks/mismatch.py)")
            print(f"{index:6d} {ar:9.2f} {row['cold']:6.2f}x {row['saved']:6.2f}x", flush=True)
    print(f"median: cold {statistics.median(ratios['cold']):.2f}x (min {min(ratios['cold']):.2f}x), "
          f"saved {statistics.median(ratios['saved']):.2f}x (min {min(ratios['saved']):.2f}x) ar")


if __name__ == "__main__":
    try:
        main()
    except OuroborosError as exc:
        sys.exit(f"error: {exc}")
