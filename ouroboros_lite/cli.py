"""`ouroboros-lite` command line: generate | bench | pull | models."""

from __future__ import annotations

import argparse
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


def add_model_args(parser: argparse.ArgumentParser, *, target_flag: str = "--model") -> None:
    parser.add_argument(target_flag, dest="model", default=None,
                        help="target model: catalog name or .gguf path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", default=None, help="draft model: catalog name or .gguf path")
    parser.add_argument("-t", "--threads", type=positive_int, default=None, help="CPU threads")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=4096, help="context size in tokens")
    parser.add_argument("--gpu-layers", type=int, default=0, help="target layers to offload to the GPU")
    parser.add_argument("--draft-gpu-layers", type=int, default=0, help="draft layers to offload to the GPU")
    hyper = parser.add_argument_group("speculation hyper-parameters (default: `ouroboros-lite tune` result, else built-in)")
    hyper.add_argument("--ngram", type=positive_int, default=None, help="N: pool phrases hold N-1 tokens (default 5)")
    hyper.add_argument("--window", type=int, default=None, help="W: Jacobi window columns on the draft")
    hyper.add_argument("--draft-guesses", type=int, default=None, help="G: pool phrases the draft verifies per forward")
    hyper.add_argument("--candidates", type=int, default=None, help="K: pool phrases that lengthen the draft")
    hyper.add_argument("--max-target-nodes", type=positive_int, default=None, help="largest tree per target forward")
    hyper.add_argument("--max-draft", type=positive_int, default=None, help="longest draft chain (gamma's cap)")


def runtime_options(args):
    from dataclasses import replace

    from .catalog import resolve_model
    from .drafters.ouroboros import OuroborosParams
    from .runtime import RuntimeOptions
    from .tune import load_tuned

    kwargs = dict(n_ctx=args.ctx_size, gpu_layers=args.gpu_layers, draft_gpu_layers=args.draft_gpu_layers)
    if args.threads:
        kwargs["threads"] = args.threads
    if args.ngram:
        kwargs["ngram"] = max(2, args.ngram)
    if args.max_draft:
        kwargs["max_draft"] = args.max_draft
    target = resolve_model(args.model)
    draft = resolve_model(args.draft) if args.draft else None
    params = (load_tuned(target, draft) if target.is_file() else None) or OuroborosParams()
    overrides = {"window": args.window, "draft_guesses": args.draft_guesses, "candidates": args.candidates,
                 "max_target_nodes": args.max_target_nodes, "max_draft_length": args.max_draft}
    params = replace(params, **{k: v for k, v in overrides.items() if v is not None})
    if any(v is not None and v < 0 for v in overrides.values()):
        from .errors import OuroborosError

        raise OuroborosError("speculation hyper-parameters must not be negative")
    return RuntimeOptions(ouroboros=params, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit 2, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ouroboros-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    gen = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    add_model_args(gen)
    gen.add_argument("-p", "--prompt", default=DEFAULT_PROMPT, help="prompt text ('-' reads stdin)")
    gen.add_argument("-n", "--max-tokens", type=positive_int, default=DEFAULT_MAX_TOKENS, help="tokens to generate")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system prompt (with --chat)")
    gen.add_argument("--method", default=None, choices=["ar", "sd", "pld", "lookahead", "ouroboros"],
                     help="decoding method (default: ouroboros with --draft, else ar)")
    gen.add_argument("--warm", action="store_true",
                     help="load this model pair's phrase pool from the cache before, save it after (warm start)")

    bench = sub.add_parser("bench", help="run methods side by side on the same prompts")
    from .bench import add_bench_args

    add_bench_args(bench)

    tune = sub.add_parser("tune", help="measure batch costs of the model pair here and pick hyper-parameters")
    add_model_args(tune)

    pull = sub.add_parser("pull", help="fetch a catalog model into the cache")
    pull.add_argument("name")

    sub.add_parser("models", help="list catalog models and what is cached")
    return parser


def cmd_generate(args) -> int:
    from .runtime import Runtime

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    method = args.method or ("ouroboros" if args.draft else "ar")
    with Runtime(args.model, args.draft, method=method, options=runtime_options(args)) as runtime:
        tokens = runtime.tokenize_prompt(prompt, chat=args.chat, system=args.system)
        if args.warm:
            runtime.load_pool()
        last = None
        for response in runtime.generate(tokens, max_tokens=args.max_tokens):
            sys.stdout.write(response.text)
            sys.stdout.flush()
            last = response
        sys.stdout.write("\n")
        if args.warm:
            runtime.save_pool()
        print(format_stats(last, method), file=sys.stderr)
    return 0


def format_stats(last, method: str) -> str:
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


def main(argv: list[str] | None = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    commands = {"generate": cmd_generate, "pull": cmd_pull, "models": cmd_models}
    try:
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


if __name__ == "__main__":
    sys.exit(main())
