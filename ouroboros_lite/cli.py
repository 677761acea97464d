"""`ouroboros-lite` command line: generate | chat | serve | bench | tune | config | pull | models | rpc-server.

Every setting comes from, in rising precedence: built-in defaults, the TOML config file,
OUROBOROS_LITE_* environment variables, command-line flags (see config.py); flags default to None
here so that "not given" can be told apart."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .arguments import add_method_args, add_model_args, add_sampling_args, add_stop_args, finite_float, \
    max_tokens_for, positive_int, runtime_options, sampling_params, token_budget
from .errors import OuroborosError

DEFAULT_PROMPT = "Write a short poem about a snake that eats its own tail."
DEFAULT_MAX_TOKENS = 128


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit 2, like every other error here."""

    def error(self, message: str):
        self.exit(2, f"ouroboros-lite: error: {message} (see {self.prog} --help)\n")


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ouroboros-lite", description=__doc__)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ouroboros-lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    gen = sub.add_parser("generate", help="generate text from a prompt, streaming it to stdout")
    add_model_args(gen)
    given = gen.add_mutually_exclusive_group()
    given.add_argument("-p", "--prompt", default=None,
                       help=f"prompt text ('-' reads stdin; default: {DEFAULT_PROMPT!r})")
    given.add_argument("-f", "--file", default=None, help="read the prompt from this file (llama.cpp's -f)")
    gen.add_argument("-n", "--max-tokens", type=token_budget, default=None,
                     help=f"tokens to generate (default: {DEFAULT_MAX_TOKENS}; -1 = until the end or the context)")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--system", default=None, help="system prompt (implies --chat)")
    add_method_args(gen, default_help="ouroboros: with a draft the full method, else its draft-free mode")
    add_stop_args(gen)
    add_sampling_args(gen, temperature_help="temperature (default 0: greedy, exactly the target's own output)")

    chat = sub.add_parser("chat", help="chat in the terminal (multi-turn, streaming, /help for commands)")
    add_model_args(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument("-n", "--max-tokens", type=token_budget, default=None,
                      help="longest reply in tokens (default: 1024; -1 = as long as the context allows)")
    add_method_args(chat, default_help="ouroboros: with --draft the full method, else its draft-free mode")
    chat.add_argument("--show-drafts", action="store_true",
                      help="colour tokens by who proposed them: draft (green), pool (blue), target (plain)")
    add_stop_args(chat)
    add_sampling_args(chat, temperature_help="temperature (default 0.8, as llama-cli; 0 = greedy)")

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat/completions, completions, models)")
    add_model_args(serve)
    add_method_args(serve, default_help="ouroboros: with --draft the full method, else its draft-free mode")
    serve.add_argument("--host", default=None, help="address to listen on (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=None, help="port (8080; 0 = any free port)")
    serve.add_argument("-np", "--parallel", type=positive_int, default=None,
                       help="conversations generated at once, sharing one copy of the weights "
                            "(default: what fits in half the free memory, 2 to 4)")
    serve.add_argument("--queue", type=int, default=16,
                       help="requests that may wait for a slot; beyond them the answer is 503 (16)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    serve.add_argument("--drain-timeout", type=finite_float, default=30.0,
                       help="on Ctrl-C/SIGTERM, seconds running requests may take to finish before they are "
                            "cancelled (30)")
    add_sampling_args(serve, temperature_help="default temperature of requests that set none (0.8, as llama-server)")

    bench = sub.add_parser("bench", help="run methods side by side on the same prompts")
    from .bench import add_bench_args

    add_bench_args(bench)

    tune = sub.add_parser("tune", help="measure batch costs of the model pair here and pick hyper-parameters")
    add_model_args(tune)
    tune.add_argument("--repeats", type=positive_int, default=7,
                      help="timings per batch size, interleaved; the median counts (default: 7)")
    tune.add_argument("--reset", action="store_true",
                      help="remove this pair's tuned hyper-parameters (back to the built-in defaults)")

    pull = sub.add_parser("pull", help="fetch a catalog model into the cache")
    pull.add_argument("name")

    models = sub.add_parser("models", help="list catalog models and what is cached; `models rm NAME` deletes one")
    models.add_argument("action", nargs="?", choices=("list", "rm"), default="list",
                        help="list (default) or rm: delete cached files")
    models.add_argument("names", nargs="*", help="models to remove (with rm)")
    models.add_argument("--all", action="store_true", help="with rm: remove every cached catalog model")

    server = sub.add_parser("rpc-server", help="run llama.cpp's ggml-rpc-server (built once from the pinned "
                            "llama.cpp) so another machine's --rpc can put model layers here")
    server.add_argument("-H", "--host", default="127.0.0.1",
                        help="address to listen on (127.0.0.1; the server is unauthenticated: trusted networks only)")
    server.add_argument("-p", "--port", type=int, default=50052, help="port (50052)")
    server.add_argument("-t", "--threads", type=positive_int, default=None, help="CPU threads (llama.cpp's default: half the cores)")
    server.add_argument("-c", "--cache", action="store_true", help="keep received tensors in a local file cache")
    server.add_argument("--build-only", action="store_true", help="build it, print its path, do not start it")

    config = sub.add_parser("config", help="print the effective configuration and where each value comes from")
    add_model_args(config)
    config.add_argument("--system", default=None, help="system prompt")
    add_method_args(config, default_help="automatic")
    add_sampling_args(config, temperature_help="temperature")
    return parser


def cmd_generate(args) -> int:
    from .runtime import Runtime
    from .stops import StopStrings

    prompt = read_prompt(args)
    method = args.method
    chat = args.chat or args.system is not None  # a system prompt only exists in a chat template
    sampling = sampling_params(args, default_temperature=0.0)
    stops = StopStrings(args.stop)  # an empty --stop is an error before the model loads
    loading = time.perf_counter()
    with Runtime(args.model, args.draft, method=method, options=runtime_options(args)) as runtime:
        load_seconds = time.perf_counter() - loading
        tokens = runtime.tokenize_prompt(prompt, chat=chat, system=args.system)
        max_tokens = max_tokens_for(args.max_tokens, DEFAULT_MAX_TOKENS, runtime.context.n_ctx - len(tokens))
        warm = args.warm_pool and runtime.has_pool(method)
        if warm:
            runtime.load_pool()
        last = None
        for response in runtime.generate(tokens, max_tokens=max_tokens, sampling=sampling):
            text, stopped = stops.push(response.text, last=response.finish_reason is not None)
            sys.stdout.write(text)
            sys.stdout.flush()
            last = response
            if stopped:
                break
        sys.stdout.write("\n")
        if warm:
            runtime.save_pool()
        print(format_stats(last, method_label(method, runtime), runtime.drafter_for(method), load_seconds),
              file=sys.stderr)
    return 0


def read_prompt(args) -> str:
    """-p TEXT, -p - (stdin) or -f FILE, as UTF-8 text."""
    if args.file is None:
        return sys.stdin.read() if args.prompt == "-" else (DEFAULT_PROMPT if args.prompt is None else args.prompt)
    try:
        return Path(args.file).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise OuroborosError(f"--file {args.file}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    except OSError as exc:
        raise OuroborosError(f"--file {args.file}: cannot read it: {exc.strerror or exc}") from None


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


def format_stats(last, method: str, drafter=None, load_seconds: float | None = None) -> str:
    """The line after a generation, with what llama.cpp prints and LM Studio shows."""
    from .drafters.adaptive import AdaptiveDrafter

    if last is None:
        return "no tokens generated"
    line = (
        f"[{method}] prompt {last.prompt_tokens} tok ({last.prompt_tps:.1f} tok/s), "
        f"generated {last.generation_tokens} tok in {last.generation_seconds:.2f} s: "
        f"{last.generation_tps:.1f} tok/s | first token {last.prompt_seconds:.2f} s, "
        f"total {last.prompt_seconds + last.generation_seconds:.2f} s"
    )
    if load_seconds is not None:
        line += f", load {load_seconds:.2f} s"
    if last.seed is not None:
        line += f", seed {last.seed}"
    spec = last.spec
    if spec.drafted_tokens:
        line += (
            f" | acceptance {spec.acceptance_rate:.0%} ({spec.accepted_tokens}/{spec.drafted_tokens} drafted), "
            f"{spec.tokens_per_forward:.2f} tok/target forward, "
            f"target forwards {spec.target_forwards}, draft forwards {spec.draft_forwards}"
        )
    if spec.target_forwards and last.generation_seconds > 0:
        split = (spec.draft_seconds, spec.verify_seconds, spec.other_seconds(last.generation_seconds))
        line += " | time " + "/".join(f"{s / last.generation_seconds:.0%}" for s in split) + " draft/verify/other"
    if isinstance(drafter, AdaptiveDrafter) and drafter.speedup_over_plain(last.generation_tps):
        line += f" | {drafter.speedup_over_plain(last.generation_tps):.2f}x the plain steps it measured"
    return line


def cmd_pull(args) -> int:
    from .catalog import pull

    print(pull(args.name))
    return 0


def cmd_models(args) -> int:
    """`models`: the catalog with what is cached, like `ollama list`; `models rm NAME|--all` like `ollama rm`."""
    from .catalog import is_verified, load_catalog, models_dir, remove_cached

    catalog = load_catalog()
    if args.action == "rm":
        if bool(args.names) == args.all:
            raise OuroborosError("models rm takes model names or --all (see `ouroboros-lite models`)")
        from . import local_models

        names = [n for n, e in catalog.entries.items() if e.path.exists()] if args.all else args.names
        listed = {name for name in names if name not in catalog.entries and local_models.forget(name)}
        for name in sorted(listed):
            print(f"{name}: no longer listed (the file itself stays where it is)")
        # an unknown name fails before anything is deleted
        entries = [catalog.get(name) for name in names if name not in listed]
        freed = 0
        for entry in entries:
            removed = remove_cached(entry)
            freed += removed
            print(f"removed {entry.name} ({removed / 1e6:,.0f} MB)" if removed else f"{entry.name}: not cached")
        print(f"freed {freed / 1e6:,.0f} MB")
        return 0
    if args.names or args.all:
        raise OuroborosError("model names and --all go with `models rm`")
    rows = [("NAME", "SOURCE", "SIZE", "CACHED", "DESCRIPTION")]
    on_disk = cached = 0
    for name, entry in catalog.entries.items():
        here = is_verified(entry)
        cached += here
        on_disk += entry.path.stat().st_size if entry.path.is_file() else 0
        pair = f", draft {entry.pair}" if entry.pair else ""
        default = " (default)" if name == catalog.default else ""
        rows.append((name, entry.source, f"{entry.size / 1e6:,.0f} MB", "yes" if here else "-",
                     f"{entry.description}{pair}{default}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{cell:<{w}}" if i != 2 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths)))
              + "  " + row[4])
    print(f"\ncache: {models_dir()} ({cached} of {len(catalog.entries)} cached, {on_disk / 1e9:.2f} GB on disk)")
    print_local_models(catalog)
    return 0


def print_local_models(catalog) -> None:
    """The GGUF files run from local paths, with the models they were paired with (local_models.py)."""
    from . import local_models

    files = local_models.read()
    if not files:
        return
    names = {str(entry.path.resolve()): name for name, entry in catalog.entries.items()}
    rows = [("LOCAL FILE", "SIZE", "MODEL", "LAST USED", "PAIRED WITH")]
    for path, record in sorted(files.items()):
        pairs = record.get("pairs") or {}
        paired = ", ".join(f"{names.get(other, Path(other).name)} ({verdict})" for other, verdict in pairs.items())
        missing = "" if Path(path).is_file() else " (missing)"
        rows.append((path + missing, f"{record.get('size', 0) / 1e6:,.0f} MB", str(record.get("description", "")),
                     str(record.get("last_used", "")), paired or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  ".join(f"{cell:<{w}}" if i != 1 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths)))
              + "  " + row[4])


def cmd_rpc_server(args) -> int:
    """Build (once) and exec llama.cpp's ggml-rpc-server with llama.cpp's own flags."""
    import os

    from .llamacpp_tools import build

    binary = build(("ggml-rpc-server",))["ggml-rpc-server"]
    if args.build_only:
        print(binary)
        return 0
    command = [str(binary), "-H", args.host, "-p", str(args.port)]
    command += ["-t", str(args.threads)] if args.threads else []
    command += ["-c"] if args.cache else []
    sys.stdout.flush()
    os.execv(binary, command)
    return 1  # not reached


def cmd_chat(args) -> int:
    from .chat import run_chat

    return run_chat(args)


def cmd_serve(args) -> int:
    from .server import cmd_serve as serve

    return serve(args)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .config import apply_to_namespace, cmd_config

    warnings.formatwarning = lambda message, *_args, **_kw: f"ouroboros-lite: warning: {message}\n"
    if getattr(sys.stdin, "reconfigure", None):  # `--prompt -` and chat input: bad UTF-8 becomes U+FFFD
        sys.stdin.reconfigure(errors="replace")

    try:
        args = setup_arg_parser().parse_args(argv)
        commands = {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve, "config": cmd_config,
                    "pull": cmd_pull, "models": cmd_models, "rpc-server": cmd_rpc_server}
        if args.command == "config":
            return cmd_config(args)  # resolves the layers itself, to report their sources
        if args.command not in ("pull", "models", "rpc-server"):
            apply_to_namespace(args)  # defaults < config file < environment < flags
            resolve_models(args)
        if args.command == "bench":
            from .bench import cmd_bench

            return cmd_bench(args)
        if args.command == "tune":
            from .tune import cmd_tune

            return cmd_tune(args, None if args.reset else runtime_options(args))
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
