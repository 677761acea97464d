"""The command line's shared flags and what they become: argparse value types, the model, sampling,
method and stop flags every command takes, and their mapping into typed options (RuntimeOptions,
SamplingParams). cli.py and each command's module import it, so imports run one way."""

from __future__ import annotations

import argparse
import math

from .errors import OuroborosError


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def token_budget(text: str) -> int:
    """-n: a positive number of tokens, or -1 (llama.cpp's "until the end of generation or the context")."""
    value = _whole_number(text)
    if value <= 0 and value != -1:
        raise argparse.ArgumentTypeError(f"must be a positive number or -1 (until the end), got {value}")
    return value


def max_tokens_for(value: int | None, default: int, room: int) -> int:
    """What -n means for a prompt that leaves `room` tokens of context: None = the command's
    default, -1 = all the room there is."""
    from .errors import OuroborosError

    value = default if value is None else value
    if value == -1:
        return max(room, 1)
    if value <= 0:
        raise OuroborosError(f"max_tokens must be a positive number or -1 (until the end), got {value}")
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
    parser.add_argument("-m", "--model", "--target", dest="model", default=None,
                        help="target model: catalog name or .gguf path (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("-md", "--draft", "--model-draft", dest="draft", default=None,
                        help="draft model: catalog name or .gguf path; 'auto' = the target's catalog pair "
                             "(used by default when cached), 'none' = no draft")
    parser.add_argument("-t", "--threads", type=positive_int, default=None,
                        help="CPU threads (default: the available cores, at most 8)")
    parser.add_argument("-c", "--ctx-size", type=positive_int, default=None, help="context size in tokens (4096)")
    parser.add_argument("-ngl", "--gpu-layers", type=int, default=None,
                        help="target layers to offload to the GPU (0; 99 = all)")
    parser.add_argument("--draft-gpu-layers", type=int, default=None, help="draft layers to offload to the GPU (0)")
    parser.add_argument("-fa", "--flash-attn", nargs="?", const="on", default=None, choices=("on", "off", "auto"),
                        help="flash attention: on, off or auto (default: auto, llama.cpp's choice; -fa alone = on)")
    parser.add_argument("-b", "--batch-size", type=positive_int, default=None,
                        help="tokens per llama.cpp batch for prompts (default: 512; at least 49, a tree's size)")
    parser.add_argument("--repack", dest="repack", action="store_const", const="on", default=None,
                        help="repack weights for the CPU's kernels, all of them into AMX where it is active "
                             "(default: auto: on; on AMX CPUs Q4_K weights in AMX, or none where its kernels crash)")
    parser.add_argument("-nr", "--no-repack", dest="repack", action="store_const", const="off",
                        help="load weights as stored (llama.cpp's --no-repack)")
    parser.add_argument("--repack-avx2", dest="repack", action="store_const", const="avx2",
                        help="on AMX CPUs: Q4_0/Q4_K weights in ggml's AVX2 repack, not the AMX buffer (cheaper "
                             "batches of 4-8 tokens, dearer single tokens; benchmarks/repack.py measures it)")
    parser.add_argument("--repack-amx", dest="repack", action="store_const", const="amx",
                        help="on AMX CPUs: only the Q4_K matrix weights in ggml's AMX buffer (auto's choice where "
                             "this build's AMX kernels work)")
    parser.add_argument("--no-tiled-mm", dest="tiled_matmul", action="store_const", const=False, default=None,
                        help="turn ggml's tiled K-quant matmul (CPU batches of 8+ tokens) off: on a 2-core AVX2 "
                             "EPYC trees of 8-9 tokens cost 0.79-0.83x, prompts run at 0.85x (benchmarks/tiled_matmul.py)")
    parser.add_argument("--rpc", default=None, metavar="HOST:PORT[,...]",
                        help="run the target's layers on these ggml-rpc-server processes (llama.cpp's --rpc; "
                             "unauthenticated: loopback or a trusted network only)")
    parser.add_argument("--draft-rpc", default=None, metavar="HOST:PORT[,...]",
                        help="run the draft on these ggml-rpc-server processes (default: here)")
    hyper = parser.add_argument_group("speculation hyper-parameters (default: `ouroboros-lite tune` result, else built-in)")
    hyper.add_argument("--ngram", type=positive_int, default=None, help="N: pool phrases hold N-1 tokens (default 5)")
    hyper.add_argument("--window", type=int, default=None, help="W: Jacobi window columns on the draft (on the target without one)")
    hyper.add_argument("--draft-guesses", type=int, default=None, help="G: pool phrases the draft (or, without one, the target) verifies per forward")
    hyper.add_argument("--candidates", type=int, default=None, help="K: pool phrases that lengthen the draft")
    hyper.add_argument("--max-target-nodes", type=positive_int, default=None, help="largest tree per target forward")
    hyper.add_argument("--max-draft", "--draft-max", dest="max_draft", type=positive_int, default=None,
                       help="longest draft chain (gamma's cap; llama.cpp's --draft-max)")


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
    group.add_argument("--presence-penalty", type=finite_float, default=None,
                       help="subtract this from the logit of every token seen (0.0 = off)")
    group.add_argument("--frequency-penalty", type=finite_float, default=None,
                       help="subtract this times its count from a seen token's logit (0.0 = off)")
    group.add_argument("--repeat-last-n", type=int, default=None, help="tokens the penalties look back over (64)")
    group.add_argument("-s", "--seed", type=int, default=None, help="random seed (-1 = random)")


def sampling_params(args, *, default_temperature: float):
    from .sampling import SamplingParams

    temperature = default_temperature if args.temperature is None else args.temperature
    return SamplingParams(temperature=temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)


def runtime_options(args):
    from dataclasses import replace

    from .catalog import resolve_model
    from .drafters.ouroboros import OuroborosParams
    from .runtime import RuntimeOptions
    from .tune import load_tuned

    kwargs = dict(n_ctx=args.ctx_size, gpu_layers=args.gpu_layers, draft_gpu_layers=args.draft_gpu_layers,
                  repack=getattr(args, "repack", None) or "auto",
                  tiled_matmul=getattr(args, "tiled_matmul", None) is not False,
                  rpc=getattr(args, "rpc", None) or None, draft_rpc=getattr(args, "draft_rpc", None) or None,
                  flash_attn={"on": True, "off": False}.get(getattr(args, "flash_attn", None)))
    batch = getattr(args, "batch_size", None)
    if batch is not None:
        least = RuntimeOptions.max_tree_nodes + 1
        if batch < least:
            raise OuroborosError(f"--batch-size must be at least {least}: a verification tree of up to "
                                 f"{least - 1} nodes and its root go in one batch (got {batch})")
        kwargs["n_batch"] = batch
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
    # Each method reads its own copy: lookahead (and ouroboros without a draft) runs the window and
    # the guesses on the target, ouroboros with a draft on the draft model.
    kwargs.update(target_window=args.window or 0, target_guesses=args.draft_guesses or 0)
    if any(v is not None and v < 0 for v in overrides.values()):
        raise OuroborosError("speculation hyper-parameters must not be negative")
    if args.threads is not None and args.threads <= 0 or args.ctx_size <= 0:
        raise OuroborosError("threads and ctx-size must be positive")
    return RuntimeOptions(ouroboros=params, **kwargs)


def add_stop_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stop", "-r", "--reverse-prompt", dest="stop", action="append", default=None,
                        metavar="TEXT", help="end the output before TEXT (repeatable; llama.cpp's -r)")


def add_method_args(parser: argparse.ArgumentParser, *, default_help: str) -> None:
    from .config import METHODS

    parser.add_argument("--method", default=None, choices=METHODS, help=f"decoding method (default: {default_help})")
    parser.add_argument("--warm-pool", action=argparse.BooleanOptionalAction, default=None,
                        help="load this model pair's phrase pool from the cache before, save it after (default: on)")
    parser.add_argument("--warm", dest="warm_pool", action="store_const", const=True, help=argparse.SUPPRESS)
