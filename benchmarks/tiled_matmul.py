"""What ggml's tiled K-quant matmul (GGML_CPU_TILED_MM, `--no-tiled-mm`) costs or saves here.

ggml (the llama.cpp of llama-cpp-python 0.3.36, ggml-cpu/tiled/tiled.cpp) multiplies every CPU batch
of 8 or more tokens by K-quant weights outside the repack buffers with its tiled kernels, which unpack
the weights on every call; below 8 tokens the per-row dot products run. A verification tree needs the
logits of every node, so the output layer (Q6_K on Qwen2.5-Coder-1.5B Q4_K_M) takes the tiled path
for trees of 8+ tokens, while a prompt needs only its last row's. ggml reads the switch once per
process, so each setting runs in its own child process, the two alternating for --rounds rounds:
- the target's batch-cost curve (one chain forward of k tokens with every row's logits);
- prompt speed (tok/s of each prompt's prefill) and generation speed (ar) on a few prompts.

    python benchmarks/tiled_matmul.py --model qwen2.5-coder-1.5b-instruct-q4_k_m --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from draft_limits import print_curve  # benchmarks/ is this script's path

SIZES = (1, 2, 4, 7, 8, 9, 12, 16)


def child(args) -> None:
    from ouroboros_lite.bench import default_prompts, load_prompts
    from ouroboros_lite.catalog import resolve_model
    from ouroboros_lite.costs import measure_curve
    from ouroboros_lite.runtime import Runtime, RuntimeOptions

    options = RuntimeOptions(threads=args.threads, tiled_matmul=args.child == "on")
    with Runtime(resolve_model(args.model), options=options) as runtime:
        prompts = [runtime.tokenize_prompt(p, chat=True) for _, p in load_prompts(default_prompts(), args.prompts)]
        prompt_tps, generation_tps = [], []
        for tokens in prompts:
            last = None
            for last in runtime.generate(tokens, max_tokens=args.n):
                pass
            prompt_tps.append(last.prompt_tps)
            generation_tps.append(last.generation_tps)
        curve = measure_curve(runtime.verifier, prompts[0], sizes=SIZES, repeats=args.repeats)
    print(json.dumps({"env": os.environ.get("GGML_CPU_TILED_MM"), "curve": curve,
                      "prompt_tps": statistics.median(prompt_tps), "generation_tps": statistics.median(generation_tps),
                      "prompt_tokens": statistics.median(len(t) for t in prompts)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct-q4_k_m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("-n", type=int, default=32, help="tokens generated per prompt (ar)")
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of the curve in each child (5)")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per setting, alternating (3)")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    env = {k: v for k, v in os.environ.items() if k != "GGML_CPU_TILED_MM"}  # each child decides for itself
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for setting in runs:
            command = [sys.executable, __file__, "--child", setting, "--model", args.model, "--prompts",
                       str(args.prompts), "-n", str(args.n), "-t", str(args.threads), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs["off"][0]["env"] == "0" and runs["on"][0]["env"] is None
    print(f"{args.model}, {args.threads} threads, {args.rounds} rounds x {args.repeats} repeats; prompts: "
          f"{args.prompts} x median {runs['on'][0]['prompt_tokens']:.0f} tokens, then {args.n} tokens of ar")
    curves = {s: {k: statistics.median(r["curve"][str(k)] for r in rs) * 1e3 for k in SIZES} for s, rs in runs.items()}
    print("one forward of k tokens with every row's logits, ms (median of the rounds' medians):")
    for setting, curve in curves.items():
        print_curve(setting, curve)
    print("   off / on      " + "".join(f"{curves['off'][k] / curves['on'][k]:7.2f}" for k in SIZES))
    for key, label in (("prompt_tps", "prompt tok/s"), ("generation_tps", "generation tok/s")):
        on, off = (statistics.median(r[key] for r in runs[s]) for s in ("on", "off"))
        print(f"{label:17s} on {on:6.1f}  off {off:6.1f}  off / on {off / on:.2f}")


if __name__ == "__main__":
    main()
