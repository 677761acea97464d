"""`ouroboros-lite bench`: methods side by side in one process, on the same prompts.

Every prompt is run by every method back to back (so machine noise hits all methods alike), and
each method's tokens are compared with ar's: speed-ups are only reported with their exact-match flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

def default_prompts() -> Path:
    """Spec-Bench prompts shipped with the package (data/ in a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent / "data"):
        if (candidate / "spec_bench_even.jsonl").is_file():
            return candidate / "spec_bench_even.jsonl"
    return here / "data" / "spec_bench_even.jsonl"


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    from .cli import add_model_args, positive_int

    add_model_args(parser, target_flag="--target")
    parser.add_argument("--methods", default="ar,sd", help="comma-separated methods; ar is always included")
    parser.add_argument("--prompts", default=None, help="JSONL file (Spec-Bench format: first turn used) or plain text, one prompt a line")
    parser.add_argument("--limit", type=positive_int, default=8, help="number of prompts (spread over categories)")
    parser.add_argument("-n", "--max-tokens", type=positive_int, default=128, help="tokens to generate per prompt")
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")


@dataclass
class MethodResult:
    method: str
    tokens: int = 0
    seconds: float = 0.0
    target_forwards: int = 0
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    mismatches: list[int] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def load_prompts(path: Path, limit: int) -> list[tuple[str, str]]:
    """(category, prompt) pairs, taking prompts round-robin over categories."""
    by_category: dict[str, list[str]] = {}
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            by_category.setdefault(row.get("category", "-"), []).append(row["turns"][0])
        else:
            by_category.setdefault("-", []).append(line)
    chosen: list[tuple[str, str]] = []
    queues = {c: list(p) for c, p in by_category.items()}
    while len(chosen) < limit and any(queues.values()):
        for category, queue in queues.items():
            if queue and len(chosen) < limit:
                chosen.append((category, queue.pop(0)))
    return chosen


def run_once(runtime, tokens: list[int], method: str, max_tokens: int):
    generated, last = [], None
    start = time.perf_counter()
    for response in runtime.generate(tokens, max_tokens=max_tokens, method=method):
        if response.token >= 0:
            generated.append(response.token)
        last = response
    return generated, last, time.perf_counter() - start


def cmd_bench(args) -> int:
    from .cli import runtime_options
    from .errors import OuroborosError
    from .runtime import Runtime

    methods = ["ar"] + [m for m in args.methods.split(",") if m and m != "ar"]
    prompts_path = Path(args.prompts) if args.prompts else default_prompts()
    if not prompts_path.is_file():
        raise OuroborosError(f"prompt file not found: {prompts_path}")
    prompts = load_prompts(prompts_path, args.limit)
    draft = args.draft
    with Runtime(args.model, draft, method="ar", options=runtime_options(args)) as runtime:
        for method in methods:
            runtime.drafter_for(method)
        encoded = [runtime.tokenize_prompt(p, chat=not args.no_chat) for _, p in prompts]
        run_once(runtime, encoded[0], "ar", 8)  # warm-up: first-touch page faults, thread spin-up
        results = {m: MethodResult(m) for m in methods}
        for index, tokens in enumerate(encoded):
            reference = None
            for method in methods:
                generated, last, seconds = run_once(runtime, tokens, method, args.max_tokens)
                r = results[method]
                r.tokens += len(generated)
                r.seconds += last.generation_seconds if last else seconds
                r.target_forwards += last.spec.target_forwards
                r.draft_forwards += last.spec.draft_forwards
                r.drafted += last.spec.drafted_tokens
                r.accepted += last.spec.accepted_tokens
                if reference is None:
                    reference = generated
                elif generated != reference:
                    r.mismatches.append(index)
            print(f"prompt {index + 1}/{len(encoded)} done", file=sys.stderr, flush=True)
    print_table(results, len(prompts), args.max_tokens)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"prompts": len(prompts), "max_tokens": args.max_tokens,
             "results": [{**asdict(r), "tps": r.tps} for r in results.values()]}, indent=2))
    return 0


def print_table(results: dict[str, MethodResult], n_prompts: int, max_tokens: int) -> None:
    base = results["ar"].tps
    print(f"{n_prompts} prompts x {max_tokens} tokens")
    print(f"{'method':10s} {'tok/s':>8s} {'speed-up':>9s} {'accept':>7s} {'tok/fwd':>8s} {'dft fwd/tok':>12s}  exact")
    for r in results.values():
        acceptance = f"{r.accepted / r.drafted:.0%}" if r.drafted else "-"
        per_forward = r.tokens / r.target_forwards if r.target_forwards else 0.0
        draft_per_token = r.draft_forwards / r.tokens if r.tokens else 0.0
        exact = "yes" if not r.mismatches else f"NO (prompts {r.mismatches})"
        print(f"{r.method:10s} {r.tps:8.1f} {r.tps / base if base else 0:8.2f}x {acceptance:>7s} "
              f"{per_forward:8.2f} {draft_per_token:12.2f}  {exact}")
