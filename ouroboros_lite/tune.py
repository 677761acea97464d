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
from .costs import CostProfile, CurvePoint, curve_problem, measure_points
from .errors import OuroborosError
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


def describe_tuning(target: Path, draft: Path | None) -> str:
    """For `config`: where the speculation hyper-parameters of this pair come from."""
    path = tuning_path(target, draft)
    params = load_tuned(target, draft) if path.is_file() else None
    if params is None:
        return f"tuned hyper-parameters: none for {target.name}{' + ' + draft.name if draft else ''} (built-in defaults)"
    return (f"tuned hyper-parameters: {path} (window={params.window}, draft_guesses={params.draft_guesses}, "
            f"max_target_nodes={params.max_target_nodes}); `ouroboros-lite tune --reset` removes them")


def describe_cached_tuning(model: str | None, draft: str | None) -> str | None:
    """describe_tuning for the configured pair, where its files are here already (config fetches nothing)."""
    from .catalog import is_verified, load_catalog, resolve_pair

    catalog = load_catalog()

    def here(name: str) -> bool:
        return is_verified(catalog.get(name)) if name in catalog.entries else Path(name).expanduser().is_file()

    if not here(model or catalog.default) or draft not in (None, "none", "auto") and not here(draft):
        return None
    if draft == "auto":
        draft = None  # the pair where it is cached; config fetches nothing
    try:
        target, draft_path, _ = resolve_pair(model, draft, catalog)
    except OuroborosError:
        return None
    return describe_tuning(target, draft_path)


def reset_tuning(target: Path, draft: Path | None) -> int:
    path = tuning_path(target, draft)
    removed = [p for p in (path, path.with_suffix(".profile.json")) if p.is_file()]
    for p in removed:
        p.unlink()
    print(f"removed {', '.join(map(str, removed))}" if removed else f"nothing to reset: no {path}")
    return 0


def checked_curve(name: str, verifier, prefix: list[int], repeats: int) -> dict[int, CurvePoint]:
    """Interleaved repeats per batch size; an error (nothing saved) where the curve is too noisy."""
    print(f"measuring the {name} ({repeats} interleaved repeats per batch size) ...", file=sys.stderr)
    points = measure_points(verifier, prefix, repeats=repeats)
    problem = curve_problem(points)
    if problem:
        raise OuroborosError(f"the {name}'s cost curve is not trustworthy, nothing saved: {problem}. "
                             "The machine is probably busy: check `uptime`, then re-run tune when it is quiet "
                             "(or with --repeats 15)")
    return points


def cmd_tune(args, options) -> int:
    """options: the RuntimeOptions the flags give (arguments.runtime_options), the curves' settings."""
    from .backend import Context
    from .catalog import resolve_model
    from .runtime import Runtime
    from .verify import TreeVerifier

    if args.reset:
        return reset_tuning(resolve_model(args.model), resolve_model(args.draft) if args.draft else None)
    repeats = args.repeats
    with Runtime(args.model, args.draft, method="ar", options=options) as runtime:
        prefix = runtime.tokenize_prompt(MEASURE_PROMPT, chat=True)
        target_points = checked_curve("target", runtime.verifier, prefix, repeats)
        draft_points = {}
        if runtime.draft is not None:
            context = Context(runtime.draft, n_ctx=1024, n_batch=64, n_seq_max=1, threads=options.threads)
            verifier = TreeVerifier(context, max_nodes=40, max_paths=1)
            try:
                draft_points = checked_curve("draft", verifier, prefix, repeats)
            finally:
                verifier.close()
                context.close()
        source = f"tune on this machine ({options.threads} threads): {runtime.target.path.name}" + (
            f" + {runtime.draft.path.name}" if runtime.draft else "")
        target_curve = {k: point.median for k, point in target_points.items()}
        draft_curve = {k: point.median for k, point in draft_points.items()}
        profile = CostProfile(source=source, target=target_curve, draft=draft_curve)
        params = choose_params(profile, options.ngram, target_cap=batch_cap(runtime.target, options.gpu_layers),
                               draft_cap=batch_cap(runtime.draft, options.draft_gpu_layers) if runtime.draft else None)
        path = tuning_path(runtime.target.path, runtime.draft.path if runtime.draft else None)
    profile.save(path.with_suffix(".profile.json"))
    path.write_text(json.dumps({"params": asdict(params), "profile": str(path.with_suffix(".profile.json"))}, indent=2))
    print(f"{'batch':>5s} {'target ms':>10s} {'x one':>6s} {'spread':>6s} {'draft ms':>9s} {'x one':>6s} {'spread':>6s}")
    for k in sorted(target_curve):
        row = f"{k:5d} {target_curve[k] * 1e3:10.2f} {target_curve[k] / target_curve[1]:6.2f} {target_points[k].spread:6.0%}"
        if k in draft_curve:
            row += f" {draft_curve[k] * 1e3:9.2f} {draft_curve[k] / draft_curve[1]:6.2f} {draft_points[k].spread:6.0%}"
        print(row)
    print(f"chosen: {params}")
    print(f"saved: {path} (cost profile for bench --project: {path.with_suffix('.profile.json')})")
    return 0
