"""How much of the network's cost speculation hides: the target local, then on a ggml-rpc-server over
loopback with 0, 1 and 5 ms added round trip, for `ar` and `ouroboros` (draft local).

    python benchmarks/rpc.py --model smollm2-135m-instruct-f32 --draft smollm2-135m-instruct-q4_1 --limit 4 -n 64
    python benchmarks/rpc.py --model qwen2.5-coder-1.5b-instruct-q4_k_m --draft qwen2.5-coder-0.5b-instruct-q4_k_m

Needs root (it makes network namespaces with `ip netns` and delays their loopback with `tc netem`), a
llama-cpp-python built with GGML_RPC=on and ggml-rpc-server (built once into the cache if missing).
Each RPC condition runs in a namespace of its own: one ggml-rpc-server (-t THREADS) holds all the
target's layers, and a child process of this script loads the pair there (the draft on this CPU) and
generates greedily, `ar` and `ouroboros` interleaved per prompt. netem delays every packet leaving the
namespace's loopback by half the round trip, so a request and its answer take one round trip. The
conditions run one after another, `--rounds` times, and the table keeps each one's median.

Columns: median tok/s over prompts; target forwards per generated token; the time per token over the
local run's (what RPC adds: the round trips, serialising inputs and logits, and the server's own
graph scheduling); and `network share` = 1 - local s/token / this s/token, the part of each token's
time the remote target costs beyond computing it here. Every condition's greedy text is checked
against the local `ar` text (exactness over RPC)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONDITIONS = (("local", None), ("rpc loopback", 0.0), ("rpc rtt 1 ms", 1.0), ("rpc rtt 5 ms", 5.0))
METHODS = ("ar", "ouroboros")
PORT = 50052


def child(args) -> None:
    """Generate in this process (inside a namespace for RPC) and print one JSON line per run."""
    from ouroboros_lite.bench import default_prompts, load_prompts
    from ouroboros_lite.runtime import Runtime, RuntimeOptions

    prompts = load_prompts(default_prompts(), args.limit)
    options = RuntimeOptions(threads=args.threads, rpc=args.rpc or None)
    with Runtime(args.model, args.draft, method="ar", options=options) as runtime:
        warm = runtime.tokenize_prompt("Hello", chat=True)
        for method in METHODS:
            for _ in runtime.generate(warm, max_tokens=8, method=method):
                pass
        for name, text in prompts:
            tokens = runtime.tokenize_prompt(text, chat=True)
            for method in METHODS:
                ids, last = [], None
                for response in runtime.generate(tokens, max_tokens=args.n, method=method):
                    ids.append(response.token)
                    last = response
                print(json.dumps({"prompt": name, "method": method, "tps": last.generation_tps,
                                  "seconds": last.generation_seconds, "tokens": last.generation_tokens,
                                  "forwards": last.spec.target_forwards, "ids": ids}), flush=True)


def run_condition(args, rtt_ms: float | None, binary: Path) -> list[dict]:
    command = [sys.executable, __file__, "--child", "--model", str(args.model), "--limit", str(args.limit),
               "-n", str(args.n), "-t", str(args.threads)] + (["--draft", str(args.draft)] if args.draft else [])
    if rtt_ms is None:
        return _rows(subprocess.run(command, capture_output=True, text=True, check=False))
    namespace = f"ouro-rpc-{os.getpid()}"
    in_ns = ["ip", "netns", "exec", namespace]
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    server = None
    try:
        subprocess.run([*in_ns, "ip", "link", "set", "lo", "up"], check=True)
        if rtt_ms > 0:
            subprocess.run([*in_ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
                            f"{rtt_ms / 2}ms"], check=True)
        server = subprocess.Popen([*in_ns, str(binary), "-H", "127.0.0.1", "-p", str(PORT), "-t", str(args.threads)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return _rows(subprocess.run([*in_ns, *command, "--rpc", f"127.0.0.1:{PORT}"], capture_output=True,
                                    text=True, check=False))
    finally:
        if server is not None:
            server.kill()
            server.wait(10)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


def _rows(done: subprocess.CompletedProcess) -> list[dict]:
    if done.returncode != 0:
        sys.exit(f"rpc.py: a run failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct-f32")
    parser.add_argument("--draft", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--limit", type=int, default=4, help="Spec-Bench prompts (4)")
    parser.add_argument("-n", type=int, default=64, help="tokens per generation (64)")
    parser.add_argument("-t", "--threads", type=int, default=2, help="threads, here and on the server (2)")
    parser.add_argument("--rounds", type=int, default=1, help="times each condition runs (1)")
    parser.add_argument("--rpc", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from ouroboros_lite.catalog import resolve_model

    args.model = resolve_model(args.model)
    args.draft = resolve_model(args.draft) if args.draft and args.draft != "none" else None
    if args.child:
        return child(args)
    if os.geteuid() != 0:
        sys.exit("rpc.py: needs root for `ip netns` and `tc netem`")
    from ouroboros_lite.llamacpp_tools import build

    binary = build(("ggml-rpc-server",))["ggml-rpc-server"]
    print(f"uptime: {os.getloadavg()[0]:.2f} load; {args.model.name} + {args.draft.name if args.draft else 'no draft'}; "
          f"{args.limit} prompts x {args.n} tokens, {args.threads} threads", file=sys.stderr)
    runs: dict[str, list[list[dict]]] = {name: [] for name, _ in CONDITIONS}
    for round_ in range(args.rounds):
        for name, rtt in CONDITIONS:
            print(f"round {round_ + 1}: {name} ...", file=sys.stderr)
            runs[name].append(run_condition(args, rtt, binary))
    reference = {row["prompt"]: row["ids"] for row in runs["local"][0] if row["method"] == "ar"}
    local_spt = {}
    print(f"\n| condition | method | tok/s | target forwards / token | s/token vs local | network share | exact |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in CONDITIONS:
        for method in METHODS:
            rows = [row for run in runs[name] for row in run if row["method"] == method]
            tps = statistics.median(row["tps"] for row in rows)
            spt = statistics.median(row["seconds"] / max(row["tokens"] - 1, 1) for row in rows)
            fpt = sum(row["forwards"] for row in rows) / sum(row["tokens"] for row in rows)
            exact = sum(row["ids"] == reference[row["prompt"]] for row in rows)
            local_spt.setdefault(method, spt)
            ratio = spt / local_spt[method]
            share = 1 - local_spt[method] / spt
            print(f"| {name} | {method} | {tps:.1f} | {fpt:.2f} | {ratio:.2f}x | {share:.0%} | {exact}/{len(rows)} |")


if __name__ == "__main__":
    main()
