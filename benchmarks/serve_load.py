"""Load on `ouroboros-lite serve`: 1, 2, 4 and 8 concurrent clients, for `ar` and the default method.

    python benchmarks/serve_load.py --model smollm2-135m-instruct-q4_1 -n 64 --requests 8

It starts a server per method (--parallel = the most clients, so nobody waits for a slot), all at
once (an idle one costs no CPU), sends each a warm-up request, then for each method and client count
runs that many threads, each sending streamed chat requests over Spec-Bench prompts (greedy) until
`--requests` requests per level are done.
Reported per level: requests/s, aggregate tok/s (generated tokens over the wall time), p50/p95
time to first token, median per-request tok/s (tokens after the first over the time from the first
to the last). With --compare-generate, the single-client speed-up of each method over `ar` through
the server and through Engine.chat on the same prompts, all four interleaved per prompt: the
server's should stay within 5 % of Engine's.
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
    methods = args.methods.split(",")
    servers = {}
    try:
        for method in methods:  # all started at once: an idle server costs no CPU, and the comparison interleaves them
            servers[method] = start_server(model, draft, method, max(levels), args.threads, args.ctx_size)
            one_request(servers[method][1], prompts[0], 8)  # warm-up: the first decode allocates compute buffers
        for method in methods:
            for clients in levels:
                wall, results = run_level(servers[method][1], prompts, clients, max(args.requests, clients),
                                          args.max_tokens)
                tokens = sum(r.tokens for r in results)
                per_request = statistics.median(r.decode_tps for r in results)
                ttfts = [r.ttft for r in results]
                print(f"| {method} | {clients} | {len(results)} | {len(results) / wall:.2f} | {tokens / wall:.1f} | "
                      f"{percentile(ttfts, 0.5):.3f} | {percentile(ttfts, 0.95):.3f} | {per_request:.1f} |",
                      flush=True)
        if args.compare_generate and "ar" in methods and len(methods) > 1:
            compare_with_engine({m: url for m, (_, url) in servers.items()}, model, draft, methods,
                                prompts[:args.requests], args)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(60)


def compare_with_engine(urls: dict[str, str], model: Path, draft: Path | None, methods: list[str],
                        prompts: list[str], args) -> None:
    """The single-client speed-up over ar through the server and through Engine.chat (what
    `generate --chat` runs) on the same prompts, interleaved per prompt (server ar, server method,
    Engine ar, Engine method), so that drift in the machine's load hits both alike: the median of the
    per-prompt ratios."""
    from ouroboros_lite import Engine

    engines = {m: Engine(target=model, draft=draft, method=m, threads=args.threads, n_ctx=args.ctx_size)
               for m in methods}
    try:
        for engine in engines.values():
            engine.chat([{"role": "user", "content": prompts[0]}], max_tokens=8)  # warm-up, as the server's
        served = {m: [] for m in methods}
        direct = {m: [] for m in methods}
        for prompt in prompts:
            for m in methods:
                served[m].append(one_request(urls[m], prompt, args.max_tokens).decode_tps)
            for m in methods:
                reply = engines[m].chat([{"role": "user", "content": prompt}], max_tokens=args.max_tokens,
                                        temperature=0.0)
                direct[m].append(reply.tokens_per_second)
    finally:
        for engine in engines.values():
            engine.close()
    for m in methods:
        if m == "ar":
            continue
        through_server = statistics.median(a / b for a, b in zip(served[m], served["ar"]) if b)
        through_engine = statistics.median(a / b for a, b in zip(direct[m], direct["ar"]) if b)
        print(f"single client, {len(prompts)} prompts interleaved: {m} {through_server:.2f}x ar through the "
              f"server, {through_engine:.2f}x through Engine.chat (what `generate --chat` runs); "
              f"server/Engine {through_server / through_engine:.2f}")


if __name__ == "__main__":
    main()
