"""What CPU weight repacking costs or saves here: greedy decoding (ar) and the batch-cost curve that
tree verification pays, with the CPU repack this machine can run and with none (`--no-repack`).

    python benchmarks/repack.py --model qwen2.5-coder-1.5b-instruct-q4_k_m --prompts 4 -n 64

The two runtimes load the same file and alternate prompt by prompt, and the points of the two batch
curves (one forward of k tokens, every row's logits, as a tree verification asks) are measured in
alternating order, so machine noise hits both. The repack measured is what auto loads as here
(backend.cpu_weight_setting): "on" (llama.cpp's extra buffers) on most CPUs; "amx" (Q4_K weights in
the AMX buffer) on AMX CPUs whose build's AMX kernels work; where they crash (GCC 12 builds), "avx2"
(the Q4_0/Q4_K weights in CPU_REPACK without the AMX buffer, cpu_repack.py). --setting picks another.
"""

from __future__ import annotations

import argparse
import statistics

from draft_limits import (  # benchmarks/ is this script's path
    TARGET_SIZES,
    cost_curves,
    print_curve,
)

from ouroboros_lite.backend import cpu_weight_setting, system_info
from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.catalog import resolve_model
from ouroboros_lite.runtime import Runtime, RuntimeOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of the batch curves (7)")
    parser.add_argument("--setting", choices=("on", "avx2", "amx"),
                        help="the repack to measure against off (default: auto's choice here, avx2 where "
                             "that is off)")
    args = parser.parse_args()
    info = system_info()
    path = resolve_model(args.model)
    prompts = [p for _, p in load_prompts(default_prompts(), args.prompts)]
    auto = cpu_weight_setting(info, "auto")
    repacked = args.setting or ("avx2" if auto == "off" else auto)
    runtimes = {setting: Runtime(path, options=RuntimeOptions(threads=args.threads, repack=setting))
                for setting in (repacked, "off")}
    speeds = {setting: {"prompt": [], "generation": []} for setting in runtimes}
    for prompt in prompts:
        for setting, runtime in runtimes.items():
            tokens = runtime.tokenize_prompt(prompt, chat=True)
            last = None
            for last in runtime.generate(tokens, max_tokens=args.n):
                pass
            speeds[setting]["prompt"].append(last.prompt_tps)
            speeds[setting]["generation"].append(last.generation_tps)
    prefix = runtimes["off"].tokenize_prompt(prompts[0], chat=True)
    sizes = tuple(k for k in TARGET_SIZES if k - 1 <= runtimes["off"].verifier.max_nodes)
    curves = cost_curves({setting: (runtime.verifier, sizes) for setting, runtime in runtimes.items()},
                         prefix, args.repeats)
    for runtime in runtimes.values():
        runtime.close()
    print(f"{path.name}, {args.threads} threads, {len(prompts)} prompts x {args.n} tokens "
          f"(auto = {auto} here)")
    print(f"{'repack':7s} {'prompt tok/s':>13s} {'gen tok/s':>10s}")
    for setting, s in speeds.items():
        print(f"{setting:7s} {statistics.median(s['prompt']):13.1f} {statistics.median(s['generation']):10.2f}")
    on, off = (statistics.median(speeds[k]["generation"]) for k in (repacked, "off"))
    print(f"generation with repack {repacked} / off: {on / off:.3f}x")
    print(f"one forward of k tokens, ms (medians of {args.repeats} interleaved repeats):")
    for setting, curve in curves.items():
        print_curve(setting, curve)
    print(f"batch cost {repacked} / off:  " + "".join(f"{curves[repacked][k] / curves['off'][k]:7.2f}" for k in sizes))


if __name__ == "__main__":
    main()
