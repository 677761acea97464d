"""What CPU weight repacking costs or saves here: plain greedy decoding (ar) with repack on and off.

    python benchmarks/repack.py --model qwen2.5-coder-1.5b-instruct-q4_k_m --prompts 4 -n 64

The two runtimes load the same file, one with llama.cpp's extra buffer types (repacked weights) and
one without (`--no-repack`), and alternate prompt by prompt so machine noise hits both. "auto" picks
on unless ggml's AMX path is active (it crashes batched decoding there, so "on" is not measured then).
"""

from __future__ import annotations

import argparse
import statistics

from ouroboros_lite.backend import amx_active, system_info, use_extra_buffers
from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.catalog import resolve_model
from ouroboros_lite.runtime import Runtime, RuntimeOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-t", "--threads", type=int, default=2)
    args = parser.parse_args()
    info = system_info()
    if amx_active(info):
        print("ggml's AMX path is active on this CPU: repack on would crash batched decoding; auto = off")
        return
    path = resolve_model(args.model)
    prompts = [p for _, p in load_prompts(default_prompts(), args.prompts)]
    runtimes = {setting: Runtime(path, options=RuntimeOptions(threads=args.threads, repack=setting))
                for setting in ("on", "off")}
    speeds = {setting: {"prompt": [], "generation": []} for setting in runtimes}
    for prompt in prompts:
        for setting, runtime in runtimes.items():
            tokens = runtime.tokenize_prompt(prompt, chat=True)
            last = None
            for last in runtime.generate(tokens, max_tokens=args.n):
                pass
            speeds[setting]["prompt"].append(last.prompt_tps)
            speeds[setting]["generation"].append(last.generation_tps)
    for runtime in runtimes.values():
        runtime.close()
    auto = "on" if use_extra_buffers(info, "auto") else "off"
    print(f"{path.name}, {args.threads} threads, {len(prompts)} prompts x {args.n} tokens (auto = {auto} here)")
    print(f"{'repack':7s} {'prompt tok/s':>13s} {'gen tok/s':>10s}")
    for setting, s in speeds.items():
        print(f"{setting:7s} {statistics.median(s['prompt']):13.1f} {statistics.median(s['generation']):10.2f}")
    on, off = (statistics.median(speeds[k]["generation"]) for k in ("on", "off"))
    print(f"generation with repack on / off: {on / off:.3f}x")


if __name__ == "__main__":
    main()
