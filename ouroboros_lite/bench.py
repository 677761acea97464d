"""`ouroboros-lite bench`: methods side by side in one process, on the same prompts.

Every prompt is run by every method back to back (so machine noise hits all methods alike), and
each method's tokens are compared with ar's: speed-ups are only reported with their exact-match flag
("yes"; "ties [prompts]" where a text first left ar's at a near-tie of the scores, see TIE_GAP; or
"NO [prompts]").
A method name ending in "-cold" clears the phrase pool before every prompt; without it the pool is
shared across prompts (warm start). `--project PROFILE` adds a projection of the same runs onto
another machine's per-batch step times (from `ouroboros-lite tune`, or typed in).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .costs import CostProfile


def default_prompts() -> Path:
    """Spec-Bench prompts shipped with the package (data/ in a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "data", here.parent / "data"):
        if (candidate / "spec_bench_even.jsonl").is_file():
            return candidate / "spec_bench_even.jsonl"
    return here / "data" / "spec_bench_even.jsonl"


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    from .cli import add_model_args, add_sampling_args, positive_int

    add_model_args(parser, target_flag="--target")
    add_sampling_args(parser, temperature_help=argparse.SUPPRESS)
    parser.add_argument("--temperatures", default="0",
                        help="comma-separated temperatures; each gets its own table against ar at that "
                             "temperature, with the same seeds (default 0: greedy)")
    parser.add_argument("--methods", default="ar,sd,pld,lookahead,ouroboros-cold,ouroboros",
                        help="comma-separated methods (ar is always run first); NAME-cold clears the pool per prompt")
    parser.add_argument("--prompts", default=None,
                        help="JSONL file (Spec-Bench format: first turn used) or plain text, one prompt a line")
    parser.add_argument("--limit", type=positive_int, default=13, help="number of prompts (round-robin over categories)")
    parser.add_argument("-n", "--max-tokens", type=positive_int, default=128, help="tokens to generate per prompt")
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--png", default=None, help="write a bar chart of tok/s per method to this PNG file")
    parser.add_argument("--project", default=None, metavar="PROFILE",
                        help="also project tok/s onto the per-batch step times in this cost profile (JSON)")


@dataclass
class MethodResult:
    method: str
    tokens: int = 0
    seconds: float = 0.0
    target_forwards: int = 0
    target_batch_tokens: int = 0
    draft_forwards: int = 0
    draft_batch_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_from_pool: int = 0
    mismatches: list[int] = field(default_factory=list)  # prompts whose text differs from ar's
    near_ties: list[int] = field(default_factory=list)  # those of them that first differ at a near-tie

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def draft_forwards_per_token(self) -> float:
        return self.draft_forwards / self.tokens if self.tokens else 0.0

    def add(self, tokens: int, last) -> None:
        spec = last.spec
        self.tokens += tokens
        self.seconds += last.generation_seconds
        self.target_forwards += spec.target_forwards
        self.target_batch_tokens += spec.target_batch_tokens
        self.draft_forwards += spec.draft_forwards
        self.draft_batch_tokens += spec.draft_batch_tokens
        self.drafted += spec.drafted_tokens
        self.accepted += spec.accepted_tokens
        self.accepted_from_pool += spec.accepted_by_source.get("pool", 0) + spec.accepted_by_source.get("window", 0)


def load_prompts(path: Path, limit: int) -> list[tuple[str, str]]:
    """(category, prompt) pairs, taken round-robin over categories."""
    by_category: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            by_category.setdefault(row.get("category", "-"), []).append(row["turns"][0])
        else:
            by_category.setdefault("-", []).append(line)
    chosen: list[tuple[str, str]] = []
    while len(chosen) < limit and any(by_category.values()):
        for category, queue in by_category.items():
            if queue and len(chosen) < limit:
                chosen.append((category, queue.pop(0)))
    return chosen


def run_method(runtime, tokens: list[int], method: str, max_tokens: int, sampling=None):
    from .sampling import GREEDY

    if method.endswith("-cold"):
        runtime.pool_of(method).clear()
    generated, last = [], None
    for response in runtime.generate(tokens, max_tokens=max_tokens, method=method, sampling=sampling or GREEDY):
        if response.token >= 0:
            generated.append(response.token)
        last = response
    return generated, last


# A divergence this close is a near-tie, not a bug: with the default f16 KV cache, batched and
# one-token decoding round differently and move logits by up to ~0.03 on the test pair.
TIE_GAP = 0.05


def has_exact_flag(method: str, temperature: float) -> bool:
    """Whether the method's text must equal ar's: not sd's when sampling, which depends on its draft's draws."""
    return temperature <= 0 or method.removesuffix("-cold") != "sd"


def divergence_gap(runtime, prompt: list[int], reference: list[int], generated: list[int], sampling) -> float | None:
    """How close the call was where a method first left ar's text: the gap between the two
    tokens' scores (logits when greedy; log-probability plus the keyed noise of the draw when
    sampling) after the common prefix. The prefix is decoded two ways, in one batch and in chunks
    of 8 as trees see it; 0 when the two rank the tokens differently, else the smaller gap.
    None: no token differs (one text is only shorter)."""
    i = next((k for k, (a, b) in enumerate(zip(reference, generated)) if a != b), None)
    if i is None:
        return None
    history = prompt + reference[:i]
    pair = np.array([reference[i], generated[i]])
    gaps = [_score_gap(runtime, history, len(prompt), chunk, pair, sampling) for chunk in (len(history), 8)]
    if any(g is None for g in gaps):
        return None
    return 0.0 if gaps[0] * gaps[1] < 0 else min(abs(g) for g in gaps)


def _score_gap(runtime, history: list[int], n_prompt: int, chunk: int, pair: np.ndarray, sampling) -> float | None:
    from .sampling import Sampler, keyed_gumbel, resolve_seed

    verifier = runtime.verifier
    verifier.reset()
    verifier.prefill(history[:n_prompt], 0)
    for start in range(n_prompt, len(history), chunk):
        verifier.prefill(history[start:start + chunk], start)
    logits = verifier.logits_last()
    if sampling.plain_greedy:
        scores = logits[pair].astype(np.float64)
    else:
        seed = resolve_seed(sampling.seed)
        with np.errstate(divide="ignore"):
            scores = np.log(Sampler(sampling, seed).probabilities(logits, history)[pair])
        if not sampling.greedy:
            scores = scores + keyed_gumbel(seed, len(history), pair)
    gap = float(scores[0] - scores[1])
    return gap if np.isfinite(gap) else None


def cmd_bench(args) -> int:
    from .cli import runtime_options, sampling_params
    from .errors import OuroborosError
    from .runtime import Runtime

    methods = ["ar"] + [m for m in args.methods.split(",") if m and m != "ar"]
    prompts_path = Path(args.prompts) if args.prompts else default_prompts()
    if not prompts_path.is_file():
        raise OuroborosError(f"prompt file not found: {prompts_path}")
    profile = CostProfile.load(Path(args.project)) if args.project else None
    prompts = load_prompts(prompts_path, args.limit)
    temperatures = parse_temperatures(args.temperatures)
    base_seed = args.seed if args.seed is not None and args.seed >= 0 else 1234
    base_sampling = sampling_params(args, default_temperature=0.0)
    with Runtime(args.model, args.draft, method="ar", options=runtime_options(args)) as runtime:
        for method in methods:
            runtime.drafter_for(method)
        encoded = [runtime.tokenize_prompt(p, chat=not args.no_chat) for _, p in prompts]
        run_method(runtime, encoded[0], "ar", 8)  # warm-up: page faults, thread start-up
        # one table per temperature; per-category tables for the first temperature only
        all_totals = {t: {m: MethodResult(m) for m in methods} for t in temperatures}
        per_category: dict[str, dict[str, MethodResult]] = {}
        for index, ((category, _), tokens) in enumerate(zip(prompts, encoded)):
            for temperature in temperatures:
                # one seed per prompt, the same for every method
                sampling = replace(base_sampling, temperature=temperature, seed=base_seed + index)
                tables = [all_totals[temperature]]
                if temperature == temperatures[0]:
                    tables.append(per_category.setdefault(category, {}))
                reference = None
                for method in methods:
                    generated, last = run_method(runtime, tokens, method, args.max_tokens, sampling)
                    differs = reference is not None and generated != reference
                    gap = None
                    if differs and has_exact_flag(method, temperature):
                        gap = divergence_gap(runtime, tokens, reference, generated, sampling)
                    for table in tables:
                        result = table.setdefault(method, MethodResult(method))
                        result.add(len(generated), last)
                        if differs:
                            result.mismatches.append(index)
                            if gap is not None and gap < TIE_GAP:
                                result.near_ties.append(index)
                    reference = generated if reference is None else reference
            print(f"prompt {index + 1}/{len(encoded)} done", file=sys.stderr, flush=True)
    totals = all_totals[temperatures[0]]
    print(f"{len(prompts)} prompts x {args.max_tokens} tokens, {args.threads or 'default'} threads")
    for category, table in per_category.items():
        print(f"\n[{category}]{temperature_label(temperatures[0])}")
        print_table(table, temperatures[0])
    for temperature, table in all_totals.items():
        print(f"\n[all]{temperature_label(temperature)}")
        print_table(table, temperature)
    if profile is not None:
        print_projection(totals, profile)
    if args.json:
        write_json(Path(args.json), prompts, args.max_tokens, all_totals, per_category, profile)
    if args.png:
        write_png(Path(args.png), totals, per_category)
    return 0


def parse_temperatures(text: str) -> list[float]:
    from .errors import OuroborosError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise OuroborosError(f"--temperatures takes numbers separated by commas, got {text!r}") from None
    if not values or any(t < 0 for t in values):
        raise OuroborosError(f"--temperatures takes numbers >= 0, got {text!r}")
    return values


def temperature_label(temperature: float) -> str:
    return " greedy" if temperature <= 0 else f" temperature {temperature:g} (exact = same text as ar, same seed)"


def print_table(results: dict[str, MethodResult], temperature: float = 0.0) -> None:
    base = results["ar"].tps if "ar" in results else 0.0
    print(f"{'method':16s} {'tok/s':>7s} {'speed-up':>9s} {'accept':>7s} {'tok/fwd':>8s} {'dft fwd/tok':>12s} "
          f"{'pool tok':>8s}  exact")
    for r in results.values():
        acceptance = f"{r.accepted / r.drafted:.0%}" if r.drafted else "-"
        real = [m for m in r.mismatches if m not in r.near_ties]
        exact = f"NO {real}" if real else (f"ties {r.near_ties}" if r.near_ties else "yes")
        if not has_exact_flag(r.method, temperature):
            exact = "- (sampled draft)"
        print(f"{r.method:16s} {r.tps:7.1f} {r.tps / base if base else 0:8.2f}x {acceptance:>7s} "
              f"{r.tokens_per_forward:8.2f} {r.draft_forwards_per_token:12.2f} {r.accepted_from_pool:8d}  {exact}")


def projected_tps(r: MethodResult, profile: CostProfile) -> float:
    """Tokens over the time the same forwards would take with the profile's step times."""
    seconds = 0.0
    if r.target_forwards:
        seconds += r.target_forwards * profile.target_step(r.target_batch_tokens / r.target_forwards)
    if r.draft_forwards:
        seconds += r.draft_forwards * profile.draft_step(r.draft_batch_tokens / r.draft_forwards)
    return r.tokens / seconds if seconds else 0.0


def print_projection(results: dict[str, MethodResult], profile: CostProfile) -> None:
    print(f"\nPROJECTION (not measured): acceptance measured above, step times from {profile.source}")
    base = projected_tps(results["ar"], profile)
    print(f"{'method':16s} {'tok/s':>8s} {'speed-up':>9s} {'target batch':>13s} {'draft batch':>12s}")
    for r in results.values():
        tps = projected_tps(r, profile)
        tb = r.target_batch_tokens / r.target_forwards if r.target_forwards else 0
        db = r.draft_batch_tokens / r.draft_forwards if r.draft_forwards else 0
        print(f"{r.method:16s} {tps:8.1f} {tps / base if base else 0:8.2f}x {tb:13.1f} {db:12.1f}")


def write_json(path, prompts, max_tokens, all_totals, per_category, profile) -> None:
    def rows(table):
        return [{**asdict(r), "tps": r.tps, "tokens_per_forward": r.tokens_per_forward,
                 "draft_forwards_per_token": r.draft_forwards_per_token} for r in table.values()]

    temperatures = list(all_totals)
    totals = all_totals[temperatures[0]]
    data = {"prompts": len(prompts), "max_tokens": max_tokens, "all": rows(totals),
            "by_temperature": {f"{t:g}": rows(table) for t, table in all_totals.items()},
            "categories": {c: rows(t) for c, t in per_category.items()}}
    if profile is not None:
        data["projection"] = {"profile": profile.source,
                              "tps": {m: projected_tps(r, profile) for m, r in totals.items()}}
    path.write_text(json.dumps(data, indent=2))


def write_png(path: Path, totals, per_category) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: install matplotlib, e.g. pip install 'ouroboros-lite[bench]')", file=sys.stderr)
        return
    categories = list(per_category) + ["all"]
    methods = list(totals)
    tables = [per_category[c] for c in per_category] + [totals]
    fig, ax = plt.subplots(figsize=(max(8, len(categories) * 1.2), 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        speedups = [t[method].tps / t["ar"].tps if t["ar"].tps else 0 for t in tables]
        ax.bar([x + i * width for x in range(len(categories))], speedups, width, label=method)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories, rotation=30, ha="right")
    ax.set_ylabel("speed-up over ar")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
