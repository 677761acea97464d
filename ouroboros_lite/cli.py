"""`ouroboros-lite` command line: generate | chat | bench | tune | config | pull | models.

Every setting comes from, in rising precedence: built-in defaults, the TOML config file,
OUROBOROS_LITE_* environment variables, command-line flags (see config.py); flags default to None
here so that "not given" can be told apart."""

from __future__ import annotations

import argparse
import math
import sys

from .errors import OuroborosError

DEFAULT_PROMPT = "Write a short poem about a snake that eats its own tail."
DEFAULT_MAX_TOKENS = 128


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "--target", dest="model", default=None,
                        help="target model: catalog name or .gguf path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", default=None,
                        help="draft model: catalog name or .gguf path; 'auto' = the target's catalog pair "
                             "(used by default when cached), 'none' = no draft")
    parser.add_argument("-t", "--threads", type=positive_int, default=None, help="CPU threads")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=None, help="context size in tokens (4096)")
    parser.add_argument("-ngl", "--gpu-layers", type=int, default=None,
                        help="target layers to offload to the GPU (0; 99 = all)")
    parser.add_argument("--draft-gpu-layers", type=int, default=None, help="draft layers to offload to the GPU (0)")
    parser.add_argument("--repack", dest="repack", action="store_const", const="on", default=None,
                        help="repack weights for the CPU's kernels (default: auto, on unless ggml's AMX path "
                             "is active, where batched decoding crashes)")
    parser.add_argument("-nr", "--no-repack", dest="repack", action="store_const", const="off",
                        help="load weights as stored (llama.cpp's --no-repack)")
    hyper = parser.add_argument_group("speculation hyper-parameters (default: `ouroboros-lite tune` result, else built-in)")
    hyper.add_argument("--ngram", type=positive_int, default=None, help="N: pool phrases hold N-1 tokens (default 5)")
    hyper.add_argument("--window", type=int, default=None, help="W: Jacobi window columns on the draft (on the target without one)")
    hyper.add_argument("--draft-guesses", type=int, default=None, help="G: pool phrases the draft (or, without one, the target) verifies per forward")
    hyper.add_argument("--candidates", type=int, default=None, help="K: pool phrases that lengthen the draft")
    hyper.add_argument("--max-target-nodes", type=positive_int, default=None, help="largest tree per target forward")
    hyper.add_argument("--max-draft", type=positive_int, default=None, help="longest draft chain (gamma's cap)")


def add_sampling_args(parser: argparse.ArgumentParser, *, temperature_help: str) -> None:
    """llama.cpp's sampling flags, names and defaults (applied to the target's logits per tree node)."""
    group = parser.add_argument_group("sampling (llama.cpp's meanings; every method stays exact)")
    group.add_argument("--temp", "--temperature", dest="temperature", type=finite_float, default=None,
                       help=temperature_help)
    group.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (40; 0 = off)")
    group.add_argument("--top-p", type=finite_float, default=None,
                       help="nucleus: smallest set with this mass (0.95; 1 = off)")
    group.add_argument("--min-p", type=finite_float, default=None,
                       help="drop tokens under min-p x the best (0.05; 0 = off)")
    group.add_argument("--repeat-penalty", type=finite_float, default=None, help="penalise recent tokens (1.0 = off)")
    group.add_argument("--repeat-last-n", type=int, default=None, help="tokens the penalty looks back over (64)")
    group.add_argument("-s", "--seed", type=int, default=None, help="random seed (-1 = random)")


def sampling_params(args, *, default_temperature: float):
    from .sampling import SamplingParams

    temperature = default_temperature if args.temperature is None else args.temperature
    return SamplingParams(temperature=temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed)


def runtime_options(args):
    from dataclasses import replace

    from .catalog import resolve_model
    from .drafters.ouroboros import OuroborosParams
    from .runtime import RuntimeOptions
    from .tune import load_tuned

    kwargs = dict(n_ctx=args.ctx_size, gpu_layers=args.gpu_layers, draft_gpu_layers=args.draft_gpu_layers,
                  repack=getattr(args, "repack", None) or "auto")
    if args.threads:
        kwargs["threads"] = args.threads
    if args.ngram is not None:
        kwargs["ngram"] = args.ngram  # below 2 is an error (RuntimeOptions), not silently 2
    if args.max_draft:
        kwargs["max_draft"] = args.max_draft
    target = resolve_model(args.model)
    draft = resolve_model(args.draft) if args.draft else None
    params = (load_tuned(target, draft) if target.is_file() else None) or OuroborosParams()
    overrides = {"window": args.window, "draft_guesses": args.draft_guesses, "candidates": args.candidates,
                 "max_target_nodes": args.max_target_nodes, "max_draft_length": args.max_draft}
    params = replace(params, **{k: v for k, v in overrides.items() if v is not None})
    if draft is None:  # draft-free mode: the window and the guesses run on the target itself
        kwargs.update(target_window=args.window or 0, target_guesses=args.draft_guesses or 0)
    if any(v is not None and v < 0 for v in overrides.values()):
        raise OuroborosError("speculation hyper-parameters must not be negative")
    if args.threads is not None and args.threads <= 0 or args.ctx_size <= 0:
        raise OuroborosError("threads and ctx-size must be positive")
    return RuntimeOptions(ouroboros=params, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit 2, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"ouroboros-lite: error: {message} (see {self.prog} --help)\n")


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ouroboros-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    gen = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    add_model_args(gen)
    gen.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help="prompt text ('-' reads stdin)")
    gen.add_argument("-n", "--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS, help="tokens to generate")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system prompt (with --chat)")
    add_method_args(gen, default_help="ouroboros: with a draft the full method, else its draft-free mode")
    add_sampling_args(gen, temperature_help="temperature (default 0: greedy, exactly the target's own output)")

    chat = sub.add_parser("chat", help="chat in the terminal (multi-turn, streaming, /help for commands)")
    add_model_args(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("-n", "--max-tokens", type=positive_int, default=1024, help="longest reply in tokens")
    add_method_args(chat, default_help="ouroboros: with --draft the full method, else its draft-free mode")
    chat.add_argument("--show-drafts", action="store_true",
                      help="colour tokens by who proposed them: draft (green), pool (blue), target (plain)")
    add_sampling_args(chat, temperature_help="temperature (default 0.8, as llama-cli; 0 = greedy)")

    bench = sub.add_parser("bench", help="run methods side by side on the same prompts")
    from .bench import add_bench_args

    add_bench_args(bench)

    tune = sub.add_parser("tune", help="measure batch costs of the model pair here and pick hyper-parameters")
    add_model_args(tune)

    pull = sub.add_parser("pull", help="fetch a catalog model into the cache")
    pull.add_argument("name")

    sub.add_parser("models", help="list catalog models and what is cached")

    config = sub.add_parser("config", help="print the effective configuration and where each value comes from")
    add_model_args(config)
    config.add_argument("--system", default=None, help="system prompt")
    add_method_args(config, default_help="automatic")
    add_sampling_args(config, temperature_help="temperature")
    return parser


def add_method_args(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    from .config import METHODS

    parser.add_argument("--method", default=None, choices=METHODS, help=f"decoding method (default: {default_help})")
    parser.add_argument("--warm-pool", action=argparse.BooleanOptionalAction, default=None,
                        help="load this model pair's phrase pool from the cache before, save it after (default: on)")
    parser.add_argument("--warm", dest="warm_pool", action="store_const", const=True, help=argparse.SUPPRESS)


def cmd_generate(args) -> int:
    from .runtime import Runtime

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    method = args.method
    sampling = sampling_params(args, default_temperature=0.0)
    with Runtime(args.model, args.draft, method=method, options=runtime_options(args)) as runtime:
        tokens = runtime.tokenize_prompt(prompt, chat=args.chat, system=args.system)
        warm = args.warm_pool and runtime.has_pool(method)
        if warm:
            runtime.load_pool()
        last = None
        for response in runtime.generate(tokens, max_tokens=args.max_tokens, sampling=sampling):
            sys.stdout.write(response.text)
            sys.stdout.flush()
            last = response
        sys.stdout.write("\n")
        if warm:
            runtime.save_pool()
        print(format_stats(last, method_label(method, runtime), runtime.drafter_for(method)), file=sys.stderr)
    return 0


def method_label(method: str, runtime) -> str:
    """"ouroboros, draft X.gguf" / "ouroboros, draft-free" / "ar": what the stats line is about."""
    if method == "ar":
        return method
    if runtime.draft is not None and method in ("sd", "ouroboros"):
        return f"{method}, draft {runtime.draft.path.name}"
    return f"{method}, draft-free" if method == "ouroboros" else method


def resolve_models(args) -> None:
    """--model/--draft to paths (fetching catalog models); says which draft the catalog pair supplied."""
    from .catalog import resolve_pair

    target, draft, note = resolve_pair(args.model, args.draft)
    if note:
        print(f"ouroboros-lite: using {note}", file=sys.stderr)
    args.model, args.draft = target, draft


def format_stats(last, method: str, drafter=None) -> str:
    from .drafters.adaptive import AdaptiveDrafter

    if last is None:
        return "no tokens generated"
    line = (
        f"[{method}] prompt {last.prompt_tokens} tok ({last.prompt_tps:.1f} tok/s), "
        f"generated {last.generation_tokens} tok in {last.generation_seconds:.2f} s: "
        f"{last.generation_tps:.1f} tok/s"
    )
    spec = last.spec
    if spec.drafted_tokens:
        line += (
            f" | acceptance {spec.acceptance_rate:.0%}, {spec.tokens_per_forward:.2f} tok/target forward, "
            f"target forwards {spec.target_forwards}, draft forwards {spec.draft_forwards}"
        )
    if isinstance(drafter, AdaptiveDrafter) and drafter.speedup_over_plain(last.generation_tps):
        line += f" | {drafter.speedup_over_plain(last.generation_tps):.2f}x the plain steps it measured"
    return line


def cmd_pull(args) -> int:
    from .catalog import pull

    print(pull(args.name))
    return 0


def cmd_models(args) -> int:
    from .catalog import is_verified, load_catalog

    catalog = load_catalog()
    for name, entry in catalog.entries.items():
        mark = "cached" if is_verified(entry) else "-"
        default = " (default)" if name == catalog.default else ""
        size = f"{entry.size / 1e6:,.0f} MB"
        print(f"{name:36s} {entry.source:8s} {size:>10s}  {mark:7s} {entry.description}{default}")
    return 0


def cmd_chat(args) -> int:
    from .chat import run_chat

    return run_chat(args)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .config import apply_to_namespace, cmd_config

    warnings.formatwarning = lambda message, *_args, **_kw: f"ouroboros-lite: warning: {message}\n"
    if getattr(sys.stdin, "reconfigure", None):  # `--prompt -` and chat input: bad UTF-8 becomes U+FFFD
        sys.stdin.reconfigure(errors="replace")

    try:
        args = setup_arg_parser().parse_args(argv)
        commands = {"generate": cmd_generate, "chat": cmd_chat, "config": cmd_config, "pull": cmd_pull,
                    "models": cmd_models}
        if args.command == "config":
            return cmd_config(args)  # resolves the layers itself, to report their sources
        if args.command not in ("pull", "models"):
            apply_to_namespace(args)  # defaults < config file < environment < flags
            resolve_models(args)
        if args.command == "bench":
            from .bench import cmd_bench

            return cmd_bench(args)
        if args.command == "tune":
            from .tune import cmd_tune

            return cmd_tune(args)
        return commands[args.command](args)
    except OuroborosError as exc:
        print(f"ouroboros-lite: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:  # the file system said no: a cache directory that is a file, a read-only disk
        print(f"ouroboros-lite: error: {os_error_message(exc)}", file=sys.stderr)
        return 1


def os_error_message(exc: OSError) -> str:
    from .catalog import CACHE_ENV, cache_dir

    text = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    if exc.filename and str(exc.filename).startswith(str(cache_dir())):
        text += f" (in the cache directory {cache_dir()}; set {CACHE_ENV} to a writable directory)"
    return text


if __name__ == "__main__":
    sys.exit(main())
