"""Load on `ouroboros-lite serve`: 1, 2, 4 and 8 concurrent clients, for `ar` and the default method.

    python benchmarks/serve_load.py --model smollm2-135m-instruct-q4_1 -n 64 --requests 8

For each method it starts a server (--parallel = the most clients, so nobody waits for a slot),
sends one warm-up request, then for each client count runs that many threads, each sending streamed
chat requests over Spec-Bench prompts (greedy) until `--requests` requests per level are done.
Reported per level: requests/s, aggregate tok/s (generated tokens over the wall time), p50/p95
time to first token, median per-request tok/s (tokens after the first over the time from the first
to the last), and the single-client speed-up of the method over `ar`; with --compare-generate also
the speed-up on the same prompts without the server, which the server's should stay within 5 % of.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ouroboros_lite.bench import default_prompts, load_prompts
from ouroboros_lite.catalog import resolve_model


@dataclass
class Result:
    ttft: float
    tokens: int
    decode_tps: float


def start_server(model: Path, draft: Path | None, method: str, parallel: int, threads: int,
                 ctx: int) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "ouroboros_lite", "serve", "--model", str(model), "--draft", str(draft or "none"),
            "--method", method, "--port", "0", "--parallel", str(parallel), "-t", str(threads), "-c", str(ctx),
            "--no-warm-pool"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        match = re.search(r"(http://\S+/v1)", line)
        if match:
            return proc, match.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def one_request(url: str, prompt: str, max_tokens: int) -> Result:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, first, last, tokens = time.perf_counter(), None, None, 0
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                last = time.perf_counter()
                first = first or last
    first, last = first or time.perf_counter(), last or time.perf_counter()
    return Result(first - start, tokens, (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0)


def run_level(url: str, prompts: list[str], clients: int, requests: int, max_tokens: int):
    todo = list(range(requests))
    lock, results = threading.Lock(), []

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            result = one_request(url, prompts[i % len(prompts)], max_tokens)
            with lock:
                results.append(result)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, results


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct-q4_1")
    parser.add_argument("--draft", default=None, help="draft model (default: none)")
    parser.add_argument("--methods", default="ar,ouroboros")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--requests", type=int, default=8, help="requests per level (at least the client count)")
    parser.add_argument("-n", "--max-tokens", type=int, default=64)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-c", "--ctx-size", type=int, default=1024)
    parser.add_argument("--compare-generate", action="store_true",
                        help="also measure the methods without the server (the speed-up the server should keep)")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    prompts = [p for _, p in load_prompts(default_prompts(), 16)]
    model = resolve_model(args.model)
    draft = resolve_model(args.draft) if args.draft else None
    print(f"model {model.name}{' + draft ' + draft.name if draft else ''}, {args.max_tokens} tokens per request, greedy, -t {args.threads}")
    print("| method | clients | requests | req/s | aggregate tok/s | TTFT p50 s | TTFT p95 s | per-request tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    single = {}
    for method in args.methods.split(","):
        proc, url = start_server(model, draft, method, max(levels), args.threads, args.ctx_size)
        try:
            one_request(url, prompts[0], 8)  # warm-up: the first decode allocates compute buffers
            for clients in levels:
                wall, results = run_level(url, prompts, clients, max(args.requests, clients), args.max_tokens)
                tokens = sum(r.tokens for r in results)
                per_request = statistics.median(r.decode_tps for r in results)
                ttfts = [r.ttft for r in results]
                if clients == 1:
                    single[method] = per_request
                print(f"| {method} | {clients} | {len(results)} | {len(results) / wall:.2f} | {tokens / wall:.1f} | "
                      f"{percentile(ttfts, 0.5):.3f} | {percentile(ttfts, 0.95):.3f} | {per_request:.1f} |",
                      flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
    for method, tps in single.items():
        if method != "ar" and single.get("ar"):
            print(f"single client through the server: {method} {tps / single['ar']:.2f}x ar per request")
    if args.compare_generate:
        direct = generate_speeds(model, draft, args.methods.split(","), prompts[:args.requests], args)
        for method, tps in direct.items():
            if method != "ar" and direct.get("ar"):
                print(f"the same prompts through Engine.chat (what `generate --chat` runs): "
                      f"{method} {tps / direct['ar']:.2f}x ar per request")


def generate_speeds(model: Path, draft: Path | None, methods: list[str], prompts: list[str],
                    args) -> dict[str, float]:
    """Median per-request tok/s of each method without the server, in this process."""
    from ouroboros_lite import Engine

    speeds = {}
    for method in methods:
        with Engine(target=model, draft=draft, method=method, threads=args.threads, n_ctx=args.ctx_size) as engine:
            engine.chat([{"role": "user", "content": prompts[0]}], max_tokens=8)  # warm-up, as the server's
            runs = [engine.chat([{"role": "user", "content": p}], max_tokens=args.max_tokens, temperature=0.0)
                    for p in prompts]
            speeds[method] = statistics.median(r.tokens_per_second for r in runs)
    return speeds


if __name__ == "__main__":
    main()
