"""`ouroboros-lite tune`: measure both models' batch-cost curves here and pick hyper-parameters.

The rule: a batch is worth widening while it stays cheap next to one token. On a GPU 1-16 tokens
cost about the same, so trees, draft guesses and a Jacobi window come almost for free; on a 2-core
CPU an 8-token batch costs several single tokens, so they shrink to what pays. Quantized CUDA
matmuls (MMVQ) fall off a cliff above 8 tokens per batch, which a coarse curve can miss between
its points: with GPU offload of a quantized model the batches are capped at 8 tokens
(CUDA_QUANTIZED_BATCH_CAP), whatever the curve says.

The result is written next to the cost profile in the cache and used by generate/bench/chat for
this model pair unless flags override it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .catalog import cache_dir
from .costs import CostProfile, measure_curve
from .drafters.ouroboros import OuroborosParams

TARGET_BUDGET = 3.0  # a target tree may cost up to this many single-token steps
DRAFT_BUDGET = 1.6  # a draft batch (guesses, window) may cost this many single-token steps
MEASURE_PROMPT = "Write a detailed explanation of how photosynthesis works in plants."


def tuning_path(target: Path, draft: Path | None) -> Path:
    name = target.stem + ("__" + draft.stem if draft else "")
    return cache_dir() / "tuning" / f"{name}.json"


CUDA_QUANTIZED_BATCH_CAP = 8  # tokens per batch (root included) for quantized models offloaded to CUDA


def choose_params(profile: CostProfile, ngram: int, *, target_cap: int | None = None,
                  draft_cap: int | None = None) -> OuroborosParams:
    """target_cap / draft_cap: the most tokens one batch of that model may hold (None: no cap)."""
    phrase = ngram - 1
    t1 = profile.target_step(1)
    max_nodes = max(k - 1 for k in profile.target if profile.target[k] <= TARGET_BUDGET * t1) if profile.target else 8
    if target_cap is not None:
        max_nodes = min(max_nodes, target_cap - 1)
    params = OuroborosParams(max_target_nodes=max(1, min(max_nodes, 47)))
    if profile.draft:
        d1 = profile.draft_step(1)

        def fits(tokens: int) -> bool:
            return profile.draft_step(tokens) <= DRAFT_BUDGET * d1 and (draft_cap is None or tokens <= draft_cap)

        guesses = max(g for g in (0, 1, 2, 4) if g == 0 or fits(1 + g * phrase))
        window = max(w for w in (0, 2, 4, 8) if w == 0 or fits(1 + (w + guesses) * phrase))
        params = replace(params, draft_guesses=guesses, window=window)
    return params


def batch_cap(model, gpu_layers: int) -> int | None:
    """The CUDA cliff applies to quantized weights offloaded to the GPU (Metal and CPU have none)."""
    from .backend import gpu_backend

    if gpu_layers != 0 and model.is_quantized and gpu_backend() == "cuda":
        return CUDA_QUANTIZED_BATCH_CAP
    return None


def load_tuned(target: Path, draft: Path | None) -> OuroborosParams | None:
    path = tuning_path(target, draft)
    if not path.is_file():
        return None
    try:
        return OuroborosParams(**json.loads(path.read_text())["params"])
    except (ValueError, KeyError, TypeError):
        print(f"ignoring unreadable tuning file {path}", file=sys.stderr)
        return None


def cmd_tune(args, options) -> int:
    """options: the RuntimeOptions the flags give (arguments.runtime_options), the curves' settings."""
    from .backend import Context
    from .runtime import Runtime
    from .verify import TreeVerifier

    with Runtime(args.model, args.draft, method="ar", options=options) as runtime:
        prefix = runtime.tokenize_prompt(MEASURE_PROMPT, chat=True)
        print("measuring the target ...", file=sys.stderr)
        target_curve = measure_curve(runtime.verifier, prefix)
        draft_curve = {}
        if runtime.draft is not None:
            print("measuring the draft ...", file=sys.stderr)
            context = Context(runtime.draft, n_ctx=1024, n_batch=64, n_seq_max=1, threads=options.threads)
            verifier = TreeVerifier(context, max_nodes=40, max_paths=1)
            draft_curve = measure_curve(verifier, prefix)
            verifier.close()
            context.close()
        source = f"tune on this machine ({options.threads} threads): {runtime.target.path.name}" + (
            f" + {runtime.draft.path.name}" if runtime.draft else "")
        profile = CostProfile(source=source, target=target_curve, draft=draft_curve)
        params = choose_params(profile, options.ngram, target_cap=batch_cap(runtime.target, options.gpu_layers),
                               draft_cap=batch_cap(runtime.draft, options.draft_gpu_layers) if runtime.draft else None)
        path = tuning_path(runtime.target.path, runtime.draft.path if runtime.draft else None)
    profile.save(path.with_suffix(".profile.json"))
    path.write_text(json.dumps({"params": asdict(params), "profile": str(path.with_suffix(".profile.json"))}, indent=2))
    print(f"{'batch':>5s} {'target ms':>10s} {'x one':>6s} {'draft ms':>9s} {'x one':>6s}")
    for k in sorted(target_curve):
        row = f"{k:5d} {target_curve[k] * 1e3:10.2f} {target_curve[k] / target_curve[1]:6.2f}"
        if k in draft_curve:
            row += f" {draft_curve[k] * 1e3:9.2f} {draft_curve[k] / draft_curve[1]:6.2f}"
        print(row)
    print(f"chosen: {params}")
    print(f"saved: {path} (cost profile for bench --project: {path.with_suffix('.profile.json')})")
    return 0
