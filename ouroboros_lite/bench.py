"""`ouroboros-lite bench`: methods side by side in one process, on the same prompts.

Every prompt is run by every method back to back (so machine noise hits all methods alike), and
each method's tokens are compared with ar's: speed-ups are only reported with their exact-match flag
("yes"; "ties [prompts]" where a text first left ar's at a near-tie the target itself ranks both
ways or within its measured kernel noise, see ties.py; or "NO [prompts]": a bug).
A method name ending in "-cold" clears the phrase pool before every prompt; without it the pool is
shared across prompts (warm start). `--project PROFILE` adds a projection of the same runs onto
another machine's per-batch step times (from `ouroboros-lite tune`, or typed in).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import drafters
from .costs import CostProfile
from .stats import SpecStats, tokens_per_second


# Prompt sets shipped with the package (data/README.md): name -> (file, wrapped in the chat template?).
# HumanEval is completed as raw text, as the Ouroboros paper runs it.
PROMPT_SETS = {
    "spec-bench": ("spec_bench_even.jsonl", True),
    "humaneval-even": ("humaneval_even.jsonl", False),
    "humaneval-odd": ("humaneval_odd.jsonl", False),
}


def shipped_prompts(name: str = "spec-bench") -> Path:
    """A shipped prompt file (data/ in a source checkout, ouroboros_lite/data/ when installed)."""
    here = Path(__file__).resolve().parent
    file = PROMPT_SETS[name][0]
    for candidate in (here / "data", here.parent / "data"):
        if (candidate / file).is_file():
            return candidate / file
    return here / "data" / file


def default_prompts() -> Path:
    """Spec-Bench prompts shipped with the package."""
    return shipped_prompts("spec-bench")


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    from .arguments import add_model_args, add_sampling_args, positive_int

    add_model_args(parser)
    add_sampling_args(parser, temperature_help=argparse.SUPPRESS)
    parser.add_argument("--temperatures", default="0",
                        help="comma-separated temperatures; each gets its own table against ar at that "
                             "temperature, with the same seeds (default 0: greedy)")
    parser.add_argument("--methods", default="ar,sd,pld,lookahead,ouroboros-cold,ouroboros",
                        help="comma-separated methods (ar is always run first); NAME-cold clears the pool per prompt "
                             "(default: %(default)s)")
    parser.add_argument("--prompts", default=None,
                        help=f"a shipped set ({', '.join(PROMPT_SETS)}; default spec-bench; HumanEval is completed "
                             "as raw text) or a JSONL file (Spec-Bench format: first turn used) or plain text, "
                             "one prompt a line")
    parser.add_argument("--limit", type=positive_int, default=13, help="number of prompts, round-robin over categories (default: %(default)s)")
    parser.add_argument("-n", "--max-tokens", type=positive_int, default=128, help="tokens to generate per prompt (default: %(default)s)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="runs of each (prompt, method), interleaved; medians and min-max are reported (default: 1)")
    parser.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--png", default=None, help="write a bar chart of tok/s per method to this PNG file")
    parser.add_argument("--project", default=None, metavar="PROFILE",
                        help="also project tok/s onto the per-batch step times in this cost profile (JSON)")


@dataclass
class MethodResult:
    """A method's generations added up; every rate derives from their SpecStats."""

    method: str
    generations: int = 0
    tokens: int = 0
    seconds: float = 0.0
    spec: SpecStats = field(default_factory=SpecStats)
    mismatches: list[int] = field(default_factory=list)  # prompts whose text differs from ar's
    near_ties: list[int] = field(default_factory=list)  # those of them that first differ at a near-tie
    divergences: dict[int, str] = field(default_factory=dict)  # prompt -> where its text left ar's, and the scores
    runs: dict[int, list[float]] = field(default_factory=dict)  # prompt index -> tok/s of each repeat

    @property
    def tps(self) -> float:
        return tokens_per_second(self.tokens, self.seconds, self.generations)

    @property
    def real_mismatches(self) -> list[int]:
        """Prompts whose text left ar's where the target proves no tie: a bug, always."""
        return [m for m in self.mismatches if m not in self.near_ties]

    @property
    def draft_forwards_per_token(self) -> float:
        return self.spec.draft_forwards / self.tokens if self.tokens else 0.0

    def add(self, tokens: int, last, prompt: int) -> None:
        self.generations += 1
        self.tokens += tokens
        self.seconds += last.generation_seconds
        self.spec = self.spec + last.spec
        self.runs.setdefault(prompt, []).append(tokens_per_second(tokens, last.generation_seconds))

    def prompt_tps(self) -> dict[int, float]:
        """Per prompt, the median tok/s of its repeats."""
        return {prompt: statistics.median(runs) for prompt, runs in self.runs.items()}

    def prompt_speedups(self, base: MethodResult) -> dict[int, float]:
        """Prompt index -> this method's median tok/s over the base method's (ar's)."""
        mine, theirs = self.prompt_tps(), base.prompt_tps()
        return {p: mine[p] / theirs[p] for p in mine if theirs.get(p)}

    def speedups(self, base: MethodResult) -> list[float]:
        return list(self.prompt_speedups(base).values())

    def repeat_spread(self) -> float:
        """The largest (max - min) / median of one prompt's repeats: how noisy the machine was."""
        spreads = [(max(r) - min(r)) / statistics.median(r) for r in self.runs.values()
                   if len(r) > 1 and statistics.median(r) > 0]
        return max(spreads, default=0.0)

    def summary(self) -> dict:
        """The JSON row: the counters and the rates derived from them."""
        spec = self.spec
        return {**asdict(self), "tps": self.tps, "acceptance_rate": spec.acceptance_rate,
                "tokens_per_forward": spec.tokens_per_forward, "draft_forwards_per_token": self.draft_forwards_per_token,
                "accepted_from_pool": spec.accepted_from_pool,
                "seconds_split": {"draft": spec.draft_seconds, "verify": spec.verify_seconds,
                                  "other": spec.other_seconds(self.seconds)}}


def load_prompts(path: Path, limit: int) -> list[tuple[str, str]]:
    """(category, prompt) pairs, taken round-robin over categories; OuroborosError for a file without any."""
    from .errors import OuroborosError

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OuroborosError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    by_category: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        category, prompt = _jsonl_prompt(f"{path}, line {number}", line) if path.suffix == ".jsonl" else ("-", line)
        by_category.setdefault(category, []).append(prompt)
    if not by_category:
        raise OuroborosError(f"{path}: the file holds no prompts")
    chosen: list[tuple[str, str]] = []
    while len(chosen) < limit and any(by_category.values()):
        for category, queue in by_category.items():
            if queue and len(chosen) < limit:
                chosen.append((category, queue.pop(0)))
    return chosen


def _jsonl_prompt(where: str, line: str) -> tuple[str, str]:
    from .errors import OuroborosError

    try:
        row = json.loads(line)
    except ValueError as exc:
        raise OuroborosError(f"{where}: not JSON ({exc})") from None
    turns = row.get("turns") if isinstance(row, dict) else None
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
        raise OuroborosError(f'{where}: expected a JSON object with "turns": ["first prompt", ...]')
    return str(row.get("category", "-")), turns[0]


def check_writable(path: Path, flag: str) -> None:
    """Fail before a long run rather than after it when an output file cannot be written."""
    from .errors import OuroborosError

    parent = path.parent
    problem = ("it is a directory" if path.is_dir() else
               f"the directory {parent} does not exist" if not parent.is_dir() else
               "no permission to write there" if not os.access(parent, os.W_OK) or
               (path.exists() and not os.access(path, os.W_OK)) else None)
    if problem:
        raise OuroborosError(f"{flag} {path}: cannot write the file: {problem}")


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


def run_witnessed(runtime, tokens: list[int], method: str, max_tokens: int, sampling, expected: list[int] | None):
    """run_method, and the witness of where its text left `expected` (prompt + reference): the index
    of the first differing token and the logits row its verifier chose it from (None if it did not)."""
    verifier = runtime.verifier
    verifier.expected, verifier.departure = expected, None
    try:
        result = run_method(runtime, tokens, method, max_tokens, sampling)
        departure = verifier.departure
    finally:
        verifier.expected, verifier.departure = None, None
    return result, None if departure is None else (departure[0] - len(tokens), departure[1])


def divergence(tie, generated: list[int], reference: list[int]) -> str:
    """How a text that is not ar's left it: the tie check's scores, or where one of the two stopped."""
    if tie is not None:
        return tie.describe()
    return f"the same tokens, but {len(generated)} of them where ar emitted {len(reference)}"


def has_exact_flag(method: str, temperature: float) -> bool:
    """Whether the method's text must equal ar's: not sd's when sampling, which depends on its draft's draws."""
    return temperature <= 0 or drafters.method(method).sampled_like_ar


def cmd_bench(args) -> int:
    from .arguments import runtime_options, sampling_params
    from .errors import OuroborosError
    from .runtime import Runtime
    from .ties import check_tie

    methods = ["ar"] + [m for m in args.methods.split(",") if m and m != "ar"]
    prompt_set = args.prompts or "spec-bench"
    prompts_path = shipped_prompts(prompt_set) if prompt_set in PROMPT_SETS else Path(prompt_set)
    chat = PROMPT_SETS[prompt_set][1] if prompt_set in PROMPT_SETS else True
    chat = chat and not args.no_chat
    if not prompts_path.is_file():
        raise OuroborosError(f"prompt file not found: {prompts_path}")
    profile = CostProfile.load(Path(args.project)) if args.project else None
    prompts = load_prompts(prompts_path, args.limit)
    for flag, output in (("--json", args.json), ("--png", args.png)):
        if output:
            check_writable(Path(output), flag)
    temperatures = parse_temperatures(args.temperatures)
    base_seed = args.seed if args.seed is not None and args.seed >= 0 else 1234
    base_sampling = sampling_params(args, default_temperature=0.0)
    with Runtime(args.model, args.draft, method="ar", options=runtime_options(args)) as runtime:
        for method in methods:
            runtime.drafter_for(method)
        encoded = [runtime.tokenize_prompt(p, chat=chat) for _, p in prompts]
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
                for repeat in range(args.repeat):  # interleaved: a burst of load hits every method alike
                    for method in methods:
                        checked = repeat == 0 and reference is not None and has_exact_flag(method, temperature)
                        watched = tokens + reference if checked else None
                        (generated, last), witness = run_witnessed(runtime, tokens, method, args.max_tokens,
                                                                   sampling, watched)
                        differs = repeat == 0 and reference is not None and generated != reference
                        tie = None
                        if differs and checked:
                            tie = check_tie(runtime.verifier, tokens, reference, generated, sampling, witness)
                        for table in tables:
                            result = table.setdefault(method, MethodResult(method))
                            result.add(len(generated), last, index)
                            if differs:
                                result.mismatches.append(index)
                                result.divergences[index] = divergence(tie, generated, reference)
                                if tie is not None and tie.is_tie:
                                    result.near_ties.append(index)
                        reference = generated if reference is None else reference
            print(f"prompt {index + 1}/{len(encoded)} done", file=sys.stderr, flush=True)
    totals = all_totals[temperatures[0]]
    print(f"{len(prompts)} prompts x {args.max_tokens} tokens x {args.repeat} repeats, "
          f"{args.threads or 'default'} threads")
    noise = totals["ar"].repeat_spread()
    if noise > 0.10:
        print(f"warning: ar's own speed varied by {noise:.0%} between repeats of one prompt: the machine is busy "
              "(check `uptime`); speed-ups below are less certain", file=sys.stderr)
    for category, table in per_category.items():
        print(f"\n[{category}]{temperature_label(temperatures[0])}")
        print_table(table, temperatures[0])
    for temperature, table in all_totals.items():
        print(f"\n[all]{temperature_label(temperature)}")
        print_table(table, temperature)
        print_extremes(table, [category for category, _ in prompts])
        for r in table.values():  # the evidence for every NO: where the text left ar's and how the target scores it
            for index in r.real_mismatches if has_exact_flag(r.method, temperature) else ():
                print(f"{r.method} prompt {index}: {r.divergences[index]}")
    if profile is not None:
        print_projection(totals, profile)
    run = {"target": Path(args.model).name, "draft": Path(args.draft).name if args.draft else None,
           "threads": args.threads, "repeat": args.repeat, "machine": machine_description(),
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if args.json:
        write_json(Path(args.json), prompts, args.max_tokens, all_totals, per_category, profile, run)
    if args.png:
        write_png(Path(args.png), totals, per_category, run)
    return 0


def parse_temperatures(text: str) -> list[float]:
    from .errors import OuroborosError

    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise OuroborosError(f"--temperatures takes numbers separated by commas, got {text!r}") from None
    if not values or any(not math.isfinite(t) or t < 0 for t in values):
        raise OuroborosError(f"--temperatures takes numbers >= 0, got {text!r}")
    return values


def temperature_label(temperature: float) -> str:
    return " greedy" if temperature <= 0 else f" temperature {temperature:g} (exact = same text as ar, same seed)"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def print_table(results: dict[str, MethodResult], temperature: float = 0.0) -> None:
    base = results["ar"].tps if "ar" in results else 0.0
    print(f"{'method':16s} {'tok/s':>7s} {'speed-up':>9s} {'median x':>9s} {'min-max x':>11s} {'accept':>7s} "
          f"{'tok/fwd':>8s} {'dft fwd/tok':>12s} {'pool tok':>8s}  exact")
    for r in results.values():
        acceptance = f"{r.spec.acceptance_rate:.0%}" if r.spec.drafted_tokens else "-"
        real = r.real_mismatches
        exact = f"NO {real}" if real else (f"ties {r.near_ties}" if r.near_ties else "yes")
        if not has_exact_flag(r.method, temperature):
            exact = "- (sampled draft)"
        per_prompt = r.speedups(results["ar"]) if "ar" in results else []
        median = f"{statistics.median(per_prompt):8.2f}x" if per_prompt else f"{'-':>9s}"
        spread = f"{min(per_prompt):.2f}-{max(per_prompt):.2f}" if per_prompt else "-"
        print(f"{r.method:16s} {r.tps:7.1f} {r.tps / base if base else 0:8.2f}x {median} {spread:>11s} {acceptance:>7s} "
              f"{r.spec.tokens_per_forward:8.2f} {r.draft_forwards_per_token:12.2f} {r.spec.accepted_from_pool:8d}  {exact}")


def extreme_prompts(by_prompt: dict[int, float]) -> tuple[int | None, int | None]:
    """The prompts (counted from 0, as the exact column counts) with the lowest and the highest speed-up."""
    if not by_prompt:
        return None, None
    return min(by_prompt, key=by_prompt.get), max(by_prompt, key=by_prompt.get)


def print_extremes(results: dict[str, MethodResult], categories: list[str]) -> None:
    """Which prompt gave each method its lowest and highest speed-up."""
    for r in results.values():
        per_prompt = r.prompt_speedups(results["ar"]) if r.method != "ar" else {}
        low, high = extreme_prompts(per_prompt)
        if low is not None:
            print(f"{r.method}: slowest prompt {low} [{categories[low]}] {per_prompt[low]:.2f}x, "
                  f"fastest prompt {high} [{categories[high]}] {per_prompt[high]:.2f}x")


def projected_tps(r: MethodResult, profile: CostProfile) -> float:
    """Tokens over the time the same forwards would take with the profile's step times."""
    spec, seconds = r.spec, 0.0
    if spec.target_forwards:
        seconds += spec.target_forwards * profile.target_step(spec.target_batch_tokens / spec.target_forwards)
    if spec.draft_forwards:
        seconds += spec.draft_forwards * profile.draft_step(spec.draft_batch_tokens / spec.draft_forwards)
    return r.tokens / seconds if seconds else 0.0


def print_projection(results: dict[str, MethodResult], profile: CostProfile) -> None:
    print(f"\nPROJECTION (not measured): acceptance measured above, step times from {profile.source}")
    base = projected_tps(results["ar"], profile)
    print(f"{'method':16s} {'tok/s':>8s} {'speed-up':>9s} {'target batch':>13s} {'draft batch':>12s}")
    for r in results.values():
        spec, tps = r.spec, projected_tps(r, profile)
        tb = spec.target_batch_tokens / spec.target_forwards if spec.target_forwards else 0
        db = spec.draft_batch_tokens / spec.draft_forwards if spec.draft_forwards else 0
        print(f"{r.method:16s} {tps:8.1f} {tps / base if base else 0:8.2f}x {tb:13.1f} {db:12.1f}")


def write_json(path, prompts, max_tokens, all_totals, per_category, profile, run) -> None:
    def rows(table):
        base = table.get("ar")
        out = []
        for r in table.values():
            by_prompt = r.prompt_speedups(base) if base else {}
            per_prompt = list(by_prompt.values())
            slowest, fastest = extreme_prompts(by_prompt)
            out.append({**r.summary(), "median_speedup": statistics.median(per_prompt) if per_prompt else None,
                        "speedup_range": [min(per_prompt), max(per_prompt)] if per_prompt else None,
                        "slowest_prompt": slowest, "fastest_prompt": fastest})
        return out

    temperatures = list(all_totals)
    totals = all_totals[temperatures[0]]
    data = {**run, "prompts": len(prompts), "max_tokens": max_tokens, "all": rows(totals),
            "by_temperature": {f"{t:g}": rows(table) for t, table in all_totals.items()},
            "categories": {c: rows(t) for c, t in per_category.items()}}
    if profile is not None:
        data["projection"] = {"profile": profile.source,
                              "tps": {m: projected_tps(r, profile) for m, r in totals.items()}}
    path.write_text(json.dumps(data, indent=2))


def exact_label(r: MethodResult) -> str:
    return "NOT exact" if r.real_mismatches else ("exact (ties)" if r.near_ties else "exact")


def write_png(path: Path, totals, per_category, run) -> None:
    """Bars of tok/s per method, each labelled with its tok/s, speed-up over ar and exact flag; a
    per-category panel beside it only where every category has at least 3 prompts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no PNG: install matplotlib, e.g. pip install 'ouroboros-lite[bench]')", file=sys.stderr)
        return
    methods = list(totals)
    by_category = all(len(t["ar"].runs) >= 3 for t in per_category.values()) and len(per_category) > 1
    fig, axes = plt.subplots(1, 2 if by_category else 1, figsize=(14 if by_category else 8, 5), squeeze=False)
    ax = axes[0][0]
    base = totals["ar"].tps
    bars = ax.bar(methods, [totals[m].tps for m in methods], color="tab:blue")
    for bar, method in zip(bars, methods):
        r = totals[method]
        ax.annotate(f"{r.tps:.1f} tok/s\n{r.tps / base if base else 0:.2f}x\n{exact_label(r)}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("tok/s (all prompts)")
    ax.set_ylim(0, max(totals[m].tps for m in methods) * 1.35 or 1)
    ax.tick_params(axis="x", rotation=20)
    if by_category:
        ax = axes[0][1]
        categories = list(per_category)
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            speedups = [statistics.median(per_category[c][method].speedups(per_category[c]["ar"]) or [0])
                        for c in categories]
            ax.bar([x + i * width for x in range(len(categories))], speedups, width, label=method)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories, rotation=30, ha="right")
        ax.set_ylabel("median speed-up over ar")
        ax.legend(fontsize=8)
    draft = f" + draft {run['draft']}" if run.get("draft") else ""
    fig.suptitle(f"{run['target']}{draft}\n{run['machine']}, {run['threads'] or 'default'} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
