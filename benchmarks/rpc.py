"""How much of the network's cost speculation hides: the target local, then on a ggml-rpc-server over
loopback with 0, 1, 5 and 20 ms added round trip, for `ar` and `ouroboros` (draft local).

    python benchmarks/rpc.py --model smollm2-135m-instruct-f32 --draft smollm2-135m-instruct-q4_1 --limit 4 -n 64
    python benchmarks/rpc.py --model qwen2.5-coder-1.5b-instruct-q4_k_m --draft qwen2.5-coder-0.5b-instruct-q4_k_m

Needs a llama-cpp-python built with GGML_RPC=on and ggml-rpc-server (built once into the cache if
missing). Each RPC condition starts one ggml-rpc-server (-t THREADS) that holds all the target's
layers, and a child process of this script loads the pair (the draft on this CPU) and generates
greedily, `ar` and `ouroboros` interleaved per prompt. The added latency comes from a relay in this
process (DelayProxy) that holds each chunk, each way, for half the round trip; `tc netem` would do
the same per packet, but needs a kernel with sch_netem, which containers often lack. The conditions
run one after another, `--rounds` times, and the table keeps each one's median.

Columns: median tok/s over prompts; target forwards per generated token; the time per token over the
local run's (what RPC adds: the round trips, serialising inputs and logits, and the server's own
graph scheduling); and `network share` = 1 - local s/token / this s/token, the part of each token's
time the remote target costs beyond computing it here. Every condition's greedy text is checked
against the local `ar` text (exactness over RPC)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

CONDITIONS = (("local", None), ("rpc loopback", 0.0), ("rpc rtt 1 ms", 1.0), ("rpc rtt 5 ms", 5.0),
              ("rpc rtt 20 ms", 20.0))
METHODS = ("ar", "ouroboros")
PORT = 50052


def child(args) -> None:
    """Generate in this process (inside a namespace for RPC) and print one JSON line per run."""
    from ouroboros_lite.bench import default_prompts, load_prompts
    from ouroboros_lite.runtime import Runtime, RuntimeOptions

    prompts = load_prompts(default_prompts(), args.limit)
    options = RuntimeOptions(threads=args.threads, rpc=args.rpc or None, kv_type="f32")  # f32: fewer near-ties
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


class DelayProxy:
    """A TCP relay on 127.0.0.1 that holds every chunk, each way, for half the round trip before
    passing it on (what `tc netem delay` does per packet, in user space: this kernel may lack netem)."""

    def __init__(self, target_port: int, rtt_ms: float):
        self.target_port, self.delay = target_port, rtt_ms / 2000
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for sock in (writer, up_writer):
            sock.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver():
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        while data := await reader.read(1 << 20):
            queue.put_nowait((time.monotonic() + self.delay, data))
        queue.put_nowait(None)
        await sender

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_condition(args, rtt_ms: float | None, binary: Path) -> list[dict]:
    command = [sys.executable, __file__, "--child", "--model", str(args.model), "--limit", str(args.limit),
               "-n", str(args.n), "-t", str(args.threads)] + (["--draft", str(args.draft)] if args.draft else [])
    if rtt_ms is None:
        return _rows(subprocess.run(command, capture_output=True, text=True, check=False))
    port = free_port()
    server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(args.threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = DelayProxy(port, rtt_ms) if rtt_ms > 0 else None
    try:
        time.sleep(1.0)
        endpoint = f"127.0.0.1:{proxy.port if proxy else port}"
        return _rows(subprocess.run([*command, "--rpc", endpoint], capture_output=True, text=True, check=False))
    finally:
        if proxy is not None:
            proxy.close()
        server.kill()
        server.wait(10)


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
    print("\n| condition | method | tok/s | target forwards / token | s/token vs local | network share | "
          "same text as local ar |")
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
