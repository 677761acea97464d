"""Our methods next to llama.cpp's own plain, speculative and lookup decoding, on the same prompts.

    python benchmarks/vs_llamacpp.py --target qwen2.5-coder-1.5b-instruct-q4_k_m \
        --draft qwen2.5-coder-0.5b-instruct-q4_k_m --limit 6 -n 128 -t 2

(defaults: the test pair, 6 Spec-Bench prompts, 128 tokens.) The first run builds llama.cpp's
`llama-completion`, `llama-speculative-simple` and `llama-lookup` once, from the llama.cpp tree
vendored in the pinned llama-cpp-python sdist (the same llama.cpp our native module runs), into the
cache: `<cache>/llama.cpp-tools/<version>/` (ouroboros_lite/llamacpp_tools.py; `--build-only`
stops there). Then, prompt by prompt, interleaved so that drift hits everyone alike:

- llama.cpp: plain decoding (llama-completion), speculative-simple with --spec-draft-n-max 3 and 8,
  lookup (prompt n-gram lookup, no static/dynamic cache files);
- ours: ar, sd, pld, ouroboros (greedy, same threads, same context size).

Both sides see identical tokens: the prompt text is what our Runtime feeds the target (for chat
sets the target's chat template applied, special tokens written out) and llama.cpp reads it from a
file (-f; --no-escape) with its own chat templating off (-no-cnv for llama-completion; the two
examples never template). Both tokenize it with the same call (llama_tokenize, add_special and
parse_special on), so BOS is added exactly as our Runtime adds it; the script checks the prompt
token count llama.cpp reports against ours and says so where they differ.

Each speed is generation only, counted the same way on both sides: the tokens after the first over
the time after the first, from llama.cpp's own timing lines (llama-completion: its `eval time = ...
ms / N runs` line, the one-token decodes after the prompt; the examples: their "decoded N tokens
in S seconds" line, see llama_generation_tps). Greedy (--temp 0) everywhere; "same text as ar"
counts prompts whose generated text agrees with our ar's (the shorter one begins the longer).
Where ggml's AMX weight path is active (`backend.amx_active`) llama.cpp gets --no-repack, as our
loader does: it segfaults otherwise. The llama.cpp tools are built with GGML_NATIVE=ON; our
llama-cpp-python may have been built otherwise, and `x llama.cpp` of our ar shows that difference.

The table: per method the median tok/s over prompts, its ratio to llama.cpp's plain decoding (and
the per-prompt range of that ratio), and its ratio to our ar. Check the load first: a neighbour on
2 cores stalls llama.cpp's two OpenMP threads (measured: 0.4 instead of 10 tok/s, where our loop
lost far less); `--omp-wait-policy passive` sets OMP_WAIT_POLICY for both sides.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ouroboros_lite.llamacpp_tools import BuildError, build

TOOLS = ("llama-completion", "llama-speculative-simple", "llama-lookup")

# --- llama.cpp's side -----------------------------------------------------------------------------

# name -> (binary, extra arguments); {draft} is filled in. Every other setting is llama.cpp's default
# (speculative-simple: greedy draft, no minimum probability, and it needs --spec-type draft-simple to
# use -md at all; lookup: prompt n-grams, its default draft length of 3, no cache files).
LLAMA_METHODS = {
    "llama.cpp": ("llama-completion", ["-no-cnv", "--no-display-prompt"]),
    "llama.cpp spec n-max 3": ("llama-speculative-simple", ["-md", "{draft}", "--spec-type", "draft-simple",
                                                         "--spec-draft-n-max", "3"]),
    "llama.cpp spec n-max 8": ("llama-speculative-simple", ["-md", "{draft}", "--spec-type", "draft-simple",
                                                         "--spec-draft-n-max", "8"]),
    "llama.cpp lookup": ("llama-lookup", []),
}
OUR_METHODS = ("ar", "sd", "pld", "ouroboros")
EVAL_LINE = re.compile(r"_perf_\w*print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs")
PROMPT_EVAL_LINE = re.compile(r"_perf_\w*print: prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens")
DECODED_LINE = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds")
ENCODED_LINE = re.compile(r"encoded\s+(\d+) tokens in")


class RunFailed(Exception):
    pass


def llama_generation_tps(binary: str, log: str) -> tuple[float, int, int]:
    """(tok/s after the first token, generated tokens, prompt tokens) from a tool's own timing lines.

    llama-completion: its eval time, which counts only the one-token decodes after the prompt, i.e.
    exactly the tokens after the first. The examples print "decoded N tokens in S seconds" from the
    end of the prompt: lookup's prompt forward already gave the first token, so (N - 1) / S;
    speculative-simple holds the last prompt token back for its first verification, whose forward
    yields the first token with the first accepted drafts, so N / S (the rate of its decode loop)."""
    if binary == "llama-completion":
        evals, prompt = EVAL_LINE.search(log), PROMPT_EVAL_LINE.search(log)
        if not evals or not prompt:
            raise RunFailed("no 'eval time = ... ms / N runs' line in its log")
        ms, runs = float(evals.group(1)), int(evals.group(2))
        return (runs / (ms / 1e3) if ms > 0 else 0.0), runs + 1, int(prompt.group(1))
    decoded, encoded = DECODED_LINE.search(log), ENCODED_LINE.search(log)
    if not decoded or not encoded:
        raise RunFailed("no 'decoded N tokens in S seconds' line in its log")
    n, seconds = int(decoded.group(1)), float(decoded.group(2))
    counted = n if binary == "llama-speculative-simple" else n - 1
    return (counted / seconds if seconds > 0 else 0.0), n, int(encoded.group(1))


def run_llama(binaries: dict[str, Path], method: str, prompt_file: Path, common: list[str],
              draft: Path | None, timeout: float) -> tuple[float, int, int, bytes]:
    """(tok/s, generated tokens, prompt tokens, stdout) of one llama.cpp run; RunFailed when it fails."""
    binary, extra = LLAMA_METHODS[method]
    command = [str(binaries[binary]), *common, "-f", str(prompt_file),
               *[part.format(draft=draft) for part in extra]]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timed out after {timeout:.0f} s") from None
    log = done.stderr.decode("utf-8", errors="replace")
    if done.returncode != 0:
        last = [line for line in log.splitlines() if line.strip()][-1:] or [""]
        raise RunFailed(f"exit {done.returncode}: {last[0][:160]}")
    tps, n, prompt_tokens = llama_generation_tps(binary, log)
    return tps, n, prompt_tokens, done.stdout


def generated_text(stdout: bytes, prompt_echo: bytes) -> bytes:
    """The generated part of a tool's stdout: the examples echo the prompt after two newlines."""
    if stdout.startswith(b"\n\n"):
        stdout = stdout[2:]
    if stdout.startswith(prompt_echo):
        stdout = stdout[len(prompt_echo):]
    return stdout.removesuffix(b"\n\n").removesuffix(b" [end of text]\n")


def same_text(a: bytes, b: bytes) -> bool:
    """The shorter text begins the longer (one side may stop earlier or print the end token)."""
    a, b = a.strip(), b.strip()
    if not a or not b:  # an empty text begins every text: only another empty one counts as the same
        return a == b
    return a.startswith(b) or b.startswith(a)


# --- the run --------------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(results: dict[str, list[float | None]], agree: dict[str, int], prompts: int) -> None:
    """Median tok/s per method, ratios to llama.cpp's plain decoding and to our ar."""
    plain, ar = median([v for v in results["llama.cpp"] if v]), median([v for v in results["ar"] if v])
    print(f"{'method':24s} {'tok/s':>7s} {'x llama.cpp':>11s} {'per prompt':>11s} {'x our ar':>8s} "
          f"{'same text as ar':>15s}")
    for method, values in results.items():
        ok = [v for v in values if v]
        if not ok:
            print(f"{method:24s} {'failed':>7s}")
            continue
        ratios = [v / p for v, p in zip(values, results["llama.cpp"]) if v and p]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        failed = f" ({prompts - len(ok)} failed)" if len(ok) < prompts else ""
        print(f"{method:24s} {median(ok):7.1f} {median(ok) / plain:11.2f} {spread:>11s} {median(ok) / ar:8.2f} "
              f"{agree[method]:>9d} of {prompts}{failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="smollm2-135m-instruct-f32", help="catalog name or .gguf path")
    parser.add_argument("--draft", default="smollm2-135m-instruct-q4_1", help="catalog name or .gguf path")
    parser.add_argument("--prompts", default="spec-bench",
                        help="a prompt set shipped with ouroboros_lite.bench (spec-bench, humaneval-even, humaneval-odd) "
                             "or a .jsonl/.txt file (chat-wrapped)")
    parser.add_argument("--no-chat", action="store_true", help="do not wrap the prompts in the chat template")
    parser.add_argument("--limit", type=int, default=6, help="prompts (round-robin over categories; default 6)")
    parser.add_argument("-n", type=int, default=128, help="tokens to generate per prompt (default 128)")
    parser.add_argument("-t", "--threads", type=int, default=2, help="threads for both sides (default 2)")
    parser.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size for both sides (4096)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one llama.cpp run may take")
    parser.add_argument("--llama-args", default="", help="extra arguments for every llama.cpp run, e.g. '--poll 0'")
    parser.add_argument("--omp-wait-policy", choices=("active", "passive"), default=None,
                        help="OMP_WAIT_POLICY for both sides (default: unset, libgomp's own). With a neighbour "
                             "on the cores, 'passive' keeps llama.cpp's 2 spinning threads from stalling each other")
    parser.add_argument("--build-only", action="store_true", help="build llama.cpp's tools and stop")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel compile jobs for the build (default 2)")
    args = parser.parse_args()
    if args.omp_wait_policy:  # before anything loads libgomp (importing ouroboros_lite loads llama.cpp)
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    binaries = build(TOOLS, args.jobs)
    if args.build_only:
        for name, path in binaries.items():
            print(f"{name}: {path}")
        return

    from ouroboros_lite.backend import ChatMessage, amx_active, system_info
    from ouroboros_lite.bench import PROMPT_SETS, load_prompts, run_method, shipped_prompts
    from ouroboros_lite.catalog import resolve_model
    from ouroboros_lite.drafters.ouroboros import OuroborosParams
    from ouroboros_lite.runtime import Runtime, RuntimeOptions
    from ouroboros_lite.tune import load_tuned

    target, draft = resolve_model(args.target), resolve_model(args.draft)
    if args.prompts in PROMPT_SETS:
        prompts_path, chat = shipped_prompts(args.prompts), PROMPT_SETS[args.prompts][1]
    else:
        prompts_path, chat = Path(args.prompts), True
    chat = chat and not args.no_chat
    prompts = [text for _, text in load_prompts(prompts_path, args.limit)]
    no_repack = amx_active(system_info())
    common = ["-m", str(target), "-n", str(args.n), "-t", str(args.threads), "-tb", str(args.threads),
              "-c", str(args.ctx_size), "--temp", "0", "--no-escape", *(["--no-repack"] if no_repack else []),
              *shlex.split(args.llama_args)]
    load = os.getloadavg()[0]
    print(f"{target.name} + draft {draft.name}; {len(prompts)} prompts x {args.n} tokens, {args.threads} threads, "
          f"{'chat template' if chat else 'raw text'}{', --no-repack (AMX)' if no_repack else ''}; "
          f"load average {load:.1f}" + (" -- busy machine, ratios unreliable (a neighbour stalls llama.cpp's "
                                        "spinning threads most; see --omp-wait-policy)"
                                        if load > (os.cpu_count() or 1) - 0.5 else ""))

    options = RuntimeOptions(threads=args.threads, n_ctx=args.ctx_size,
                             ouroboros=load_tuned(target, draft) or OuroborosParams())
    methods = [*LLAMA_METHODS, *OUR_METHODS]
    results: dict[str, list[float | None]] = {m: [] for m in methods}
    agree = dict.fromkeys(methods, 0)
    with Runtime(target, draft, options=options) as runtime, tempfile.TemporaryDirectory() as work:
        for method in OUR_METHODS:
            runtime.drafter_for(method)
        model = runtime.target
        for index, prompt in enumerate(prompts):
            # the exact text our Runtime tokenizes; llama.cpp tokenizes it the same way (specials parsed,
            # BOS added as the model asks), with no template of its own
            text = model.apply_chat_template([ChatMessage("user", prompt)]) if chat else prompt
            tokens = model.tokenize(text, add_special=True, parse_special=True)
            if index == 0:
                run_method(runtime, tokens, "ar", 8)  # warm-up: page faults, thread start-up
            prompt_file = Path(work) / "prompt.txt"
            prompt_file.write_bytes(text.encode("utf-8") + b"\n")  # -f drops one trailing newline
            echo = b"".join(model.token_bytes(t, special=True) for t in tokens)
            order = methods if index % 2 == 0 else methods[::-1]  # alternate, so no method always runs first
            texts: dict[str, bytes] = {}
            for method in order:
                if method in LLAMA_METHODS:
                    try:
                        tps, _, prompt_tokens, stdout = run_llama(binaries, method, prompt_file, common, draft,
                                                                  args.timeout)
                    except RunFailed as exc:
                        print(f"prompt {index + 1}: {method} failed: {exc}", file=sys.stderr)
                        results[method].append(None)
                        continue
                    if prompt_tokens != len(tokens):
                        print(f"prompt {index + 1}: {method} saw {prompt_tokens} prompt tokens, we {len(tokens)}",
                              file=sys.stderr)
                    texts[method] = generated_text(stdout, echo)
                else:
                    generated, last = run_method(runtime, tokens, method, args.n)
                    tps = last.generation_tps
                    texts[method] = b"".join(model.token_bytes(t) for t in generated)
                results[method].append(tps)
            for method, generated in texts.items():
                agree[method] += same_text(generated, texts["ar"])
            print(f"prompt {index + 1}/{len(prompts)} done", file=sys.stderr, flush=True)
    print_table(results, agree, len(prompts))


if __name__ == "__main__":
    try:
        main()
    except BuildError as exc:
        sys.exit(f"vs_llamacpp: error: building llama.cpp's tools: {exc}")
    except Exception as exc:  # ouroboros_lite is imported late (see --omp-wait-policy)
        from ouroboros_lite.errors import OuroborosError

        if isinstance(exc, OuroborosError):
            sys.exit(f"vs_llamacpp: error: {exc}")
        raise
